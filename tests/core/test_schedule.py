"""The pure part of schedules: the plan of a look, tick values, the stored record."""

from __future__ import annotations

import pytest

import hephaestus as hx
from hephaestus._core._engine import prunable
from hephaestus._core._schedule import (
    RECORD_WORKFLOW,
    Plan,
    advanced,
    catch_up_problem,
    is_record,
    new_record,
    plan,
    record_id,
    record_through,
    scope_problem,
    tick_value,
)


class Hourly:
    """Ticks at every whole multiple of 10 (a cron expression in miniature)."""

    def after(self, moment: float) -> float | None:
        return (moment // 10 + 1) * 10

    def latest(self, moment: float) -> float | None:
        return (moment // 10) * 10


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [
        ("all", Plan(start=(20.0, 30.0, 40.0, 50.0), through=55.0)),
        ("latest", Plan(start=(50.0,), through=55.0, skipped=(20.0, 40.0))),
        ("skip", Plan(start=(), through=55.0, skipped=(20.0, 50.0))),
    ],
)
def test_after_downtime_the_missed_ticks_follow_catch_up(catch_up: str, expected: Plan) -> None:
    got = plan(Hourly(), through=15.0, now=55.0, waited=None, catch_up=catch_up)  # type: ignore[arg-type]
    assert got == expected


@pytest.mark.parametrize("catch_up", ["all", "latest", "skip"])
def test_the_tick_waited_for_always_starts(catch_up: str) -> None:
    on_time = plan(Hourly(), through=15.0, now=20.0, waited=20.0, catch_up=catch_up)  # type: ignore[arg-type]
    assert on_time == Plan(start=(20.0,), through=20.0)
    overslept = plan(Hourly(), through=15.0, now=45.0, waited=20.0, catch_up=catch_up)  # type: ignore[arg-type]
    assert overslept.start[0] == 20.0


def test_nothing_is_due_before_the_next_tick_or_with_a_clock_set_back() -> None:
    assert plan(Hourly(), through=15.0, now=19.0, waited=20.0, catch_up="all") == Plan(
        start=(), through=19.0
    )
    assert plan(Hourly(), through=55.0, now=30.0, waited=60.0, catch_up="latest") == Plan(
        start=(), through=30.0
    )


def test_all_catches_up_a_long_downtime_in_steps_of_limit_ticks() -> None:
    first = plan(Hourly(), through=5.0, now=75.0, waited=10.0, catch_up="all", limit=3)
    assert first == Plan(start=(10.0, 20.0, 30.0), through=30.0)
    rest = plan(Hourly(), through=30.0, now=75.0, waited=None, catch_up="all", limit=3)
    assert rest == Plan(start=(40.0, 50.0, 60.0), through=60.0)
    last = plan(Hourly(), through=60.0, now=75.0, waited=None, catch_up="all", limit=3)
    assert last == Plan(start=(70.0,), through=75.0)


def test_tick_values_are_utc_times() -> None:
    assert tick_value(1_796_112_900.0) == "20261201T081500Z"
    assert tick_value(1_796_112_900.75) == "20261201T081500Z"
    assert tick_value(951_782_400) == "20000229T000000Z"


def test_the_record_keeps_through_and_only_grows() -> None:
    record = new_record("nightly", workflow="report", cron="0 2 * * *", through=100.0, now=100.0)
    assert record.id == record_id("nightly") == "_schedule::nightly"
    assert (record.workflow, record.status, record.revision) == (
        RECORD_WORKFLOW,
        hx.Status.COMPLETED,
        1,
    )
    assert record_through(record) == 100.0
    later = advanced(record, through=250.0, now=260.0)
    assert (record_through(later), later.revision, later.updated_at) == (250.0, 2, 260.0)
    assert record_through(advanced(later, through=120.0, now=270.0)) == 250.0
    assert is_record(later)


@pytest.mark.parametrize("through", [None, "100", True, float("nan"), float("inf"), -1.0])
def test_a_record_without_a_usable_through_says_nothing(through: object) -> None:
    record = new_record("n", workflow="w", cron="* * * * *", through=1.0, now=1.0)
    broken = hx.Instance(
        id=record.id, workflow=RECORD_WORKFLOW, version=1, metadata={"through": through}
    )
    assert record_through(broken) is None
    assert record_through(hx.Instance(id="x::y", workflow="w", version=1)) is None


def test_prune_never_deletes_a_schedule_record() -> None:
    record = new_record("n", workflow="w", cron="* * * * *", through=1.0, now=1.0)
    done = hx.Instance(id="w::a", workflow="w", version=1, status=hx.Status.COMPLETED)
    statuses = (hx.Status.COMPLETED,)
    assert prunable(done, statuses=statuses, cut=10.0)
    assert not prunable(record, statuses=statuses, cut=10.0)


def test_problems_say_what_to_change() -> None:
    assert catch_up_problem("latest") is None
    assert "got 'newest'" in str(catch_up_problem("newest"))
    assert scope_problem("w", hx.Unique("w")) is None
    assert "scope 'workflow'" in str(scope_problem("w", hx.Unique("w", "none")))
