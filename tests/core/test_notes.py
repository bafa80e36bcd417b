"""The core says what happened: each transition's notes, and its typed reply."""

from __future__ import annotations

import hephaestus as hx
from hephaestus._core._engine import (
    Cancel,
    CancelTimer,
    Deliver,
    Recover,
    ScheduleResume,
    Start,
    StepFailed,
    StepSucceeded,
    StepSuspended,
    TimerFired,
)
from hephaestus._core._notes import (
    AttemptFailed,
    Delivery,
    EventDropped,
    EventQueued,
    InstanceFinished,
    RetryArmed,
    StepEnded,
    Suspended,
    TimerElapsed,
    Via,
)

from .helpers import Driver, mk, workflow


def linear() -> Driver:
    a, wait, b = mk("a"), mk("wait", "approved", "timeout"), mk("b")
    return Driver(
        workflow(
            a, {(a, "ok"): wait, (wait, "approved"): b, (wait, "timeout"): b, (b, "ok"): hx.Done}
        )
    )


def test_a_step_returning_its_event_is_noted_and_the_last_one_finishes_the_instance() -> None:
    a, b = mk("a"), mk("b")
    run = Driver(workflow(a, {(a, "ok"): b, (b, "ok"): hx.Done}))
    assert run(Start()).notes == ()
    t = run(StepSucceeded(step="a", attempt=1, event="ok"))
    assert t.notes == (StepEnded(step="a", attempt=1, event="ok", via=Via.RETURNED),)
    t = run(StepSucceeded(step="b", attempt=1, event="ok"))
    assert t.notes == (
        StepEnded(step="b", attempt=1, event="ok", via=Via.RETURNED),
        InstanceFinished(status=hx.Status.COMPLETED, error_type=None),
    )
    assert t.reply is None


def test_an_undeclared_event_is_a_failed_attempt_that_names_the_event() -> None:
    a = mk("a")
    run = Driver(workflow(a, {(a, "ok"): hx.Done}))
    run(Start())
    t = run(StepSucceeded(step="a", attempt=1, event="nope"))
    failed, finished = t.notes
    assert isinstance(failed, AttemptFailed)
    assert (failed.step, failed.attempt, failed.event, failed.retry_at) == ("a", 1, "nope", None)
    assert failed.error_type == "UndeclaredEvent"
    assert finished == InstanceFinished(status=hx.Status.FAILED, error_type="UndeclaredEvent")


def test_a_failed_attempt_with_retries_left_notes_when_the_next_one_is_due() -> None:
    a = mk("a", retry=hx.Retry(max_attempts=3, initial=2.0))
    run = Driver(workflow(a, {(a, "ok"): hx.Done}))
    run(Start())
    t = run(StepFailed(step="a", attempt=1, error_type="ValueError", message="boom"))
    deadline = run.instance.timers[0].deadline
    assert t.notes == (
        AttemptFailed(
            step="a", attempt=1, error_type="ValueError", message="boom", retry_at=deadline
        ),
        RetryArmed(step="a", attempt=2, deadline=deadline),
    )
    # Recovery re-arms the backoff timer and says so again.
    assert run(Recover()).notes == (RetryArmed(step="a", attempt=2, deadline=deadline),)
    timer_id = run.instance.timers[0].id
    assert run(TimerFired(timer_id=timer_id)).notes == (TimerElapsed(timer_id=timer_id),)


def test_suspending_resuming_and_timing_out_are_noted_with_how_the_step_ended() -> None:
    run = linear()
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    t = run(StepSuspended(step="wait", attempt=1, timeout=5.0))
    assert t.notes == (Suspended(step="wait", attempt=1, timeout=5.0),)
    t = run(Deliver(event="approved"))
    assert t.reply is Delivery.DELIVERED
    assert t.notes == (StepEnded(step="wait", attempt=1, event="approved", via=Via.RESUMED),)

    run = linear()
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    run(StepSuspended(step="wait", attempt=1, timeout=5.0))
    timer_id = run.instance.timers[0].id
    t = run(TimerFired(timer_id=timer_id))
    assert t.notes == (
        TimerElapsed(timer_id=timer_id),
        StepEnded(step="wait", attempt=1, event="timeout", via=Via.TIMEOUT),
    )


def test_an_early_event_is_queued_then_taken_from_the_inbox_when_the_step_suspends() -> None:
    run = linear()
    run(Start())
    t = run(Deliver(event="approved", step="wait"))
    assert t.reply is Delivery.QUEUED
    assert t.notes == (EventQueued(event="approved", step="wait"),)
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    t = run(StepSuspended(step="wait", attempt=1, timeout=None))
    assert t.notes == (
        Suspended(step="wait", attempt=1, timeout=None),
        StepEnded(step="wait", attempt=1, event="approved", via=Via.INBOX),
    )


def test_replies_are_typed() -> None:
    run = linear()
    run(Start())
    assert run(Deliver(event="approved", dedupe_key="k")).reply is Delivery.QUEUED
    assert run(Deliver(event="approved", dedupe_key="k")).reply is Delivery.IGNORED
    timer_id = run(ScheduleResume(step="wait", delay=5.0)).reply
    assert isinstance(timer_id, str)
    assert run(CancelTimer(timer_id=timer_id)).reply is True
    assert run(CancelTimer(timer_id=timer_id)).reply is False
    t = run(Cancel(reason="test"))
    assert t.notes == (
        EventDropped(event="approved", step=None, dedupe_key="k"),  # nobody takes it now
        InstanceFinished(status=hx.Status.CANCELLED, error_type=None),
    )
    # A terminal instance still recognises a repeated dedupe key.
    assert run(Deliver(event="approved", dedupe_key="k")).reply is Delivery.IGNORED
