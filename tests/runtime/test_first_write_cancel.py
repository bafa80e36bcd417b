"""start and retry are not shielded: a cancelled caller leaves nothing half-done either way."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx

from .helpers import clock, event_workflow, fan_expected, fan_workflow


def slow_put(
    monkeypatch: pytest.MonkeyPatch, storage: hx.MemoryStorage, *, before: float, after: float
) -> dict[str, bool]:
    """Make ``storage.put`` sleep ``before`` s before writing and ``after`` s after, while on."""
    real_put = storage.put
    slow = {"on": True}

    async def put(instance: hx.Instance, *, expected_revision: int | None = None) -> None:
        if slow["on"]:
            await trio.sleep(before)
        await real_put(instance, expected_revision=expected_revision)
        if slow["on"]:
            await trio.sleep(after)

    monkeypatch.setattr(storage, "put", put)
    return slow


async def test_a_start_cancelled_before_its_write_frees_the_id_at_once(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = fan_workflow()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        slow = slow_put(monkeypatch, storage, before=100, after=0)
        began = trio.current_time()
        with trio.move_on_after(0.5):
            await engine.start(wf, "a", {"n": 1})
        assert trio.current_time() - began == pytest.approx(0.5)  # not held until the write
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(hx.InstanceNotFound):
            await engine.get("fan::a")
        slow["on"] = False
        iid = await engine.start(wf, "a", {"n": 2})  # the id is free
        final = await engine.wait(iid)
    assert final.results == fan_expected(2)


async def test_a_request_queued_behind_a_start_that_never_landed_is_answered(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = event_workflow()
    storage = hx.MemoryStorage()
    answers: list[str] = []
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        slow_put(monkeypatch, storage, before=100, after=0)

        async def resume() -> None:
            try:
                await engine.resume("ev::a", "go")
            except hx.InstanceNotFound as exc:
                answers.append(str(exc))

        async with trio.open_nursery() as nursery:
            with trio.move_on_after(0.5):
                nursery.start_soon(resume)  # queued for the claimed, unwritten instance
                await engine.start(wf, "a")
        assert await storage.get("ev::a") is None
    assert len(answers) == 1
    assert "was not stored" in answers[0]


async def test_a_retry_cancelled_after_its_write_landed_still_runs(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = {"on": True}

    @hx.step(events=("ok",))
    async def flaky(ctx: hx.StepContext) -> hx.StepResult:
        if failing["on"]:
            raise RuntimeError("down")
        return "ok"

    wf = hx.Workflow(
        "flaky", start=flaky, transitions={(flaky, "ok"): hx.Done}, unique=hx.Unique("fl")
    )
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        assert (await engine.wait(iid)).status is hx.Status.FAILED
        failing["on"] = False
        slow_put(monkeypatch, storage, before=0, after=1)
        with trio.move_on_after(0.5):
            await engine.retry(iid)
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert [h.event for h in final.history][-1] == "ok"
