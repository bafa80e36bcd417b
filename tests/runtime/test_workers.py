"""Runner tasks outlive their instance: an idle one runs the next instance (``_workers.py``).

What a step sees must not change with it: its context variables are the
caller's, as in a task of its own; cancelling an instance still reaches its
inline step code, in a task that ran another instance before; and the tasks
kept idle are bounded.
"""

from __future__ import annotations

import contextvars
from typing import Any

import trio
import trio.testing

import hephaestus as hx
from hephaestus._runtime import _workers
from hephaestus._runtime._registry import Entry

from .helpers import all_tasks, clock

REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


def _one_step(seen: list[tuple[str, trio.lowlevel.Task, str]], key: str = "once") -> hx.Workflow:
    @hx.step(events=("ok",), key=key)
    async def once(ctx: hx.StepContext) -> hx.StepResult:
        seen.append((ctx.instance_id, trio.lowlevel.current_task(), REQUEST.get()))
        await trio.lowlevel.checkpoint()
        return "ok"

    return hx.Workflow(key, start=once, transitions={(once, "ok"): hx.Done}, unique=hx.Unique(key))


def _idle() -> list[trio.lowlevel.Task]:
    return [t for t in all_tasks() if t.name == _workers.IDLE]


async def test_the_task_of_a_finished_instance_runs_the_next_one(autojump_clock: Any) -> None:
    seen: list[tuple[str, trio.lowlevel.Task, str]] = []
    wf = _one_step(seen)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        for value in ("a", "b", "c"):
            await engine.wait(await engine.start(wf, value))
        assert len(_idle()) == 1  # parked for the next instance, named as no runner
    assert [s[0] for s in seen] == ["once::a", "once::b", "once::c"]
    assert len({s[1] for s in seen}) == 1
    assert seen[0][1].name.endswith("._supervisor.supervise")


async def test_steps_see_the_context_of_the_caller_that_started_them(autojump_clock: Any) -> None:
    seen: list[tuple[str, trio.lowlevel.Task, str]] = []
    wf = _one_step(seen)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        await engine.wait(await engine.start(wf, "a"))
        REQUEST.set("r-2")  # another value than the idle task's context holds
        await engine.wait(await engine.start(wf, "b"))
        await engine.wait(await engine.start(wf, "c"))  # the same value: that task goes on
    assert [s[2] for s in seen] == ["none", "r-2", "r-2"]
    assert seen[1][1] is not seen[0][1]
    assert seen[2][1] is seen[1][1]


async def test_a_context_variable_a_step_sets_stays_with_its_instance(autojump_clock: Any) -> None:
    seen: list[tuple[str, trio.lowlevel.Task, str]] = []

    @hx.step(events=("ok",))
    async def marks(ctx: hx.StepContext) -> hx.StepResult:
        seen.append((ctx.instance_id, trio.lowlevel.current_task(), REQUEST.get()))
        REQUEST.set(ctx.instance_id)
        return "ok"

    wf = hx.Workflow(
        "marks", start=marks, transitions={(marks, "ok"): hx.Done}, unique=hx.Unique("m")
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        for value in ("a", "b"):
            await engine.wait(await engine.start(wf, value))
    assert [s[2] for s in seen] == ["none", "none"]
    assert seen[1][1] is not seen[0][1]


async def test_cancel_reaches_an_inline_step_in_a_task_that_ran_an_instance_before(
    autojump_clock: Any,
) -> None:
    seen: list[tuple[str, trio.lowlevel.Task, str]] = []
    quick = _one_step(seen)
    reached: list[str] = []
    tasks: list[trio.lowlevel.Task] = []

    @hx.step(events=("ok",))
    async def slow(ctx: hx.StepContext) -> hx.StepResult:
        tasks.append(trio.lowlevel.current_task())
        try:
            await trio.sleep(1000)
        except trio.Cancelled:
            reached.append(ctx.instance_id)
            raise
        return "ok"

    wf = hx.Workflow("slow", start=slow, transitions={(slow, "ok"): hx.Done}, unique=hx.Unique("s"))
    async with hx.open_engine(workflows=[quick, wf], clock=clock()) as engine:
        await engine.wait(await engine.start(quick, "a"))
        first = await engine.start(wf, "a")
        await trio.sleep(10)
        await engine.cancel(first)
        assert (await engine.wait(first)).status is hx.Status.CANCELLED
        # The task whose scope was cancelled ends; the next instance gets a new one,
        # and cancelling it reaches its step all the same.
        second = await engine.start(wf, "b")
        await trio.sleep(10)
        with trio.fail_after(1):
            await engine.cancel(second)
        assert (await engine.wait(second)).status is hx.Status.CANCELLED
        await engine.wait(await engine.start(quick, "b"))
        t = trio.current_time()
    assert reached == ["s::a", "s::b"]
    assert tasks[0] is seen[0][1]  # the first slow instance ran in the quick one's task
    assert tasks[1] is not tasks[0]
    assert seen[1][1] not in tasks
    assert t < 100


async def test_a_nursery_in_a_cancelled_inline_step_ends_its_instance_only(
    autojump_clock: Any,
) -> None:
    @hx.step(events=("ok",))
    async def fans(ctx: hx.StepContext) -> hx.StepResult:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 1000)
            nursery.start_soon(trio.sleep, 1000)
        return "ok"

    seen: list[tuple[str, trio.lowlevel.Task, str]] = []
    quick = _one_step(seen)
    wf = hx.Workflow("fans", start=fans, transitions={(fans, "ok"): hx.Done}, unique=hx.Unique("f"))
    async with hx.open_engine(workflows=[quick, wf], clock=clock()) as engine:
        await engine.wait(await engine.start(quick, "a"))
        iid = await engine.start(wf, "a")
        await trio.sleep(10)
        await engine.cancel(iid)  # its step raises a group of Cancelled from the nursery
        assert (await engine.wait(iid)).status is hx.Status.CANCELLED
        final = await engine.wait(await engine.start(quick, "b"))
    assert final.status is hx.Status.COMPLETED


