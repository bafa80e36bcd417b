"""Cancelling a resident instance (``passivate_after=None``) whose runner waits for mail.

A runner waiting for mail holds no cancel scope (a parked resident instance
costs less so): finishing its instance from a caller's request wakes it, and
it lets go. A step running in a task of its own is cancelled with the
runner's nursery, and an inline step with the scope its steps run in.
"""

from __future__ import annotations

from typing import Any

import trio

import hephaestus as hx

from .helpers import all_tasks, clock

PARK = hx.WaitForEvent("go", key="park")
PARKED = hx.Workflow(
    "rparked", start=PARK, transitions={(PARK, "go"): hx.Done}, unique=hx.Unique("rp")
)


def _runner_tasks() -> list[trio.lowlevel.Task]:
    return [t for t in all_tasks() if t.name.endswith("supervise")]


async def test_cancel_wakes_a_resident_runner_waiting_for_an_event(autojump_clock: Any) -> None:
    async with hx.open_engine(workflows=[PARKED], clock=clock(), passivate_after=None) as engine:
        instance_id = await engine.start(PARKED, "a")
        await trio.sleep(1)
        assert (await engine.get(instance_id)).status is hx.Status.WAITING
        assert len(_runner_tasks()) == 1  # resident: its runner waits for mail
        await engine.cancel(instance_id, "no longer needed")
        with trio.fail_after(60):
            final = await engine.wait(instance_id)
        assert final.status is hx.Status.CANCELLED
        await trio.sleep(1)
        assert _runner_tasks() == []
        assert instance_id not in engine._registry


async def test_cancel_wakes_a_resident_runner_waiting_for_a_timer(autojump_clock: Any) -> None:
    @hx.step(events=("timeout", "go"))
    async def later(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Suspend(timeout=3600)

    wf = hx.Workflow(
        "rtimer",
        start=later,
        transitions={(later, "timeout"): hx.Done, (later, "go"): hx.Done},
        unique=hx.Unique("rt"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock(), passivate_after=None) as engine:
        instance_id = await engine.start(wf, "a")
        await trio.sleep(1)
        await engine.cancel(instance_id)
        with trio.fail_after(60):
            final = await engine.wait(instance_id)
        assert final.status is hx.Status.CANCELLED
        assert engine.timers.deadlines(instance_id) == {}
        await trio.sleep(7200)  # the timer would have fired by now: nothing happens
        assert (await engine.get(instance_id)).status is hx.Status.CANCELLED


async def test_cancel_reaches_inline_and_task_steps_of_a_resident_instance(
    autojump_clock: Any,
) -> None:
    reached: list[str] = []

    @hx.step(events=("ok",))
    async def inline(ctx: hx.StepContext) -> hx.StepResult:
        try:
            await trio.sleep(3600)
        except trio.Cancelled:
            reached.append("inline")
            raise
        return "ok"

    @hx.step(events=("ok",), timeout=7200)  # a timeout: it runs in a task of its own
    async def tasked(ctx: hx.StepContext) -> hx.StepResult:
        try:
            await trio.sleep(3600)
        except trio.Cancelled:
            reached.append("tasked")
            raise
        return "ok"

    one = hx.Workflow(
        "rinline", start=inline, transitions={(inline, "ok"): hx.Done}, unique=hx.Unique("ri")
    )
    two = hx.Workflow(
        "rtasked", start=tasked, transitions={(tasked, "ok"): hx.Done}, unique=hx.Unique("rk")
    )
    async with hx.open_engine(workflows=[one, two], clock=clock(), passivate_after=None) as engine:
        first = await engine.start(one, "a")
        second = await engine.start(two, "a")
        await trio.sleep(1)
        await engine.cancel(first)
        await engine.cancel(second)
        with trio.fail_after(60):
            assert (await engine.wait(first)).status is hx.Status.CANCELLED
            assert (await engine.wait(second)).status is hx.Status.CANCELLED
        await trio.sleep(1)
        assert sorted(reached) == ["inline", "tasked"]
        assert _runner_tasks() == []
