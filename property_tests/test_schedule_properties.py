"""Properties of schedules: the pure tick plan against a brute-force model, tick values against
the stdlib, and the runtime across random restarts, crashes and downtime.

- ``plan`` starts exactly the ticks the rules say (DESIGN: the tick waited for
  is on time; other due ticks were missed and follow ``catch_up``), for
  random tick sets, looks and policies.
- Any sequence of looks and restarts, bookkept as the runtime does (only
  ``through`` is stored), never starts a tick twice, and with ``"all"``
  starts every tick after the first look.
- A real engine, stopped and reopened at random moments with random
  downtime, starts each hourly tick at most once, and with ``"all"`` every one.
"""

from __future__ import annotations

import bisect
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import hephaestus as hx
from hephaestus._core._schedule import CATCH_UP, CatchUp, Plan, plan, tick_value
from hephaestus.testing._clock import DEFAULT_EPOCH


class ListTicks:
    """Ticks at the given whole seconds (the model of a cron expression)."""

    def __init__(self, ticks: list[int]) -> None:
        self.ticks = sorted(set(ticks))

    def after(self, moment: float) -> float | None:
        i = bisect.bisect_right(self.ticks, moment)
        return float(self.ticks[i]) if i < len(self.ticks) else None

    def latest(self, moment: float) -> float | None:
        i = bisect.bisect_right(self.ticks, moment)
        return float(self.ticks[i - 1]) if i else None


def model(
    ticks: list[int], through: float, now: float, waited: float | None, catch_up: str
) -> Plan:
    due = [float(t) for t in sorted(set(ticks)) if through < t <= now]
    on_time = [waited] if waited is not None and waited in due else []
    missed = [t for t in due if not on_time or t > on_time[0]]
    chosen = {"all": missed, "latest": missed[-1:], "skip": []}[catch_up]
    left_out = [t for t in missed if t not in chosen]
    skipped = (left_out[0], left_out[-1]) if left_out else None
    return Plan(start=tuple(on_time + chosen), through=now, skipped=skipped)


moments = st.integers(0, 60).map(float) | st.floats(0, 60, allow_nan=False)


@given(
    ticks=st.lists(st.integers(0, 60), max_size=20),
    through=moments,
    now=moments,
    catch_up=st.sampled_from(CATCH_UP),
    waited_index=st.none() | st.integers(0, 19),
    limit=st.integers(1, 4) | st.just(1_000),
)
def test_plan_starts_what_the_rules_say(
    ticks: list[int],
    through: float,
    now: float,
    catch_up: CatchUp,
    waited_index: int | None,
    limit: int,
) -> None:
    """Looking again at once while a plan stops short of ``now`` adds up to the model's plan."""
    oracle = ListTicks(ticks)
    waited = oracle.after(through) if waited_index is not None else None
    expected = model(ticks, through, now, waited, catch_up)
    got = plan(oracle, through=through, now=now, waited=waited, catch_up=catch_up, limit=limit)
    started = list(got.start)
    while got.through < now:
        assert len(got.start) == limit
        assert got.through == got.start[-1]
        got = plan(
            oracle, through=got.through, now=now, waited=None, catch_up=catch_up, limit=limit
        )
        started += got.start
    assert len(got.start) <= (limit if catch_up == "all" else 2)  # latest: on time + latest
    assert Plan(start=tuple(started), through=got.through, skipped=got.skipped) == expected


