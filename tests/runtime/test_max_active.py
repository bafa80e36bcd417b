"""hx.Workflow(max_active=n): at most n admitted at once, the rest PENDING, in start order."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import pytest
import trio

import hephaestus as hx
from hephaestus.storage._protocol import StorageBase

from .helpers import clock

_ADMITTED = (hx.Status.RUNNING, hx.Status.WAITING)


class Watching(StorageBase):
    """A MemoryStorage that counts the admitted instances after every write, whoever makes it.

    ``peak`` is the most there ever were at once.
    """

    def __init__(self, workflow: str, limit: int) -> None:
        self.inner = hx.MemoryStorage()
        self.workflow = workflow
        self.limit = limit
        self.status: dict[str, hx.Status] = {}
        self.peak = 0
        self.admitted: list[str] = []
        self.completed: list[str] = []

    async def _open(self) -> None:
        await self.inner.aopen()

    async def _close(self) -> None:
        await self.inner.aclose()

    async def get(self, instance_id: str) -> hx.Instance | None:
        return await self.inner.get(instance_id)

    async def put(self, instance: hx.Instance, *, expected_revision: int | None = None) -> None:
        await self.inner.put(instance, expected_revision=expected_revision)
        if instance.workflow != self.workflow:
            return
        if instance.status in _ADMITTED and instance.id not in self.admitted:
            self.admitted.append(instance.id)
        if instance.status is hx.Status.COMPLETED:
            self.completed.append(instance.id)
        self.status[instance.id] = instance.status
        admitted = sum(status in _ADMITTED for status in self.status.values())
        self.peak = max(self.peak, admitted)

    async def delete(self, instance_id: str) -> None:
        await self.inner.delete(instance_id)

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: hx.Status | Collection[hx.Status] | None = None,
    ) -> list[hx.Instance]:
        return await self.inner.query(workflow=workflow, status=status)


def limited(max_active: int | None = 3, *, seconds: float = 10.0, version: int = 1) -> hx.Workflow:
    @hx.step(events=("ok",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(seconds)
        return "ok"

    @hx.step(events=("ok",))
    async def rest(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Suspend() if ctx.initial.get("park") else "ok"

    return hx.Workflow(
        "limited",
        start=work,
        transitions={(work, "ok"): rest, (rest, "ok"): hx.Done},
        unique=hx.Unique("jobid"),
        version=version,
        max_active=max_active,
    )


async def test_twenty_starts_three_at_a_time_across_a_restart(autojump_clock: Any) -> None:
    wf = limited(3)
    storage = Watching("limited", 3)
    ids: list[str] = []
    async with storage:
        async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
            for n in range(20):
                ids.append(await engine.start(wf, f"j{n:02d}"))
            assert [i.id for i in await engine.list(status=hx.Status.PENDING)] == ids[3:]
            await engine.wait(ids[7])
            await trio.sleep(1)  # three batches of three done, the fourth admitted and running
            pending = await engine.list(status=hx.Status.PENDING)
            assert [i.id for i in pending] == ids[12:]
        assert sorted(storage.completed) == ids[:9]
        async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
            with trio.fail_after(10_000):
                finals = [await engine.wait(i) for i in ids]
    assert all(final.status is hx.Status.COMPLETED for final in finals)
    assert storage.peak == 3
    assert storage.admitted == ids  # first come first served, the restart included
    # Equal steps, so they end in batches of three in the order they were admitted (within
    # a batch, all at the same instant, in any order).
    batches = [sorted(storage.completed[n : n + 3]) for n in range(0, 20, 3)]
    assert batches == [ids[n : n + 3] for n in range(0, 20, 3)]


async def test_a_start_beyond_the_limit_is_stored_pending_and_returns_at_once(
    autojump_clock: Any,
) -> None:
    wf = limited(1, seconds=100)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        first = await engine.start(wf, "a")
        before = trio.current_time()
        second = await engine.start(wf, "b", {"x": 1})
        assert trio.current_time() == before
        queued = await engine.get(second)
        assert queued.status is hx.Status.PENDING
        assert queued.initial == {"x": 1}
        assert (await engine.get(first)).status is hx.Status.RUNNING
        with pytest.raises(hx.AlreadyRunning):
            await engine.start(wf, "b")
        final = await engine.wait(second)
    assert final.status is hx.Status.COMPLETED
    assert final.history[0].at == queued.created_at + 200  # ran only after the first


async def test_waiting_instances_hold_their_slot(autojump_clock: Any) -> None:
    wf = limited(2, seconds=0)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        parked = [await engine.start(wf, f"p{n}", {"park": True}) for n in range(2)]
        late = await engine.start(wf, "late")
        await trio.sleep(50)
        assert [(await engine.get(i)).status for i in parked] == [hx.Status.WAITING] * 2
        assert (await engine.get(late)).status is hx.Status.PENDING
        await engine.resume(parked[0], "ok")
        assert (await engine.wait(late)).status is hx.Status.COMPLETED


async def test_a_cancelled_pending_instance_leaves_the_queue(autojump_clock: Any) -> None:
    wf = limited(1, seconds=10)
    storage = Watching("limited", 1)
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        ids = [await engine.start(wf, name) for name in ("a", "b", "c")]
        await engine.cancel(ids[1], "changed my mind")
        assert (await engine.wait(ids[1])).status is hx.Status.CANCELLED
        assert (await engine.wait(ids[2])).status is hx.Status.COMPLETED
    assert storage.admitted == [ids[0], ids[2]]


async def test_the_limit_counts_every_version_together(autojump_clock: Any) -> None:
    old, new = limited(1, version=1, seconds=10), limited(1, version=2, seconds=10)
    storage = Watching("limited", 1)
    async with hx.open_engine(workflows=[old, new], storage=storage, clock=clock()) as engine:
        first = await engine.start(old, "a")
        second = await engine.start(new, "b")
        assert (await engine.get(second)).status is hx.Status.PENDING
        await engine.wait(second)
    assert storage.admitted == [first, second]


async def test_the_limit_of_the_highest_version_applies(autojump_clock: Any) -> None:
    old, new = limited(1, version=1, seconds=10), limited(None, version=2, seconds=10)
    async with hx.open_engine(workflows=[old, new], clock=clock()) as engine:
        ids = [await engine.start(old, name) for name in ("a", "b")]
        assert [(await engine.get(i)).status for i in ids] == [hx.Status.RUNNING] * 2


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "3"])
def test_max_active_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(hx.WorkflowDefinitionError, match="max_active must be an int >= 1"):
        limited(bad)


class FailingAdmissions(Watching):
    """Fails the first ``n`` writes that admit a PENDING instance."""

    def __init__(self, workflow: str, limit: int, n: int) -> None:
        super().__init__(workflow, limit)
        self.failures_left = n

    async def put(self, instance: hx.Instance, *, expected_revision: int | None = None) -> None:
        was = self.status.get(instance.id)
        if was is hx.Status.PENDING and instance.status in _ADMITTED and self.failures_left:
            self.failures_left -= 1
            raise OSError(28, "No space left on device")
        await super().put(instance, expected_revision=expected_revision)


async def test_a_failing_admission_write_is_retried_with_backoff(autojump_clock: Any) -> None:
    wf = limited(1, seconds=10)
    storage = FailingAdmissions("limited", 1, n=3)
    errors: list[hx.TelemetryEvent] = []

    def record(event: hx.TelemetryEvent) -> None:
        if event.name == "storage.error":
            errors.append(event)

    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=record
    ) as engine:
        first = await engine.start(wf, "a")
        second = await engine.start(wf, "b")
        assert (await engine.wait(second)).status is hx.Status.COMPLETED
    assert storage.admitted == [first, second]
    assert [e.metadata["failures"] for e in errors] == [1, 2, 3]
    assert {e.instance_id for e in errors} == {second}


async def test_a_pending_instance_takes_events_and_timers_in_its_place(
    autojump_clock: Any,
) -> None:
    @hx.step(events=("ok",))
    async def hold(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(10)
        return "ok"

    gate = hx.WaitForEvent("go", key="gate", timeout=1000)
    wf = hx.Workflow(
        "gated",
        start=hold,
        transitions={(hold, "ok"): gate, (gate, "go"): hx.Done, (gate, "timeout"): hx.Done},
        unique=hx.Unique("gated"),
        max_active=1,
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        first = await engine.start(wf, "a")
        second = await engine.start(wf, "b")
        await engine.resume(second, "go")  # early: kept in its inbox
        # Due while it still waits for its slot: no effect (no step to resume), no runner.
        await engine.schedule_resume(second, "gate", 5)
        await trio.sleep(20)
        waiting = await engine.get(second)
        assert waiting.status is hx.Status.PENDING
        assert waiting.timers == ()
        await engine.resume(first, "go")
        with trio.fail_after(1000):
            final = await engine.wait(second)
    assert [(h.step, h.event) for h in final.history] == [("hold", "ok"), ("gate", "go")]


async def test_a_retried_instance_holds_a_slot(autojump_clock: Any) -> None:
    @hx.step(events=("ok",))
    async def flaky(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(10)
        if ctx.attempt == 1 and ctx.instance_id.endswith("a"):
            raise RuntimeError("first time")
        return "ok"

    wf = hx.Workflow(
        "flaky",
        start=flaky,
        transitions={(flaky, "ok"): hx.Done},
        unique=hx.Unique("flaky"),
        max_active=1,
    )
    storage = Watching("flaky", 1)
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        first = await engine.start(wf, "a")
        assert (await engine.wait(first)).status is hx.Status.FAILED
        await engine.retry(first)
        second = await engine.start(wf, "b")  # queued behind the retried one
        assert (await engine.get(second)).status is hx.Status.PENDING
        await engine.wait(second)
    assert storage.peak == 1


async def test_a_pending_instances_timer_survives_a_restart(autojump_clock: Any) -> None:
    @hx.step(events=("ok",))
    async def hold(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(10)
        return "ok"

    @hx.step(events=("go", "timeout"))
    async def gate(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Suspend()  # a "go", or the timer schedule_resume set

    wf = hx.Workflow(
        "gated",
        start=hold,
        transitions={(hold, "ok"): gate, (gate, "go"): hx.Done, (gate, "timeout"): hx.Done},
        unique=hx.Unique("gated"),
        max_active=1,
    )
    storage = hx.MemoryStorage()
    async with storage:
        async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
            first = await engine.start(wf, "a")
            second = await engine.start(wf, "b")
            await engine.schedule_resume(second, "gate", 50)
        async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
            await trio.sleep(15)
            await engine.resume(first, "go")
            with trio.fail_after(1000):
                final = await engine.wait(second)
    assert [(h.step, h.event) for h in final.history] == [("hold", "ok"), ("gate", "timeout")]
