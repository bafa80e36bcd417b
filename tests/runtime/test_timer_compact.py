"""The timer service's compact bookkeeping behaves like a plain dict of dicts."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

import hephaestus as hx
from hephaestus._runtime._timers import TimerService

EPOCH = hx.testing.VirtualClock().start


class TrioClock:
    def now(self) -> float:
        return EPOCH + trio.current_time()


@pytest.mark.parametrize("seed", range(20))
async def test_random_arms_and_disarms_match_a_dict_of_dicts(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    rng = random.Random(seed)
    fired: list[tuple[str, str]] = []
    service = TimerService(TrioClock(), lambda i, t: fired.append((i, t)))
    model: dict[str, dict[str, float]] = {}
    for _ in range(200):
        instance, timer = rng.choice("abc"), rng.choice(("t1", "t2", "t3"))
        roll = rng.random()
        if roll < 0.55:
            deadline = EPOCH + rng.randint(1, 50)
            service.arm(instance, timer, deadline)
            model.setdefault(instance, {})[timer] = deadline
        elif roll < 0.9:
            service.disarm(instance, timer)
            model.get(instance, {}).pop(timer, None)
        else:
            service.disarm_all(instance)
            model.pop(instance, None)
        assert len(service) == sum(len(t) for t in model.values())
        for key in "abc":
            assert service.deadlines(key) == model.get(key, {})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    expected = sorted((d, i, t) for i, timers in model.items() for t, d in timers.items())
    assert sorted(fired) == sorted((i, t) for _, i, t in expected)
    assert len(service) == 0


def test_timer_ids_are_shared_between_instances() -> None:
    service = TimerService(TrioClock(), lambda i, t: None)
    first, second = "".join(["t", "1"]), "".join(["t", "1"])
    assert first is not second
    service.arm("a", first, EPOCH + 1)
    service.arm("b", second, EPOCH + 1)
    ids = [entry[3] for entry in service._heap]
    assert ids[0] is ids[1]
