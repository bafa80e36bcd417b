"""max_active as a hypothesis property: any limit, durations, cancels and restart point.

Hypothesis picks a limit ``n``, how many instances are started at once, how
long each one's step takes, which pending ones are cancelled while they
wait, and after how many virtual seconds the engine is closed and reopened on
the same storage. A storage wrapper counts the admitted (RUNNING or WAITING)
instances after every write. Whatever it picks:

- never more than ``n`` are admitted at once;
- they are admitted in start order (the cancelled ones skipped);
- every instance not cancelled completes.
"""

from __future__ import annotations

from collections.abc import Collection

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import hephaestus as hx
from hephaestus.storage._protocol import StorageBase

_ADMITTED = (hx.Status.RUNNING, hx.Status.WAITING)


class Counting(StorageBase):
    def __init__(self) -> None:
        self.inner = hx.MemoryStorage()
        self.status: dict[str, hx.Status] = {}
        self.peak = 0
        self.admitted: list[str] = []

    async def _open(self) -> None:
        await self.inner.aopen()

    async def _close(self) -> None:
        await self.inner.aclose()

    async def get(self, instance_id: str) -> hx.Instance | None:
        return await self.inner.get(instance_id)

    async def put(self, instance: hx.Instance, *, expected_revision: int | None = None) -> None:
        await self.inner.put(instance, expected_revision=expected_revision)
        if instance.status in _ADMITTED and instance.id not in self.admitted:
            self.admitted.append(instance.id)
        self.status[instance.id] = instance.status
        self.peak = max(self.peak, sum(s in _ADMITTED for s in self.status.values()))

    async def delete(self, instance_id: str) -> None:
        await self.inner.delete(instance_id)

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: hx.Status | Collection[hx.Status] | None = None,
    ) -> list[hx.Instance]:
        return await self.inner.query(workflow=workflow, status=status)


@hx.step(events=("ok",))
async def work(ctx: hx.StepContext) -> hx.StepResult:
    await trio.sleep(ctx.initial["seconds"])
    return "ok"


def limited(n: int) -> hx.Workflow:
    return hx.Workflow(
        "job",
        start=work,
        transitions={(work, "ok"): hx.Done},
        unique=hx.Unique("job"),
        max_active=n,
    )


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 4),
    durations=st.lists(st.integers(0, 30), min_size=1, max_size=12),
    cancels=st.sets(st.integers(0, 11), max_size=3),
    restart_after=st.integers(0, 80),
)
def test_never_more_than_n_admitted_in_start_order(
    n: int, durations: list[int], cancels: set[int], restart_after: int
) -> None:
    workflow = limited(n)
    storage = Counting()
    cancelled: list[str] = []

    async def main() -> list[hx.Instance]:
        clock = hx.testing.VirtualClock()
        async with storage:
            async with hx.open_engine(workflows=[workflow], storage=storage, clock=clock) as engine:
                ids = [
                    await engine.start(workflow, f"j{i}", {"seconds": seconds})
                    for i, seconds in enumerate(durations)
                ]
                for i in sorted(cancels):
                    if i < len(ids) and (await engine.get(ids[i])).status is hx.Status.PENDING:
                        await engine.cancel(ids[i])
                        cancelled.append(ids[i])
                await trio.sleep(restart_after)
            async with hx.open_engine(workflows=[workflow], storage=storage, clock=clock) as engine:
                with trio.fail_after(10_000):
                    return [await engine.wait(i) for i in ids]

    finals = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert storage.peak <= n
    expected = [final.id for final in finals if final.id not in cancelled]
    assert storage.admitted == expected
    for final in finals:
        wanted = hx.Status.CANCELLED if final.id in cancelled else hx.Status.COMPLETED
        assert final.status is wanted
