"""Schedules and child workflows with several engines on one shared store.

max_active across engines: test_shared_admission.py.
"""

from __future__ import annotations

import trio
import trio.testing

import hephaestus as hx
from hephaestus.testing import VirtualClock

from .shared_cluster import spawn


@hx.step(events=("done",))
async def work(ctx: hx.StepContext) -> hx.StepResult:
    await trio.sleep(1)
    return "done"


report = hx.Workflow(
    "report", start=work, transitions={(work, "done"): hx.Done}, unique=hx.Unique("report")
)
child = hx.Workflow(
    "child", start=work, transitions={(work, "done"): hx.Done}, unique=hx.Unique("child")
)
run_child = hx.SubWorkflow(child, key="run_child")
parent = hx.Workflow(
    "parent",
    start=run_child,
    transitions={
        (run_child, "completed"): hx.Done,
        (run_child, "failed"): hx.Done,
        (run_child, "cancelled"): hx.Done,
    },
    unique=hx.Unique("parent"),
)


async def test_two_engines_start_each_tick_once(autojump_clock: trio.testing.MockClock) -> None:
    store = hx.MemorySharedStorage()
    clock = VirtualClock()
    hourly = hx.Schedule(report, cron="0 * * * *")
    async with trio.open_nursery() as nursery:
        first = await spawn(nursery, store, [report], clock, schedules=[hourly])
        await spawn(nursery, store, [report], clock, schedules=[hourly])
        await trio.sleep(24 * 3600 + 60)
        started = await first.engine.list(workflow="report")
        nursery.cancel_scope.cancel()
    assert len(started) == 24
    assert {instance.status for instance in started} == {hx.Status.COMPLETED}


async def test_children_of_parents_started_on_two_engines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = hx.MemorySharedStorage()
    clock = VirtualClock()
    async with trio.open_nursery() as nursery:
        nodes = [await spawn(nursery, store, [parent, child], clock) for _ in range(2)]
        ids = [await nodes[i % 2].engine.start(parent, f"p{i}") for i in range(6)]
        finals = [await nodes[0].engine.wait(instance_id) for instance_id in ids]
        children = await nodes[1].engine.list(workflow="child")
        nursery.cancel_scope.cancel()
    assert sorted(final.results["run_child"]["id"] for final in finals) == sorted(
        instance.id for instance in children
    )
    assert {final.status for final in finals} == {hx.Status.COMPLETED}
    assert len(children) == 6
    assert {instance.status for instance in children} == {hx.Status.COMPLETED}
