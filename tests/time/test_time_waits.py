"""Durable waits under virtual time: Wait, WaitForEvent, Suspend(timeout), schedule_resume.

Every test runs on pytest-trio's ``autojump_clock`` with ``hx.testing.VirtualClock()``,
so persisted deadlines (epoch seconds) follow trio's virtual time and nothing really
sleeps. "Exiting the engine" (leaving ``open_engine``) stands in for a crash: the
snapshot in the shared ``MemoryStorage`` is all that survives.

(No ``__init__.py`` here on purpose: a package named ``time`` would shadow the stdlib.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest
import trio
import trio.testing

import hephaestus as hx

DAY = 86_400.0


async def finish(engine: hx.Engine, iid: str, within: float = DAY) -> hx.Instance:
    """``engine.wait``, but a regression that never fires fails fast instead of hanging."""
    with trio.fail_after(within):  # virtual seconds: autojump gets here at once
        return await engine.wait(iid)


def one_step(start: hx.Step, name: str = "timed") -> hx.Workflow:
    """A workflow of ``start`` alone: every event it declares ends the instance."""
    return hx.Workflow(
        name,
        start=start,
        transitions={(start, e): hx.Done for e in start.events},
        unique=hx.Unique("t"),
    )


def entries(instance: hx.Instance, clock: hx.testing.VirtualClock) -> list[tuple[object, ...]]:
    """History as (step, event, attempt, virtual time, error)."""
    return [(h.step, h.event, h.attempt, h.at - clock.start, h.error) for h in instance.history]


def next_deadline() -> float:
    """Seconds until the earliest armed deadline anywhere in this trio run (inf: none)."""
    return trio.lowlevel.current_statistics().seconds_to_next_deadline


def fires(events: list[hx.TelemetryEvent]) -> list[str]:
    return [str(e.metadata["timer"]) for e in events if e.name == "timer.fire"]


# --- Wait -------------------------------------------------------------------------------------


async def test_wait_completes_after_exactly_its_duration_with_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = hx.testing.VirtualClock()
    wf = one_step(hx.Wait(90, key="nap"))
    async with hx.open_engine(workflows=[wf], clock=clock) as engine:
        t0 = trio.current_time()
        iid = await engine.start(wf, "a")
        await trio.sleep(89.999)
        early = await engine.get(iid)
        assert early.status is hx.Status.WAITING
        assert early.history == ()
        assert early.timers == (
            hx.Timer(
                id=early.timers[0].id, kind="timeout", step="nap", deadline=clock.start + t0 + 90
            ),
        )
        final = await finish(engine, iid)
        assert trio.current_time() - t0 == pytest.approx(90, abs=1e-6)
    assert final.status is hx.Status.COMPLETED
    assert entries(final, clock) == [("nap", "timeout", 1, pytest.approx(t0 + 90, abs=1e-6), None)]
    assert final.timers == ()


async def test_thirty_day_wait_finishes_instantly_under_autojump(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = hx.testing.VirtualClock()
    wf = one_step(hx.Wait(30 * DAY, key="month"))
    wall = time.perf_counter()
    async with hx.open_engine(workflows=[wf], clock=clock) as engine:
        t0 = trio.current_time()
        final = await finish(engine, await engine.start(wf, "a"), within=31 * DAY)
        assert trio.current_time() - t0 == 30 * DAY
    assert time.perf_counter() - wall < 5.0  # virtual days, real milliseconds
    assert final.status is hx.Status.COMPLETED
    assert entries(final, clock) == [("month", "timeout", 1, t0 + 30 * DAY, None)]


# --- WaitForEvent -----------------------------------------------------------------------------


def approval_then_shipping() -> hx.Workflow:
    """approval (event or 60 s timeout) -> shipping, which waits with no timeout."""
    approval = hx.WaitForEvent("approved", key="approval", timeout=60)
    shipping = hx.WaitForEvent("shipped", key="shipping")
    return hx.Workflow(
        "approve",
        start=approval,
        transitions={
            (approval, "approved"): shipping,
            (approval, "timeout"): shipping,
            (shipping, "shipped"): hx.Done,
        },
        unique=hx.Unique("t"),
    )


async def test_wait_for_event_event_before_timeout_wins_and_disarms_the_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = hx.testing.VirtualClock()
    wf = approval_then_shipping()
    seen: list[hx.TelemetryEvent] = []
    async with hx.open_engine(workflows=[wf], clock=clock, telemetry=seen.append) as engine:
        t0 = trio.current_time()
        iid = await engine.start(wf, "a")
        await trio.sleep(10)
        assert [t.kind for t in (await engine.get(iid)).timers] == ["timeout"]
        await engine.resume(iid, "approved", {"by": "ann"})
        assert (await engine.get(iid)).timers == ()  # nothing left in the snapshot ...
        await trio.testing.wait_all_tasks_blocked()  # (shipping suspends meanwhile)
        assert next_deadline() == math.inf  # ... and nothing armed in the runtime
        after = await engine.get(iid)
        assert after.results["approval"] == {"by": "ann"}
        assert after.timers == ()
        await trio.sleep(1000)  # far past the old deadline: nothing fires
        later = await engine.get(iid)
        assert later.revision == after.revision
        assert later.status is hx.Status.WAITING
        assert list(later.waiting) == ["shipping"]
        assert fires(seen) == []
        await engine.resume(iid, "shipped")
        final = await finish(engine, iid)
    assert [(s, e, at) for s, e, _, at, _ in entries(final, clock)] == [
        ("approval", "approved", t0 + 10),
        ("shipping", "shipped", t0 + 1010),
    ]


async def test_wait_for_event_timeout_before_event_wins_and_late_resume_is_rejected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = hx.testing.VirtualClock()
    wf = approval_then_shipping()
    async with hx.open_engine(workflows=[wf], clock=clock) as engine:
        t0 = trio.current_time()
        iid = await engine.start(wf, "a")
        await trio.sleep(61)
        timed_out = await engine.get(iid)
        assert entries(timed_out, clock) == [("approval", "timeout", 1, t0 + 60, None)]
        assert "approval" in timed_out.completed
        with pytest.raises(hx.EventRejected, match="'approved' cannot be accepted") as info:
            await engine.resume(iid, "approved", {"by": "ann"})
        assert iid in str(info.value)
        assert (await engine.get(iid)).revision == timed_out.revision  # nothing changed
        await engine.resume(iid, "shipped")
        final = await finish(engine, iid)
        with pytest.raises(hx.EventRejected, match="completed and accepts no more events"):
            await engine.resume(iid, "approved")
    assert final.results["approval"] == {}  # timed out: the late payload is not stored


# --- crash during a wait ----------------------------------------------------------------------


async def _suspend_for_a_minute(ctx: hx.StepContext) -> hx.StepResult:
    return hx.Suspend(timeout=60)


WAITERS: dict[str, Callable[[], hx.Step]] = {
    "Wait": lambda: hx.Wait(60, key="pause"),
    "WaitForEvent": lambda: hx.WaitForEvent("approved", key="pause", timeout=60),
    "Suspend": lambda: hx.step(_suspend_for_a_minute, key="pause", events=("approved", "timeout")),
}


@pytest.mark.parametrize("kind", list(WAITERS))
async def test_crash_during_wait_past_the_deadline_fires_at_once_on_recovery(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    clock = hx.testing.VirtualClock()
    wf = one_step(WAITERS[kind]())
    store = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=store, clock=clock) as engine:
        t0 = trio.current_time()
        iid = await engine.start(wf, "a")
        await trio.sleep(10)
        assert (await engine.get(iid)).status is hx.Status.WAITING
    await trio.sleep(100)  # the engine is down across the deadline (t0 + 60)
    async with hx.open_engine(workflows=[wf], storage=store, clock=clock) as engine:
        reopened = trio.current_time()
        final = await finish(engine, iid)
        assert trio.current_time() == reopened  # overdue: no waiting at all
    assert reopened == t0 + 110
    assert entries(final, clock) == [("pause", "timeout", 1, t0 + 110, None)]
    assert final.status is hx.Status.COMPLETED


@pytest.mark.parametrize("kind", list(WAITERS))
async def test_crash_during_wait_before_the_deadline_fires_at_the_original_deadline(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    clock = hx.testing.VirtualClock()
    wf = one_step(WAITERS[kind]())
    store = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=store, clock=clock) as engine:
        t0 = trio.current_time()
        iid = await engine.start(wf, "a")
        await trio.sleep(10)
    await trio.sleep(10)
    async with hx.open_engine(workflows=[wf], storage=store, clock=clock) as engine:
        await trio.sleep(39.999)  # t0 + 59.999: not yet
        assert (await engine.get(iid)).status is hx.Status.WAITING
        final = await finish(engine, iid)
        # The original deadline (t0 + 60), not a fresh minute from the restart (t0 + 80).
        assert trio.current_time() - t0 == pytest.approx(60, abs=1e-6)
    assert entries(final, clock) == [
        ("pause", "timeout", 1, pytest.approx(t0 + 60, abs=1e-6), None)
    ]


# --- schedule_resume / cancel_timer -----------------------------------------------------------


@hx.step(events=("approved", "timeout"), key="approval")
async def approval(ctx: hx.StepContext) -> hx.StepResult:
    return hx.Suspend()  # no timeout of its own: only schedule_resume can time it out


async def test_schedule_resume_then_cancel_timer_never_fires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = hx.testing.VirtualClock()
    wf = one_step(approval)
    store = hx.MemoryStorage()
    seen: list[hx.TelemetryEvent] = []
    async with hx.open_engine(
        workflows=[wf], storage=store, clock=clock, telemetry=seen.append
    ) as engine:
        t0 = trio.current_time()
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        timer_id = await engine.schedule_resume(iid, "approval", 30)
        assert (await engine.get(iid)).timers == (
            hx.Timer(id=timer_id, kind="resume", step="approval", deadline=clock.start + t0 + 30),
        )
        assert await engine.cancel_timer(iid, timer_id) is True
        assert await engine.cancel_timer(iid, timer_id) is False  # already gone
        cancelled = await engine.get(iid)
        assert cancelled.timers == ()
        await trio.testing.wait_all_tasks_blocked()
        assert next_deadline() == math.inf
        await trio.sleep(1000)
        assert (await engine.get(iid)).revision == cancelled.revision
    async with hx.open_engine(
        workflows=[wf], storage=store, clock=clock, telemetry=seen.append
    ) as engine:
        await trio.sleep(1000)  # a restart does not bring it back either
        still = await engine.get(iid)
        assert still.status is hx.Status.WAITING
        assert still.history == ()
        await engine.resume(iid, "approved")
        final = await finish(engine, iid)
    assert fires(seen) == []
    assert [(s, e) for s, e, *_ in entries(final, clock)] == [("approval", "approved")]


@pytest.mark.parametrize(("down_until", "fires_at"), [(20, 50), (80, 80)])
async def test_schedule_resume_survives_a_restart(
    autojump_clock: trio.testing.MockClock, down_until: float, fires_at: float
) -> None:
    clock = hx.testing.VirtualClock()
    wf = one_step(approval)
    store = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=store, clock=clock) as engine:
        t0 = trio.current_time()
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        await engine.schedule_resume(iid, "approval", 50)
        await trio.sleep(10)
    await trio.sleep_until(t0 + down_until)
    async with hx.open_engine(workflows=[wf], storage=store, clock=clock) as engine:
        final = await finish(engine, iid)
        assert trio.current_time() - t0 == pytest.approx(fires_at, abs=1e-6)
    assert final.status is hx.Status.COMPLETED
    assert entries(final, clock) == [
        ("approval", "timeout", 1, pytest.approx(t0 + fires_at, abs=1e-6), None)
    ]


# --- the engine's clock is the authority on deadlines -----------------------------------------


class SteppableClock:
    """VirtualClock whose reading can be set back, like a wall clock corrected by NTP."""

    def __init__(self) -> None:
        self.start = hx.testing.VirtualClock().start
        self.offset = 0.0

    def now(self) -> float:
        return self.start + trio.current_time() - self.offset


async def test_timer_never_fires_before_its_deadline_by_the_engine_clock_stepped_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = SteppableClock()
    wf = one_step(hx.Wait(10, key="nap"))
    async with hx.open_engine(workflows=[wf], clock=clock) as engine:
        t0 = trio.current_time()
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        deadline = (await engine.get(iid)).timers[0].deadline
        await trio.sleep(2)
        clock.offset = 5.0  # the clock is set back 5 s while the timer sleeps
        final = await finish(engine, iid)
        assert trio.current_time() - t0 == 15  # 10 s by the engine's clock, not by trio's
    assert [h.at for h in final.history] == [deadline]


async def test_timer_never_fires_before_its_deadline_despite_epoch_rounding(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Epoch seconds near 1.8e9 round to 2.4e-7 s: started half a step past a whole second,
    # the deadline rounds up while trio's own wake-up time, read back as epoch, rounds down.
    clock = hx.testing.VirtualClock()
    wf = one_step(hx.Wait(1.0, key="nap"))
    async with hx.open_engine(workflows=[wf], clock=clock) as engine:
        await trio.sleep_until(trio.current_time() + 1.192092896e-07)
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        deadline = (await engine.get(iid)).timers[0].deadline
        final = await finish(engine, iid)
    assert final.history[0].at >= deadline