async def test_at_most_keep_tasks_wait_idle(autojump_clock: Any) -> None:
    gate = trio.Event()

    @hx.step(events=("ok",))
    async def held(ctx: hx.StepContext) -> hx.StepResult:
        await gate.wait()
        return "ok"

    wf = hx.Workflow("held", start=held, transitions={(held, "ok"): hx.Done}, unique=hx.Unique("h"))
    count = _workers.KEEP + 20
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        ids = [await engine.start(wf, str(i)) for i in range(count)]
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        for iid in ids:
            assert (await engine.wait(iid)).status is hx.Status.COMPLETED
        await trio.testing.wait_all_tasks_blocked()
        assert len(_idle()) == _workers.KEEP
    assert _idle() == []  # closing the engine ends the idle ones too


async def test_without_passivation_every_runner_has_a_task_of_its_own(
    autojump_clock: Any,
) -> None:
    seen: list[tuple[str, trio.lowlevel.Task, str]] = []
    wf = _one_step(seen)
    async with hx.open_engine(workflows=[wf], clock=clock(), passivate_after=None) as engine:
        for value in ("a", "b"):
            await engine.wait(await engine.start(wf, value))
        assert _idle() == []
    assert seen[1][1] is not seen[0][1]


class _Incomparable:
    def __eq__(self, other: object) -> bool:
        raise TypeError("no comparison")

    __hash__ = object.__hash__


async def test_context_values_are_compared_by_identity_not_equality(autojump_clock: Any) -> None:
    seen: list[tuple[str, trio.lowlevel.Task, str]] = []
    wf = _one_step(seen)
    odd: contextvars.ContextVar[object] = contextvars.ContextVar("odd")
    odd.set(_Incomparable())
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        for value in ("a", "b"):
            await engine.wait(await engine.start(wf, value))  # no TypeError from __eq__
        odd.set(_Incomparable())  # an equal-looking, other object: a new task
        await engine.wait(await engine.start(wf, "c"))
    assert seen[1][1] is seen[0][1]
    assert seen[2][1] is not seen[1][1]


def _frame_locals(task: trio.lowlevel.Task) -> list[object]:
    """Every local of every frame the (parked) task's coroutine stack holds."""
    found: list[object] = []
    awaited: Any = task.coro
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            found.extend(frame.f_locals.values())
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return found


async def test_an_idle_task_holds_on_to_no_instance(autojump_clock: Any) -> None:
    seen: list[tuple[str, trio.lowlevel.Task, str]] = []
    wf = _one_step(seen)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        await engine.wait(await engine.start(wf, "a"))
        (idle,) = _idle()
        held = _frame_locals(idle)
        assert held  # the walk reached the task's frames
        jobs = [v for v in held if isinstance(v, tuple)]  # (entry, commands, announce)
        assert not [v for v in [*held, *(x for job in jobs for x in job)] if isinstance(v, Entry)]


async def test_cancel_reaches_an_inline_step_after_the_runner_opened_its_nursery(
    autojump_clock: Any,
) -> None:
    reached: list[str] = []
    began = trio.Event()

    @hx.step(events=("ok",))
    def blocking(ctx: hx.StepContext) -> hx.StepResult:  # a thread: the runner's nursery opens
        return "ok"

    @hx.step(events=("ok",))
    async def slow(ctx: hx.StepContext) -> hx.StepResult:  # then inline, in that nursery
        began.set()
        try:
            await trio.sleep(1000)
        except trio.Cancelled:
            reached.append(ctx.instance_id)
            raise
        return "ok"

    wf = hx.Workflow(
        "mixed",
        start=blocking,
        transitions={(blocking, "ok"): slow, (slow, "ok"): hx.Done},
        unique=hx.Unique("mx"),
    )
    seen: list[tuple[str, trio.lowlevel.Task, str]] = []
    quick = _one_step(seen)
    async with hx.open_engine(workflows=[wf, quick], clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await began.wait()
        await trio.sleep(10)
        await engine.cancel(iid)
        with trio.fail_after(1):
            final = await engine.wait(iid)
        after = await engine.wait(await engine.start(quick, "b"))
    assert reached == ["mx::a"]
    assert final.status is hx.Status.CANCELLED
    assert after.status is hx.Status.COMPLETED
