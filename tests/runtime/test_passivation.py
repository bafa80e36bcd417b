"""Passivation: a waiting instance with no step running keeps no runner task."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx

from .helpers import Recorder, all_tasks, clock


def approval() -> hx.Workflow:
    """prepare (a plain step) -> approval (waits for "go", or 60 s) -> Done."""

    @hx.step(events=("ok",))
    async def prepare(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    wait = hx.WaitForEvent("go", key="approval", timeout=60)
    return hx.Workflow(
        "approval",
        start=prepare,
        transitions={(prepare, "ok"): wait, (wait, "go"): hx.Done, (wait, "timeout"): hx.Done},
        unique=hx.Unique("ap"),
    )


def runners() -> int:
    return sum(1 for task in all_tasks() if task.name.endswith("._supervisor.supervise"))


async def test_a_waiting_instance_lets_its_runner_go_and_a_resume_brings_it_back(
    autojump_clock: Any,
) -> None:
    wf = approval()
    recorder = Recorder()
    async with hx.open_engine(workflows=[wf], clock=clock(), telemetry=recorder) as engine:
        ids = [await engine.start(wf, f"i{n}") for n in range(20)]
        await trio.testing.wait_all_tasks_blocked()
        assert runners() == 0
        assert {(await engine.get(i)).status for i in ids} == {hx.Status.WAITING}
        assert len(engine.timers) == 20  # their timeouts stay armed
        await engine.resume(ids[0], "go", {"by": "ann"})
        await engine.cancel(ids[1])
        first = await engine.wait(ids[0])
        second = await engine.wait(ids[1])
        assert runners() == 0
    assert first.status is hx.Status.COMPLETED
    assert first.results["approval"] == {"by": "ann"}
    assert second.status is hx.Status.CANCELLED
    assert recorder.count("runner.init") == 20  # reactivation is no new runner.init


async def test_passivate_after_none_keeps_every_runner_and_a_delay_keeps_it_that_long(
    autojump_clock: Any,
) -> None:
    wf = approval()
    async with hx.open_engine(workflows=[wf], clock=clock(), passivate_after=None) as engine:
        await engine.start(wf, "a")
        await trio.sleep(30)
        assert runners() == 1
    async with hx.open_engine(workflows=[wf], clock=clock(), passivate_after=5.0) as engine:
        await engine.start(wf, "a")
        await trio.sleep(4)
        assert runners() == 1
        await trio.sleep(2)
        assert runners() == 0


async def test_passivate_after_must_be_finite_seconds() -> None:
    with pytest.raises(ValueError, match="passivate_after"):
        async with hx.open_engine(workflows=[approval()], passivate_after=-1.0):
            pass  # pragma: no cover


async def test_timers_of_passivated_instances_fire_on_time_and_survive_a_restart(
    autojump_clock: Any,
) -> None:
    wf = approval()
    vclock = clock()
    store = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=store, clock=vclock) as engine:
        t0 = trio.current_time()
        early = await engine.start(wf, "early")
        late = await engine.start(wf, "late")
        await trio.sleep(20)
        assert runners() == 0
        deadline = (await engine.get(late)).timers[0].deadline
        final = await engine.wait(early)
        await engine.wait(late)  # due at the same instant: its own task applies it
        assert trio.current_time() - t0 == pytest.approx(60, abs=1e-6)
    assert final.history[-1].event == "timeout"
    assert final.history[-1].at == pytest.approx(vclock.start + t0 + 60, abs=1e-6)
    async with hx.open_engine(workflows=[wf], storage=store, clock=vclock) as engine:
        reopened = await engine.get(late)
        assert reopened.status is hx.Status.COMPLETED  # fired at its deadline before close
    assert reopened.history[-1].at >= deadline


async def test_a_timer_armed_before_a_restart_fires_at_its_deadline_on_a_passive_instance(
    autojump_clock: Any,
) -> None:
    wf = approval()
    vclock = clock()
    store = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=store, clock=vclock) as engine:
        t0 = trio.current_time()
        iid = await engine.start(wf, "a")
        await trio.sleep(10)
        deadline = (await engine.get(iid)).timers[0].deadline
    async with hx.open_engine(workflows=[wf], storage=store, clock=vclock) as engine:
        await trio.testing.wait_all_tasks_blocked()
        assert runners() == 0  # recovered, then passivated
        final = await engine.wait(iid)
        assert trio.current_time() - t0 == pytest.approx(60, abs=1e-6)
    assert final.status is hx.Status.COMPLETED
    assert final.history[-1].at >= deadline


async def test_recovery_gives_runners_only_to_instances_with_steps_to_run(
    autojump_clock: Any,
) -> None:
    gate = trio.Event()

    @hx.step(events=("ok",))
    async def busy(ctx: hx.StepContext) -> hx.StepResult:
        await gate.wait()
        return "ok"

    running = hx.Workflow(
        "busy", start=busy, transitions={(busy, "ok"): hx.Done}, unique=hx.Unique("b")
    )
    wf = approval()
    store = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf, running], storage=store, clock=clock()) as engine:
        waiting = [await engine.start(wf, f"w{n}") for n in range(5)]
        busy_id = await engine.start(running, "x")
        await trio.testing.wait_all_tasks_blocked()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf, running],
        storage=store,
        clock=clock(),
        telemetry=recorder,
        passivate_after=3600.0,  # a runner spawned for a waiting one would still be there
    ) as engine:
        await trio.testing.wait_all_tasks_blocked()
        assert runners() == 1  # the one whose step runs again
        assert len(engine.timers) == 5
        inits = {
            e.instance_id: e.metadata.get("resident", True) for e in recorder.named("runner.init")
        }
        assert inits == {**dict.fromkeys(waiting, False), busy_id: True}
        gate.set()
        await engine.resume(waiting[0], "go")
        assert (await engine.wait(waiting[0])).status is hx.Status.COMPLETED
        assert (await engine.wait(busy_id)).status is hx.Status.COMPLETED
