"""A passivated instance is an index record: requests and timers load it under the token."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import hephaestus as hx
from hephaestus._runtime import _engine, _runner
from hephaestus._runtime._registry import State

from .helpers import Recorder, clock


class Gets:
    """Counts the reads of a MemoryStorage (each one decodes a snapshot)."""

    def __init__(self, storage: hx.MemoryStorage, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real_get = storage.get

        async def get(instance_id: str) -> hx.Instance | None:
            self.count += 1
            return await real_get(instance_id)

        monkeypatch.setattr(storage, "get", get)


def approval() -> hx.Workflow:
    """approval (waits for "go", or 60 s) -> Done."""
    wait = hx.WaitForEvent("go", key="approval", timeout=60)
    return hx.Workflow(
        "approval",
        start=wait,
        transitions={(wait, "go"): hx.Done, (wait, "timeout"): hx.Done},
        unique=hx.Unique("ap"),
    )


def timeout_then_step(ran: list[str]) -> hx.Workflow:
    """approval (waits for "go", or 60 s); on timeout a real step runs -> Done."""

    @hx.step(events=("ok",))
    async def escalate(ctx: hx.StepContext) -> hx.StepResult:
        ran.append(ctx.instance_id)
        return "ok"

    wait = hx.WaitForEvent("go", key="approval", timeout=60)
    return hx.Workflow(
        "escalating",
        start=wait,
        transitions={
            (wait, "go"): hx.Done,
            (wait, "timeout"): escalate,
            (escalate, "ok"): hx.Done,
        },
        unique=hx.Unique("esc"),
    )


def count_supervisors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the id of every instance the engine gives a supervisor (a runner task)."""
    spawned: list[str] = []
    real = _engine.supervise  # type: ignore[attr-defined]

    async def supervise(engine: Any, entry: Any, *args: Any) -> None:
        spawned.append(entry.id)
        await real(engine, entry, *args)

    monkeypatch.setattr(_engine, "supervise", supervise)
    return spawned


