"""A write's cost does not grow with the instance's age: 10,000 resumes into a running step."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import hephaestus as hx
from hephaestus._core._codec import encode_instance

from .helpers import clock


async def test_ten_thousand_resumes_keep_the_stored_snapshot_bounded(autojump_clock: Any) -> None:
    release = trio.Event()

    @hx.step(events=("ping",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        await release.wait()
        return hx.Suspend()

    wf = hx.Workflow(
        "busy", start=work, transitions={(work, "ping"): hx.Done}, unique=hx.Unique("b")
    )
    storage = hx.MemoryStorage()
    sizes: list[int] = []
    rejected = 0
    messages: set[str] = set()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        for n in range(1, 10_001):
            try:
                await engine.resume(iid, "ping", {"n": n}, dedupe_key=f"delivery-{n:05d}")
            except hx.EventRejected as exc:
                rejected += 1
                messages.add(str(exc))
            if n % 1000 == 0:
                stored = await storage.get(iid)
                assert stored is not None
                sizes.append(len(encode_instance(stored)))
        assert rejected == 9_000
        assert len(messages) == 1
        assert "inbox already holds 1000 events" in messages.pop()
        assert len(set(sizes)) == 1, sizes  # the snapshot stopped growing at the bound
        release.set()
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.results["work"] == {"n": 1}
    assert final.inbox == ()
