"""Timers never fire before their deadline by the engine's clock, whatever its resolution.

A wall clock may tick in whole seconds, or stand still for a while (a VM paused,
a clock being slewed): the runner then sleeps again instead of firing early.
"""

from __future__ import annotations

import math

import trio
import trio.testing

import hephaestus as hx

EPOCH = hx.testing.VirtualClock().start


class CoarseClock:
    """Epoch seconds with a resolution of one second."""

    def now(self) -> float:
        return EPOCH + math.floor(trio.current_time())


class StallingClock:
    """Follows trio's clock, but stands still from ``stall_at`` for ``stall_for`` seconds."""

    def __init__(self, stall_at: float, stall_for: float) -> None:
        self.stall_at = stall_at
        self.stall_for = stall_for

    def now(self) -> float:
        t = trio.current_time()
        if t <= self.stall_at:
            return EPOCH + t
        return EPOCH + max(self.stall_at, t - self.stall_for)


def nap(seconds: float) -> hx.Workflow:
    step = hx.Wait(seconds, key="nap")
    return hx.Workflow(
        "nap", start=step, transitions={(step, "timeout"): hx.Done}, unique=hx.Unique("nap")
    )


async def fired(engine: hx.Engine, iid: str) -> tuple[float, float, float]:
    """(deadline, engine time of the firing, trio time it finished) of the instance's Wait."""
    await trio.testing.wait_all_tasks_blocked()
    deadline = (await engine.get(iid)).timers[0].deadline
    with trio.fail_after(3600):
        final = await engine.wait(iid)
    return deadline, final.history[0].at, trio.current_time()


async def test_half_second_wait_on_a_one_second_clock_fires_at_the_next_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = CoarseClock()
    wf = nap(0.5)
    async with hx.open_engine(workflows=[wf], clock=clock) as engine:
        await trio.sleep(0.3)
        iid = await engine.start(wf, "a")
        deadline, at, finished = await fired(engine, iid)
    assert deadline == EPOCH + 0.5
    assert at >= deadline
    assert at == EPOCH + 1.0
    assert 1.0 <= finished < 1.6


async def test_waits_of_many_lengths_on_a_coarse_clock_never_fire_early(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = CoarseClock()
    for delay in (0.01, 0.5, 0.999, 1.0, 1.5, 2.25):
        wf = nap(delay)
        async with hx.open_engine(workflows=[wf], clock=clock) as engine:
            await trio.sleep(0.7)
            iid = await engine.start(wf, "a")
            deadline, at, _ = await fired(engine, iid)
        assert at >= deadline, delay


async def test_wait_while_the_clock_stands_still_fires_once_it_reaches_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Armed at t=0 for 10 s; the clock stops at t=5 and resumes at t=25, so the engine's
    # clock reads the deadline at t=30.
    clock = StallingClock(stall_at=5.0, stall_for=20.0)
    wf = nap(10)
    async with hx.open_engine(workflows=[wf], clock=clock) as engine:
        iid = await engine.start(wf, "a")
        deadline, at, finished = await fired(engine, iid)
    assert deadline == EPOCH + 10
    assert at >= deadline
    assert finished == 30.0
