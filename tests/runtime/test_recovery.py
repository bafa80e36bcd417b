"""Reopening an engine on the same storage: running steps run again, timers are re-armed."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx

from .helpers import Recorder, clock, event_workflow, fan_expected, fan_workflow


def _tracked_fan(runs: list[tuple[str, int]]) -> hx.Workflow:
    """begin -> [left, right] -> join; every step takes 10 s and logs (key, attempt)."""

    def slow(key: str, compute: Any) -> hx.Step:
        async def body(ctx: hx.StepContext) -> hx.StepResult:
            runs.append((key, ctx.attempt))
            await trio.sleep(10)
            return hx.Emit("ok", compute(ctx))

        return hx.step(body, events=("ok",), key=key)

    begin = slow("begin", lambda ctx: {"n": ctx.initial["n"]})
    left = slow("left", lambda ctx: {"v": ctx.results["begin"]["n"] * 2})
    right = slow("right", lambda ctx: {"v": ctx.results["begin"]["n"] + 1})
    join = slow("join", lambda ctx: {"sum": ctx.results["left"]["v"] + ctx.results["right"]["v"]})
    return hx.Workflow(
        "tracked",
        start=begin,
        transitions={
            (begin, "ok"): [left, right],
            (left, "ok"): join,
            (right, "ok"): join,
            (join, "ok"): hx.Done,
        },
        unique=hx.Unique("tracked"),
    )


async def test_running_steps_run_again_with_next_attempt(autojump_clock: Any) -> None:
    runs: list[tuple[str, int]] = []
    wf = _tracked_fan(runs)
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a", {"n": 3})
        await trio.sleep(15)  # begin done at 10; left and right are mid-run
    # Left mid-run: storage holds what was acknowledged, and is closed again.
    assert not storage.is_open
    async with storage:
        stored = await storage.get(iid)
    assert stored is not None
    assert stored.status is hx.Status.RUNNING
    assert sorted(stored.active) == ["left", "right"]
    assert stored.completed == ("begin",)
    assert runs == [("begin", 1), ("left", 1), ("right", 1)] or runs == [
        ("begin", 1),
        ("right", 1),
        ("left", 1),
    ]

    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder
    ) as engine:
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.results == {
        "begin": {"n": 3},
        "left": {"v": 6},
        "right": {"v": 4},
        "join": {"sum": 10},
    }
    assert sorted(runs[3:]) == [("join", 1), ("left", 2), ("right", 2)]
    attempts = {h.step: h.attempt for h in final.history}
    assert attempts == {"begin": 1, "left": 2, "right": 2, "join": 1}
    assert recorder.count("runner.init", iid) == 1


async def test_recovery_of_many_instances_in_every_stage(autojump_clock: Any) -> None:
    wf = fan_workflow(delay=1.0)
    ev = event_workflow()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf, ev], storage=storage, clock=clock()) as engine:
        ids = []
        for i in range(40):
            ids.append(await engine.start(wf, f"i{i}", {"n": i}))
            await trio.sleep(0.25)  # staggered: each is at another stage at exit
        parked = await engine.start(ev, "parked")
        done_early = ids[0]
        assert (await engine.wait(done_early)).status is hx.Status.COMPLETED
    async with storage:
        stages = {i.status for i in await storage.query(workflow="fan")}
    assert hx.Status.RUNNING in stages
    assert hx.Status.COMPLETED in stages
    async with hx.open_engine(workflows=[wf, ev], storage=storage, clock=clock()) as engine:
        for i, iid in enumerate(ids):
            final = await engine.wait(iid)
            assert final.status is hx.Status.COMPLETED
            assert final.results == fan_expected(i)
        assert (await engine.get(parked)).status is hx.Status.WAITING
        await engine.resume(parked, "go", {"by": "later"})
        assert (await engine.wait(parked)).results["finish"] == {"approved": "later"}


async def test_instances_of_unregistered_workflows_are_left_untouched(
    autojump_clock: Any,
) -> None:
    kept = fan_workflow(delay=1.0)
    dropped = event_workflow()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[kept, dropped], storage=storage, clock=clock()) as engine:
        orphan = await engine.start(dropped, "orphan")
        running = await engine.start(kept, "k", {"n": 2})
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.5)
    async with storage:
        before = await storage.get(orphan)
    assert before is not None
    assert before.status is hx.Status.WAITING

    recorder = Recorder()
    async with hx.open_engine(
        workflows=[kept], storage=storage, clock=clock(), telemetry=recorder
    ) as engine:
        assert (await engine.wait(running)).results == fan_expected(2)
        await trio.sleep(7200)  # long past the orphan's 1 h timeout: still not run
        assert await storage.get(orphan) == before
        assert await engine.get(orphan) == before
        assert [i.id for i in await engine.list(status=hx.Status.WAITING)] == [orphan]
        skipped = recorder.named("runner.skip", orphan)
        assert len(skipped) == 1
        assert skipped[0].metadata["reason"] == "workflow not registered"
        assert recorder.count("runner.init", orphan) == 0
    # A later engine that has the workflow again picks it up where it was.
    async with hx.open_engine(workflows=[dropped], storage=storage, clock=clock()) as engine:
        final = await engine.wait(orphan)
    assert final.status is hx.Status.COMPLETED  # its 1 h timeout was overdue: fired at once
    assert final.history[-1].event == "timeout"


async def test_instance_of_another_version_is_not_run(autojump_clock: Any) -> None:
    v1 = event_workflow()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[v1], storage=storage, clock=clock()) as engine:
        iid = await engine.start(v1, "a")
        await trio.testing.wait_all_tasks_blocked()
    v2 = hx.Workflow(
        "ev",
        start=v1.start,
        transitions=[
            ((v1.steps["prepare"], "ok"), v1.steps["approve"]),
            ((v1.steps["approve"], "go"), v1.steps["finish"]),
            ((v1.steps["approve"], "timeout"), hx.Done),
            ((v1.steps["finish"], "ok"), hx.Done),
        ],
        unique=hx.Unique("ev"),
        version=2,
    )
    async with storage:
        before = await storage.get(iid)
    async with hx.open_engine(workflows=[v2], storage=storage, clock=clock()) as engine:
        await trio.sleep(10)
        assert await engine.get(iid) == before
        with pytest.raises(hx.EventRejected, match="not registered"):
            await engine.wait(iid)  # never hangs on an instance this engine does not run
        with pytest.raises(hx.AlreadyRunning):
            await engine.start(v2, "a")  # the v1 instance still holds the id


async def test_timers_are_rearmed_and_overdue_ones_fire_at_once(autojump_clock: Any) -> None:
    pause = hx.Wait(100, key="pause")

    @hx.step(events=("ok",))
    async def after(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("ok", {"at": trio.current_time()})

    wf = hx.Workflow(
        "tmr",
        start=pause,
        transitions={(pause, "timeout"): after, (after, "ok"): hx.Done},
        unique=hx.Unique("tmr"),
    )
    storage = hx.MemoryStorage()
    t0 = trio.current_time()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        soon = await engine.start(wf, "soon")
        await trio.sleep(10)
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        final = await engine.wait(soon)
        assert final.results["after"]["at"] - t0 == 100  # re-armed at its persisted deadline

    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        late = await engine.start(wf, "late")
        await trio.sleep(10)
    await trio.sleep(500)  # the deadline passes while no engine runs
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        reopened = trio.current_time()
        final = await engine.wait(late)
        assert final.results["after"]["at"] == reopened  # overdue: fired at once
