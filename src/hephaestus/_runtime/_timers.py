"""The timer service: one task that sleeps on the earliest armed deadline of every instance.

Runners do not sleep on their own timers. They arm and disarm them here; the
service keeps a heap of ``(deadline, instance id, timer id)`` over all
instances and hands each timer that comes due to a ``deliver`` callback. A
disarmed timer stays in the heap until it reaches the top (lazy deletion),
but the service never sleeps on one: disarming the timer it sleeps on wakes
it to look again.

Deadlines are epoch seconds from the engine's clock. The service sleeps until
``trio.current_time() + (deadline - clock.now())`` and, since the two clocks
drift apart (a coarse, slewed or stalled wall clock), fires a timer only once
the engine's clock has reached its deadline; until then it sleeps again.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections.abc import Callable
from typing import final

import trio

from ._clock import Clock


@final
class TimerService:
    """Every armed timer of an engine, and the one task that fires them.

    ``deliver(instance_id, timer_id)`` is called, outside any await, for each
    timer whose deadline the clock has reached, in deadline order (ties in
    the order they were armed). It must not raise.
    """

    __slots__ = (
        "_armed",
        "_clock",
        "_count",
        "_deliver",
        "_heap",
        "_seq",
        "_sleeping_on",
        "_wake",
    )

    def __init__(self, clock: Clock, deliver: Callable[[str, str], None]) -> None:
        self._clock = clock
        self._deliver = deliver
        self._heap: list[tuple[float, int, str, str]] = []
        self._armed: dict[str, tuple[str, float] | dict[str, float]] = {}
        """Per instance: its one armed timer as (timer id, deadline), or a dict of several."""
        self._count = 0
        self._seq = 0
        self._sleeping_on: tuple[float, int] | None = None
        self._wake: trio.Event | None = None

    def __len__(self) -> int:
        """How many timers are armed."""
        return self._count

    def arm(self, instance_id: str, timer_id: str, deadline: float) -> None:
        """Fire ``timer_id`` of ``instance_id`` once the clock reaches ``deadline``.

        Arming a timer that is already armed moves it to the new deadline.
        """
        timer_id = sys.intern(timer_id)  # "t1", "t2"...: one string for every instance
        armed = self._armed
        held = armed.get(instance_id)
        if held is None:
            armed[instance_id] = (timer_id, deadline)
            self._count += 1
        elif type(held) is tuple:
            if held[0] == timer_id:
                armed[instance_id] = (timer_id, deadline)
            else:
                armed[instance_id] = {held[0]: held[1], timer_id: deadline}
                self._count += 1
        else:
            assert isinstance(held, dict)
            if timer_id not in held:
                self._count += 1
            held[timer_id] = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, instance_id, timer_id))
        sleeping_on = self._sleeping_on
        if sleeping_on is None or (deadline, self._seq) < sleeping_on:
            self._poke()

    def disarm(self, instance_id: str, timer_id: str) -> None:
        """Forget ``timer_id`` of ``instance_id``; nothing happens if it is not armed."""
        if self._forget(instance_id, timer_id) is not None:
            self._poke_if_head_dead()

    def disarm_all(self, instance_id: str) -> None:
        """Forget every timer of ``instance_id``."""
        held = self._armed.pop(instance_id, None)
        if held is not None:
            self._count -= 1 if type(held) is tuple else len(held)
            self._poke_if_head_dead()

    def deadlines(self, instance_id: str) -> dict[str, float]:
        """The armed timers of ``instance_id``: timer id -> deadline (a copy)."""
        held = self._armed.get(instance_id)
        if held is None:
            return {}
        if type(held) is tuple:
            return {held[0]: held[1]}
        assert isinstance(held, dict)
        return dict(held)

    async def run(self) -> None:
        """Fire due timers until cancelled; never returns.

        Cancellation (the engine closing) stops it at once; armed timers are
        simply forgotten, since every one is persisted in its instance's snapshot.
        """
        heap = self._heap
        clock = self._clock
        while True:
            self._drop_dead_heads()
            if not heap:
                await self._sleep_until(math.inf, None)
                continue
            deadline, seq, instance_id, timer_id = heap[0]
            now = clock.now()
            if now >= deadline:
                heapq.heappop(heap)
                self._fire(instance_id, timer_id)
                await trio.lowlevel.checkpoint()
                continue
            current = trio.current_time()
            wake = max(current + (deadline - now), math.nextafter(current, math.inf))
            await self._sleep_until(wake, (deadline, seq))

    # -- internals -----------------------------------------------------------------------------

    def _fire(self, instance_id: str, timer_id: str) -> None:
        self._forget(instance_id, timer_id)
        self._deliver(instance_id, timer_id)

    def _forget(self, instance_id: str, timer_id: str) -> float | None:
        """Drop one armed timer; return its deadline, or None if it was not armed."""
        armed = self._armed
        held = armed.get(instance_id)
        if held is None:
            return None
        if type(held) is tuple:
            if held[0] != timer_id:
                return None
            del armed[instance_id]
            self._count -= 1
            return held[1]
        assert isinstance(held, dict)
        deadline = held.pop(timer_id, None)
        if deadline is None:
            return None
        self._count -= 1
        if len(held) == 1:
            ((left, when),) = held.items()
            armed[instance_id] = (left, when)
        return deadline

    def _deadline(self, instance_id: str, timer_id: str) -> float | None:
        held = self._armed.get(instance_id)
        if held is None:
            return None
        if type(held) is tuple:
            return held[1] if held[0] == timer_id else None
        assert isinstance(held, dict)
        return held.get(timer_id)

    def _is_live(self, entry: tuple[float, int, str, str]) -> bool:
        deadline, _, instance_id, timer_id = entry
        return self._deadline(instance_id, timer_id) == deadline

    def _drop_dead_heads(self) -> None:
        heap = self._heap
        while heap and not self._is_live(heap[0]):
            heapq.heappop(heap)
        if len(heap) > 64 and len(heap) > 4 * self._count:
            # Mostly disarmed timers: rebuild rather than let the heap grow without bound.
            self._heap[:] = [entry for entry in heap if self._is_live(entry)]
            heapq.heapify(self._heap)

    def _poke_if_head_dead(self) -> None:
        heap = self._heap
        if self._sleeping_on is not None and heap and not self._is_live(heap[0]):
            self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _sleep_until(self, wake: float, on: tuple[float, int] | None) -> None:
        event = self._wake = trio.Event()
        self._sleeping_on = on if on is not None else (math.inf, 0)
        try:
            with trio.move_on_at(wake):
                await event.wait()
        finally:
            self._sleeping_on = None
            self._wake = None
