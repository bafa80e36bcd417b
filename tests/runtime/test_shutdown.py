"""Leaving open_engine, however it happens, leaves no engine task behind."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx

from .helpers import all_tasks, clock, event_workflow, fan_workflow, task_names


class BodyError(Exception):
    """Raised by the test inside the engine's block."""


def _busy_workflows(release: threading.Event) -> list[hx.Workflow]:
    """Workflows that keep tasks of every kind alive: async steps, threads, timers."""

    def blocking(ctx: hx.StepContext) -> hx.StepResult:
        release.wait(10)
        return "ok"

    work = hx.step(blocking, events=("ok",), key="work")
    threaded = hx.Workflow(
        "threaded", start=work, transitions={(work, "ok"): hx.Done}, unique=hx.Unique("threaded")
    )
    pause = hx.Wait(1000, key="pause")
    sleepy = hx.Workflow(
        "sleepy", start=pause, transitions={(pause, "timeout"): hx.Done}, unique=hx.Unique("sleepy")
    )
    return [fan_workflow(delay=100.0), event_workflow(), threaded, sleepy]


async def _fill(engine: hx.Engine) -> None:
    for i in range(5):
        await engine.start("fan", f"f{i}", {"n": i})
        await engine.start("ev", f"e{i}")
        await engine.start("sleepy", f"s{i}")
    await engine.start("threaded", "t")
    await trio.testing.wait_all_tasks_blocked()


async def _check_no_engine_task_left(before: set[trio.lowlevel.Task]) -> None:
    await trio.testing.wait_all_tasks_blocked()
    left = all_tasks() - before
    assert not left, f"tasks left behind: {task_names(left)}"


async def test_normal_exit_leaves_no_task(autojump_clock: Any) -> None:
    release = threading.Event()
    storage = hx.MemoryStorage()
    before = all_tasks()
    async with hx.open_engine(
        workflows=_busy_workflows(release),
        storage=storage,
        clock=clock(),
        passivate_after=None,  # every instance keeps its runner: the engine has tasks to leave
    ) as engine:
        await _fill(engine)
        during = all_tasks() - before
        assert len(during) > 16  # the check below can see engine tasks
    release.set()
    await _check_no_engine_task_left(before)
    assert not storage.is_open  # opened by open_engine, so closed by it


async def test_exception_in_body_comes_out_unwrapped_and_leaves_no_task(
    autojump_clock: Any,
) -> None:
    release = threading.Event()
    before = all_tasks()
    error = BodyError("from the body")

    async def body() -> None:
        async with hx.open_engine(workflows=_busy_workflows(release), clock=clock()) as engine:
            await _fill(engine)
            raise error

    with pytest.raises(BodyError) as info:
        await body()
    assert info.value is error
    assert type(info.value) is BodyError
    release.set()
    await _check_no_engine_task_left(before)


async def test_exception_group_from_body_comes_out_as_raised(autojump_clock: Any) -> None:
    before = all_tasks()
    inner = [ValueError("a"), KeyError("b")]
    group = ExceptionGroup("mine", inner)

    async def body() -> None:
        async with hx.open_engine(workflows=[fan_workflow(delay=10.0)], clock=clock()) as engine:
            await engine.start("fan", "x", {"n": 1})
            raise group

    with pytest.raises(ExceptionGroup) as info:
        await body()
    # Trio's cancel scopes may rebuild a group (split/derive), but never wrap it.
    assert type(info.value) is ExceptionGroup
    assert info.value.message == "mine"
    assert list(info.value.exceptions) == inner
    await _check_no_engine_task_left(before)


async def test_base_exception_in_body_comes_out_unwrapped(autojump_clock: Any) -> None:
    class Stop(BaseException):
        pass

    before = all_tasks()

    async def body() -> None:
        async with hx.open_engine(workflows=[fan_workflow(delay=10.0)], clock=clock()) as engine:
            await engine.start("fan", "x", {"n": 1})
            raise Stop

    with pytest.raises(Stop) as info:
        await body()
    assert type(info.value) is Stop
    await _check_no_engine_task_left(before)


async def test_cancellation_leaves_no_task(autojump_clock: Any) -> None:
    release = threading.Event()
    storage = hx.MemoryStorage()
    before = all_tasks()
    with trio.move_on_after(50) as scope:
        async with hx.open_engine(
            workflows=_busy_workflows(release), storage=storage, clock=clock()
        ) as engine:
            await _fill(engine)
            await trio.sleep_forever()
    assert scope.cancelled_caught
    release.set()
    await _check_no_engine_task_left(before)
    assert not storage.is_open


async def test_cancellation_from_another_task_leaves_no_task(autojump_clock: Any) -> None:
    before = all_tasks()
    ready = trio.Event()

    async def run_engine() -> None:
        async with hx.open_engine(workflows=[fan_workflow(delay=100.0)], clock=clock()) as engine:
            for i in range(10):
                await engine.start("fan", f"x{i}", {"n": i})
            ready.set()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_engine)
        await ready.wait()
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    await _check_no_engine_task_left(before)


async def test_callers_open_storage_stays_open(autojump_clock: Any) -> None:
    wf = fan_workflow()
    async with hx.MemoryStorage() as storage:
        async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
            iid = await engine.start(wf, "a", {"n": 1})
            await engine.wait(iid)
        assert storage.is_open
        stored = await storage.get(iid)
        assert stored is not None
        assert stored.status is hx.Status.COMPLETED


async def test_waiter_outside_the_engine_is_told_when_it_closes(autojump_clock: Any) -> None:
    outcome: list[str] = []
    wf = event_workflow()
    with trio.fail_after(600):  # a waiter that is never woken would hang the test here
        async with (
            trio.open_nursery() as nursery,
            hx.open_engine(workflows=[wf], clock=clock()) as engine,
        ):
            iid = await engine.start(wf, "a")

            async def waiter() -> None:
                try:
                    await engine.wait(iid)
                except hx.EngineClosed:
                    outcome.append("closed")
                else:  # pragma: no cover
                    outcome.append("returned")

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
    assert outcome == ["closed"]
