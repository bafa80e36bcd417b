"""A lone async step without a timeout runs in its runner's task; everything else still works."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import hephaestus as hx

from .helpers import Recorder, clock, fan_expected, fan_workflow


def ran_inline(task: trio.lowlevel.Task) -> bool:
    """Whether ``task`` is a runner (its supervisor's task) rather than a step task of its own."""
    return task.name.endswith("._supervisor.supervise")


async def test_a_lone_step_runs_in_the_runner_task_and_fan_out_in_step_tasks(
    autojump_clock: Any,
) -> None:
    tasks: dict[str, trio.lowlevel.Task] = {}

    @hx.step(events=("ok",))
    async def lone(ctx: hx.StepContext) -> hx.StepResult:
        tasks["lone"] = trio.lowlevel.current_task()
        return "ok"

    wf = hx.Workflow("lone", start=lone, transitions={(lone, "ok"): hx.Done}, unique=hx.Unique("l"))
    fan = fan_workflow()
    async with hx.open_engine(workflows=[wf, fan], clock=clock()) as engine:
        final = await engine.wait(await engine.start(wf, "a"))
        fanned = await engine.wait(await engine.start(fan, "a", {"n": 3}))
    assert final.status is hx.Status.COMPLETED
    assert ran_inline(tasks["lone"])
    assert fanned.results == fan_expected(3)


async def test_a_resume_during_an_inline_step_is_acknowledged_then_delivered_on_suspend(
    autojump_clock: Any,
) -> None:
    gate = trio.Event()
    seen: list[str] = []
    tasks: list[trio.lowlevel.Task] = []

    @hx.step(events=("go",))
    async def park(ctx: hx.StepContext) -> hx.StepResult:
        tasks.append(trio.lowlevel.current_task())
        seen.append("step begins")
        await gate.wait()
        seen.append("step suspends")
        return hx.Suspend()

    wf = hx.Workflow("park", start=park, transitions={(park, "go"): hx.Done}, unique=hx.Unique("p"))
    recorder = Recorder()
    async with hx.open_engine(workflows=[wf], clock=clock(), telemetry=recorder) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["step begins"]
        with trio.fail_after(1):  # acknowledged while the step is still running
            await engine.resume(iid, "go", {"by": "ann"})
        seen.append("resume acknowledged")
        assert [e.event for e in (await engine.get(iid)).inbox] == ["go"]
        gate.set()
        final = await engine.wait(iid)
    assert ran_inline(tasks[0])
    assert seen == ["step begins", "resume acknowledged", "step suspends"]
    assert final.status is hx.Status.COMPLETED
    assert final.results["park"] == {"by": "ann"}
    assert [e.name for e in recorder.named("step.resume")] == ["step.resume", "step.resume"]


async def test_cancel_reaches_the_code_of_an_inline_step(autojump_clock: Any) -> None:
    seen: list[str] = []
    tasks: list[trio.lowlevel.Task] = []

    @hx.step(events=("ok",))
    async def slow(ctx: hx.StepContext) -> hx.StepResult:
        tasks.append(trio.lowlevel.current_task())
        try:
            await trio.sleep(1000)
        except trio.Cancelled:
            seen.append("cancelled")
            raise
        return "ok"

    wf = hx.Workflow("slow", start=slow, transitions={(slow, "ok"): hx.Done}, unique=hx.Unique("s"))
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.sleep(10)
        with trio.fail_after(1):
            await engine.cancel(iid, "no longer needed")
        final = await engine.wait(iid)
        t = trio.current_time()
    assert ran_inline(tasks[0])
    assert seen == ["cancelled"]
    assert final.status is hx.Status.CANCELLED
    assert t < 20


async def test_a_lone_step_with_a_timeout_still_times_out(autojump_clock: Any) -> None:
    tasks: list[trio.lowlevel.Task] = []

    @hx.step(events=("ok",), timeout=5)
    async def slow(ctx: hx.StepContext) -> hx.StepResult:
        tasks.append(trio.lowlevel.current_task())
        await trio.sleep(100)
        return "ok"

    wf = hx.Workflow("slow", start=slow, transitions={(slow, "ok"): hx.Done}, unique=hx.Unique("s"))
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        t0 = trio.current_time()
        final = await engine.wait(await engine.start(wf, "a"))
        elapsed = trio.current_time() - t0
    assert not ran_inline(tasks[0])
    assert final.status is hx.Status.FAILED
    assert final.error is not None
    assert final.error.type == "StepTimeout"
    assert elapsed == 5