async def test_a_passivated_entry_keeps_no_snapshot_mailbox_or_token(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = approval()
    storage = hx.MemoryStorage()
    reads = Gets(storage, monkeypatch)
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        entry = engine._registry[iid]
        assert entry.state is State.PASSIVE
        assert (entry.snapshot, entry.mailbox, entry._token) == (None, None, None)
        assert (entry.status, entry.revision) == (hx.Status.WAITING, 2)
        # A request loads the snapshot from storage under the token, and drops it again.
        gets = reads.count
        timer_id = await engine.schedule_resume(iid, "approval", 30)
        assert reads.count == gets + 1
        assert (entry.snapshot, entry.mailbox, entry._token) == (None, None, None)
        assert entry.revision == 3
        assert (await engine.get(iid)).revision == 3
        assert await engine.cancel_timer(iid, timer_id) is True
        await engine.resume(iid, "go")
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.revision == 5


async def test_timers_of_passivated_instances_are_applied_without_a_runner(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned = count_supervisors(monkeypatch)
    wf = approval()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=hx.MemoryStorage(), clock=clock(), telemetry=recorder
    ) as engine:
        ids = [await engine.start(wf, f"i{n}") for n in range(10)]
        await trio.testing.wait_all_tasks_blocked()
        started = len(spawned)
        finals = [await engine.wait(i) for i in ids]
        assert engine._registry == {}
    assert len(spawned) == started  # no runner came back for a timer
    assert {f.status for f in finals} == {hx.Status.COMPLETED}
    assert {f.history[-1].event for f in finals} == {"timeout"}
    assert recorder.count("step.stop") == 10  # the telemetry of a timeout, as from a runner


async def test_a_timer_that_starts_a_step_makes_the_instance_resident(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned = count_supervisors(monkeypatch)
    ran: list[str] = []
    wf = timeout_then_step(ran)
    async with hx.open_engine(workflows=[wf], storage=hx.MemoryStorage(), clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        assert engine._registry[iid].state is State.PASSIVE
        started = len(spawned)
        final = await engine.wait(iid)
    assert spawned[started:] == [iid]
    assert ran == [iid]
    assert final.status is hx.Status.COMPLETED
    assert list(final.results) == ["approval", "escalate"]


async def test_a_timer_whose_write_fails_goes_to_a_runner_that_retries_it(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = approval()
    storage = hx.MemoryStorage()
    real_put = storage.put
    failures = [OSError(28, "No space left on device")] * 3

    async def put(instance: hx.Instance, *, expected_revision: int | None = None) -> None:
        if instance.status is hx.Status.COMPLETED and failures:
            raise failures.pop()
        await real_put(instance, expected_revision=expected_revision)

    monkeypatch.setattr(storage, "put", put)
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder
    ) as engine:
        iid = await engine.start(wf, "a")
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.history[-1].event == "timeout"
    assert failures == []
    assert recorder.count("runner.crash") == 0
    assert recorder.count("storage.error") >= 2  # the runner's own failed retries


async def test_a_snapshot_replaced_under_a_passivated_instance_is_reported_and_wins(
    autojump_clock: Any,
) -> None:
    wf = approval()
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder
    ) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        stored = await storage.get(iid)
        assert stored is not None
        # Someone else writes a newer revision (the same state) behind the engine's back.
        bumped = msgspec.structs.replace(stored, revision=stored.revision + 5)
        await storage.put(bumped, expected_revision=stored.revision)
        await engine.resume(iid, "go")  # applied to what is stored, not refused
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.revision == stored.revision + 6
    replaced = [e for e in recorder.named("storage.error") if e.metadata.get("reason")]
    assert [e.metadata["reason"] for e in replaced] == ["replaced"]


async def test_a_bug_applying_a_request_to_a_passivated_instance_is_a_runner_crash(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = approval()
    real_apply = _runner.apply  # type: ignore[attr-defined]
    broken: list[str] = []

    def apply(workflow: hx.Workflow, instance: hx.Instance, event: Any, now: float) -> Any:
        if type(event).__name__ == "Deliver" and not broken:
            broken.append(instance.id)
            raise RuntimeError("bug in a transition")
        return real_apply(workflow, instance, event, now)

    monkeypatch.setattr(_runner, "apply", apply)
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=hx.MemoryStorage(), clock=clock(), telemetry=recorder
    ) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        assert engine._registry[iid].state is State.PASSIVE
        with pytest.raises(RuntimeError, match="bug in a transition"):
            await engine.resume(iid, "go")
        await trio.testing.wait_all_tasks_blocked()
        crashes = recorder.named("runner.crash", iid)
        assert [c.metadata["message"] for c in crashes] == ["bug in a transition"]
        assert recorder.count("runner.restart", iid) == 1
        # Restarted from what is stored, and passivated again: the request can be sent again.
        assert engine._registry[iid].state is State.PASSIVE
        await engine.resume(iid, "go")
        final = await engine.wait(iid)
    assert broken == [iid]
    assert final.status is hx.Status.COMPLETED


@pytest.mark.parametrize("how", ["resume", "timer"])
async def test_wait_returns_an_instance_the_engine_finished_without_reading_storage(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    wf = approval()
    storage = hx.MemoryStorage()
    reads = Gets(storage, monkeypatch)
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        finals: list[hx.Instance] = []

        async def waiter() -> None:
            finals.append(await engine.wait(iid))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            gets = reads.count
            if how == "resume":
                await engine.resume(iid, "go")
        assert reads.count == gets + 1  # the request's (or timer's) own load, no more
    assert [f.status for f in finals] == [hx.Status.COMPLETED] * 2
    finals[0].results.clear()  # each waiter has its own copy
    assert finals[1].results == {"approval": {}}


@pytest.mark.parametrize("enabled", [True, False])
async def test_recovery_pauses_the_cyclic_gc_and_restores_it(
    monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    import gc

    wf = approval()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
    real_query = storage.query
    seen: list[bool] = []

    async def query(**kwargs: Any) -> list[hx.Instance]:
        seen.append(gc.isenabled())
        return await real_query(**kwargs)

    monkeypatch.setattr(storage, "query", query)
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
            assert gc.isenabled() is enabled
            assert (await engine.get("ap::a")).status is hx.Status.WAITING
    finally:
        (gc.enable if was else gc.disable)()
    assert seen == [False]
