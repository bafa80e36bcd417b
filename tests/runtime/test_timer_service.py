"""The timer service: one task fires every instance's timers, in deadline order, never early."""

from __future__ import annotations

import math
import random

import trio
import trio.testing

import hephaestus as hx
from hephaestus._runtime._timers import TimerService

EPOCH = hx.testing.VirtualClock().start


class TrioClock:
    """Epoch seconds that follow trio's clock exactly."""

    def now(self) -> float:
        return EPOCH + trio.current_time()


class CoarseClock:
    """Epoch seconds with a resolution of one second."""

    def now(self) -> float:
        return EPOCH + math.floor(trio.current_time())


def next_deadline() -> float:
    return trio.lowlevel.current_statistics().seconds_to_next_deadline


async def test_due_timers_of_all_instances_fire_in_deadline_order_then_arm_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[tuple[str, str, float]] = []
    clock = TrioClock()
    service = TimerService(clock, lambda i, t: fired.append((i, t, clock.now())))
    service.arm("b", "t0", EPOCH + 5)
    service.arm("a", "t0", EPOCH + 3)
    service.arm("a", "t1", EPOCH + 5)
    service.arm("c", "t0", EPOCH + 1)
    assert len(service) == 4
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert fired == [
        ("c", "t0", EPOCH + 1),
        ("a", "t0", EPOCH + 3),
        ("b", "t0", EPOCH + 5),
        ("a", "t1", EPOCH + 5),
    ]
    assert len(service) == 0


async def test_disarmed_timers_never_fire_and_rearming_moves_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[tuple[str, str, float]] = []
    clock = TrioClock()
    service = TimerService(clock, lambda i, t: fired.append((i, t, clock.now())))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        service.arm("a", "t0", EPOCH + 2)
        service.arm("a", "t1", EPOCH + 4)
        service.arm("b", "t0", EPOCH + 6)
        service.arm("b", "t1", EPOCH + 7)
        await trio.sleep(1)
        service.disarm("a", "t0")
        service.disarm("a", "missing")  # no-op
        service.arm("a", "t1", EPOCH + 8)  # moved later
        service.disarm_all("b")
        assert service.deadlines("a") == {"t1": EPOCH + 8}
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert fired == [("a", "t1", EPOCH + 8)]


async def test_disarming_the_timer_it_sleeps_on_leaves_nothing_armed_in_trio(
    autojump_clock: trio.testing.MockClock,
) -> None:
    service = TimerService(TrioClock(), lambda i, t: None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        service.arm("a", "t0", EPOCH + 100)
        await trio.testing.wait_all_tasks_blocked()
        assert next_deadline() == 100
        service.arm("b", "t0", EPOCH + 50)  # earlier: the service wakes and sleeps on it
        await trio.testing.wait_all_tasks_blocked()
        assert next_deadline() == 50
        service.disarm("b", "t0")
        service.disarm("a", "t0")
        await trio.testing.wait_all_tasks_blocked()
        assert next_deadline() == math.inf
        nursery.cancel_scope.cancel()


async def test_a_coarse_clock_never_fires_a_timer_before_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = CoarseClock()
    fired: list[tuple[str, float, float]] = []
    deadlines = {f"t{i}": EPOCH + 0.3 + 0.37 * i for i in range(12)}
    service = TimerService(clock, lambda i, t: fired.append((t, clock.now(), deadlines[t])))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        for timer_id, deadline in deadlines.items():
            service.arm("a", timer_id, deadline)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert [t for t, _, _ in fired] == list(deadlines)
    assert all(at >= deadline for _, at, deadline in fired)


async def test_many_waiting_instances_share_one_timer_service_and_fire_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(12)
    delays = [float(rng.randrange(1, 10_000)) for _ in range(300)]
    step = hx.WaitForEvent("go", key="w", timeout=10**7)
    wf = hx.Workflow(
        "nap",
        start=step,
        transitions={(step, "go"): hx.Done, (step, "timeout"): hx.Done},
        unique=hx.Unique("n"),
    )
    seen: list[hx.TelemetryEvent] = []
    clock = hx.testing.VirtualClock()
    async with hx.open_engine(workflows=[wf], clock=clock, telemetry=seen.append) as engine:
        ids = [await engine.start(wf, f"i{n}") for n in range(len(delays))]
        for iid, delay in zip(ids, delays, strict=True):
            await engine.schedule_resume(iid, "w", delay)
        await trio.testing.wait_all_tasks_blocked()
        assert len(engine.timers) == 2 * len(ids)  # one service holds every instance's timers
        finals = [await engine.wait(iid) for iid in ids]
        assert len(engine.timers) == 0
    assert all(f.history[-1].at - clock.start >= d for f, d in zip(finals, delays, strict=True))
    order = [e.instance_id for e in seen if e.name == "timer.fire"]
    by_deadline = [iid for _, iid in sorted(zip(delays, ids, strict=True), key=lambda p: p[0])]
    assert order == by_deadline


async def test_a_hundred_thousand_timers_fire_in_deadline_order_under_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(100_000)
    clock = TrioClock()
    deadlines = {f"i{n}": EPOCH + rng.uniform(0, 43_200) for n in range(100_000)}
    fired: list[tuple[float, float]] = []
    service = TimerService(clock, lambda i, t: fired.append((deadlines[i], clock.now())))
    for instance_id, deadline in deadlines.items():
        service.arm(instance_id, "t1", deadline)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        await trio.sleep(43_201)
        nursery.cancel_scope.cancel()
    assert len(fired) == len(deadlines)
    assert [d for d, _ in fired] == sorted(deadlines.values())
    assert all(at >= deadline for deadline, at in fired)