@given(
    ticks=st.lists(st.integers(1, 200), max_size=40),
    steps=st.lists(st.tuples(st.booleans(), st.floats(0, 30, allow_nan=False)), max_size=30),
    catch_up=st.sampled_from(CATCH_UP),
    punctual=st.booleans(),
)
def test_looks_and_restarts_never_start_a_tick_twice(
    ticks: list[int], steps: list[tuple[bool, float]], catch_up: CatchUp, punctual: bool
) -> None:
    """Each step: maybe restart (the in-memory waited tick is lost), then time passes, look.

    ``punctual``: a running schedule looks no later than the tick it waits for,
    as the runtime does; otherwise it may oversleep (a suspended host).
    """
    oracle = ListTicks(ticks)
    now = 0.0
    through = now  # seen for the first time at 0
    waited = oracle.after(through)
    started: list[float] = []
    for restart, elapsed in steps:
        if restart:
            waited = None
        if punctual and waited is not None:
            now = min(now + elapsed, waited)
        else:
            now += elapsed
        chosen = plan(oracle, through=through, now=now, waited=waited, catch_up=catch_up, limit=3)
        started += chosen.start
        through = max(through, chosen.through)
        while chosen.through < now:  # the runtime looks again at once
            chosen = plan(oracle, through=through, now=now, waited=None, catch_up=catch_up, limit=3)
            started += chosen.start
            through = max(through, chosen.through)
        waited = oracle.after(through)
    assert len(started) == len(set(started))
    assert started == sorted(started)
    due = [float(t) for t in oracle.ticks if t <= now]
    assert set(started) <= set(due)
    if catch_up == "all" or (punctual and not any(restart for restart, _ in steps)):
        assert started == due  # every tick was started, on time or caught up


@given(st.integers(-(10**10), 10**11) | st.floats(-1e10, 1e11, allow_nan=False))
def test_tick_value_is_the_utc_time(moment: float) -> None:
    expected = datetime.fromtimestamp(int(moment // 1), UTC).strftime("%Y%m%dT%H%M%SZ")
    assert tick_value(moment) == expected.rjust(16, "0")


@hx.step(events=("ok",))
async def work(ctx: hx.StepContext) -> hx.StepResult:
    return "ok"


REPORT = hx.Workflow(
    "report", start=work, transitions={(work, "ok"): hx.Done}, unique=hx.Unique("report")
)
HOUR = 3600.0


@settings(deadline=None)
@given(
    sessions=st.lists(
        st.tuples(
            st.integers(0, 8).map(lambda h: h * HOUR) | st.floats(0, 8 * HOUR, allow_nan=False),
            st.sampled_from([0.0, 1e-3, HOUR, 2.5 * HOUR]) | st.floats(0, 6 * HOUR),
        ),
        min_size=1,
        max_size=6,
    ),
    catch_up=st.sampled_from(CATCH_UP),
)
def test_an_engine_reopened_at_random_moments_starts_each_tick_at_most_once(
    sessions: list[tuple[float, float]], catch_up: Any
) -> None:
    starts: Counter[str] = Counter()

    def count(event: hx.TelemetryEvent) -> None:
        if event.name == "workflow.start":
            starts[str(event.instance_id)] += 1

    async def main() -> list[str]:
        storage = hx.MemoryStorage()
        schedule = hx.Schedule(REPORT, cron="0 * * * *", catch_up=catch_up)
        async with storage:
            for ran, down in sessions:
                async with hx.open_engine(
                    workflows=[REPORT],
                    storage=storage,
                    clock=hx.testing.VirtualClock(),
                    schedules=[schedule],
                    telemetry=count,
                ):
                    await trio.sleep(ran)
                await trio.sleep(down)
            return [i.id for i in await storage.query(workflow="report")]

    ids = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert set(starts.values()) <= {1}
    assert sorted(starts) == ids
    # Ticks are hourly from the first sight at the run's start; the last session's end bounds them.
    end = sum(ran for ran, _ in sessions) + sum(down for _, down in sessions[:-1])
    every = [h * HOUR for h in range(1, int(end // HOUR) + 1)]
    assert set(ids) <= {tick_id(t) for t in every}
    if catch_up == "all":
        # A session that runs at all catches up at once and starts every tick while it runs
        # (one at the very moment it closes races the close).
        moment, covered = 0.0, 0.0
        for ran, down in sessions:
            if moment + ran > moment:  # it slept: trio's clock moved on
                covered = moment + ran
            moment = moment + ran + down  # in trio's order: one sleep, then the other
        assert {tick_id(t) for t in every if t < covered - 1e-3} <= set(ids)


def tick_id(offset: float) -> str:
    return f"report::{tick_value(DEFAULT_EPOCH + offset)}"
