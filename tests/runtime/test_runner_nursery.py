"""A runner opens a nursery only when a step must run in a task of its own."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import hephaestus as hx

from .helpers import clock


async def test_steps_that_all_run_inline_need_no_nursery(autojump_clock: Any) -> None:
    nurseries: list[int] = []

    @hx.step(events=("ok",))
    async def first(ctx: hx.StepContext) -> hx.StepResult:
        nurseries.append(len(trio.lowlevel.current_task().child_nurseries))
        await trio.sleep(1)
        return "ok"

    @hx.step(events=("ok",))
    async def second(ctx: hx.StepContext) -> hx.StepResult:
        nurseries.append(len(trio.lowlevel.current_task().child_nurseries))
        return "ok"

    wf = hx.Workflow(
        "inline",
        start=first,
        transitions={(first, "ok"): second, (second, "ok"): hx.Done},
        unique=hx.Unique("in"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        final = await engine.wait(await engine.start(wf, "a"))
    assert final.status is hx.Status.COMPLETED
    assert nurseries == [0, 0]  # each ran in the runner's own task, which has no nursery


async def test_a_resume_that_starts_parallel_steps_on_a_resident_runner_runs_them(
    autojump_clock: Any,
) -> None:
    ran: list[str] = []

    def branch(key: str) -> hx.Step:
        async def body(ctx: hx.StepContext) -> hx.StepResult:
            await trio.sleep(1)
            ran.append(key)
            return "ok"

        return hx.step(body, events=("ok",), key=key)

    wait = hx.WaitForEvent("go", key="wait")
    left, right, join = branch("left"), branch("right"), branch("join")
    wf = hx.Workflow(
        "fork",
        start=wait,
        transitions={
            (wait, "go"): [left, right],
            (left, "ok"): join,
            (right, "ok"): join,
            (join, "ok"): hx.Done,
        },
        unique=hx.Unique("fk"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock(), passivate_after=None) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        began = trio.current_time()
        await engine.resume(iid, "go")  # applied by this task: the runner is woken for the steps
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert sorted(ran[:2]) == ["left", "right"]
    assert ran[2] == "join"
    assert trio.current_time() - began == 2  # left and right ran side by side
