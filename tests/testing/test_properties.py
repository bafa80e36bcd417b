"""The strategies, and the property a user writes with them in ten lines.

"Whatever the payment provider answers and whenever the webhook arrives (or
the customer cancels), every order ends COMPLETED or CANCELLED and is never
charged twice." It holds for ``order``; for ``broken_order`` hypothesis finds
the crash that double-charges and shrinks it to a readable example.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import hephaestus as hx
from hephaestus.testing import (
    CANCEL,
    CrashPoint,
    SimulatedFailure,
    crash_points,
    event_schedules,
    outcomes,
    resumable_events,
    run_workflow,
)

from .workflows import PROVIDER, broken_order, order, warehouse

# --- the ten lines ----------------------------------------------------------------------------


@given(
    answers=outcomes(order, steps=["request_payment"], failures="transient"),
    webhooks=event_schedules(order, max_delay=7200, cancel=True),
    crash=crash_points(order),
)
def test_every_order_completes_or_is_cancelled_and_is_charged_at_most_once(
    answers: Any, webhooks: Any, crash: Any
) -> None:
    PROVIDER.reset()
    final = run_workflow(
        order, "o1", {"amount": 30}, events=webhooks, step_overrides=answers, crash_at=crash
    )
    assert final.status in (hx.Status.COMPLETED, hx.Status.CANCELLED)
    assert PROVIDER.times_charged(final.id) == (1 if "charge" in final.completed else 0)


# --- the same property finds the bug in broken_order ------------------------------------------


def test_the_property_catches_the_double_charge_and_shrinks_it() -> None:
    # derandomize: the same examples on every run; no "explain" phase: it re-runs the
    # failing example under a tracer, slowly, to annotate it.
    @settings(
        max_examples=400,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        phases=[Phase.generate, Phase.shrink],
    )
    @given(
        answers=outcomes(broken_order, steps=["request_payment"], failures="transient"),
        webhooks=event_schedules(broken_order, max_delay=7200, cancel=True),
        crash=crash_points(broken_order),
    )
    def user_property(answers: Any, webhooks: Any, crash: Any) -> None:
        PROVIDER.reset()
        final = run_workflow(
            broken_order,
            "o1",
            {"amount": 30},
            events=webhooks,
            step_overrides=answers,
            crash_at=crash,
        )
        assert final.status in (hx.Status.COMPLETED, hx.Status.CANCELLED)
        assert PROVIDER.times_charged(final.id) == (1 if "charge" in final.completed else 0)

    with pytest.raises(AssertionError) as info:
        user_property()
    example = "\n".join(getattr(info.value, "__notes__", []))
    print(example)  # shown with pytest -s: the shrunk counterexample
    # shrunk: the provider's real code, one webhook at second 0, the crash that loses the charge
    assert "answers={}" in example
    assert "webhooks=[(0, 'paid', None)]" in example
    assert "crash=CrashPoint(step='charge')" in example
    assert "assert 2 == 1" in str(info.value)


# --- the strategies ---------------------------------------------------------------------------


@settings(max_examples=40)
@given(drawn=outcomes(order))
def test_outcomes_are_declared_events_or_failures(drawn: dict[str, Any]) -> None:
    for key, outcome in drawn.items():
        step = order.steps[key]
        plan = outcome if isinstance(outcome, list) else [outcome]
        for item in plan[:-1]:
            assert isinstance(item, SimulatedFailure)
        last = plan[-1]
        assert last in step.events or isinstance(last, SimulatedFailure)
        if isinstance(outcome, list):
            assert step.retry is not None
            assert len(plan) <= step.retry.max_attempts


@settings(max_examples=30)
@given(
    drawn=outcomes(
        order,
        steps=["request_payment", "charge"],
        failures=False,
        unchanged=False,
        results={"charge": st.just({"charge_id": "x"})},
    )
)
def test_outcomes_can_be_narrowed(drawn: dict[str, Any]) -> None:
    assert set(drawn) == {"request_payment", "charge"}
    assert drawn["request_payment"] in ("approved", "declined")
    assert drawn["charge"] == hx.Emit("charged", {"charge_id": "x"})


@settings(max_examples=30)
@given(drawn=outcomes(order, steps=["request_payment"], failures="transient", unchanged=False))
def test_transient_failures_always_end_with_an_event(drawn: dict[str, Any]) -> None:
    plan = drawn["request_payment"]
    last = plan[-1] if isinstance(plan, list) else plan
    assert last in ("approved", "declined")


@settings(max_examples=40)
@given(
    schedule=event_schedules(
        order,
        max_delay=100,
        max_size=4,
        cancel=True,
        payloads={"paid": st.fixed_dictionaries({"n": st.integers()})},
    )
)
def test_event_schedules(schedule: list[Any]) -> None:
    assert len(schedule) <= 4
    assert [delay for delay, _, _ in schedule] == sorted(delay for delay, _, _ in schedule)
    for delay, event, payload in schedule:
        assert 0 <= delay <= 100
        assert event in ("paid", CANCEL)
        assert (payload is None) if event == CANCEL else set(payload) == {"n"}


def test_resumable_events_come_from_suspending_steps() -> None:
    assert resumable_events(order) == ["paid"]
    assert resumable_events(warehouse) == []  # a Wait declares only "timeout"
    with pytest.raises(ValueError, match="declares"):
        event_schedules(order, events=["nope"])
    with pytest.raises(ValueError, match="no steps"):
        outcomes(order, steps=["nope"])


@settings(max_examples=30)
@given(point=crash_points(order, max_write=5, max_downtime=60))
def test_crash_points(point: CrashPoint | None) -> None:
    if point is not None:
        assert (1 <= point.write <= 5) if point.write is not None else point.step in order.steps
        assert 0 <= point.downtime <= 60


# --- more properties on the example workflows -------------------------------------------------


@settings(max_examples=30)
@given(drawn=outcomes(warehouse), items=st.integers(1, 30), crash=crash_points(max_write=10))
def test_the_warehouse_always_terminates(drawn: Any, items: int, crash: Any) -> None:
    final = run_workflow(warehouse, "s1", {"items": items}, step_overrides=drawn, crash_at=crash)
    assert final.status.is_terminal
    failed = [key for key, value in drawn.items() if isinstance(value, SimulatedFailure)]
    if not failed:
        assert final.status is hx.Status.COMPLETED
        assert "close" in final.completed
