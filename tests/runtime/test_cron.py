"""Cron expressions through cronsim: ticks in epoch seconds, UTC, exact near tick boundaries."""

from __future__ import annotations

import math

import pytest

from hephaestus._runtime._cron import Cron, CronError

T = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a tick of every hourly expression


def test_after_is_strictly_after_and_latest_is_at_or_before() -> None:
    hourly = Cron("0 * * * *")
    assert hourly.after(T) == T + 3600
    assert hourly.after(T - 0.5) == T
    assert hourly.latest(T) == T
    assert hourly.latest(T + 3599.999) == T
    assert hourly.latest(math.nextafter(T, 0)) == T - 3600


def test_a_float_a_hair_below_a_tick_never_reads_as_the_tick() -> None:
    hourly = Cron("0 * * * *")
    below = math.nextafter(T + 3600, 0)
    assert hourly.after(below) == T + 3600
    assert hourly.latest(below) == T


def test_seconds_come_first_in_six_fields() -> None:
    assert Cron("*/15 * * * * *").after(T) == T + 15


def test_an_expression_that_never_ticks_has_no_next_tick() -> None:
    never = Cron("* * */20 * 1L")  # the 1st or 21st of a month that is also its last Monday
    assert never.after(T) is None


@pytest.mark.parametrize("expression", ["61 * * * *", "* *", "", "0 0 31 2 *"])
def test_a_bad_expression_is_a_cron_error(expression: str) -> None:
    with pytest.raises(CronError, match="is not a valid cron expression"):
        Cron(expression)


@pytest.mark.parametrize(
    "expression", ["0 * * * *", "*/7 3-5 * * 1-5", "0 0 L * *", "*/20 * * * * *"]
)
def test_going_on_from_the_last_tick_agrees_with_starting_over(expression: str) -> None:
    going_on, fresh = Cron(expression), Cron(expression)
    tick = T + 0.5
    for _ in range(50):
        following = going_on.after(tick)
        assert following is not None
        assert following == fresh.after(tick) == Cron(expression).after(tick)
        tick = following
    assert going_on.after(T) == Cron(expression).after(T)  # another moment starts over
