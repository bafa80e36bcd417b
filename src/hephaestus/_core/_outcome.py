"""What a step's return value means: the engine input for one finished attempt.

Pure and total: whatever step code returns, :func:`outcome` answers with an
input for :func:`~hephaestus._core._engine.apply`, never an exception. A value
that is not a valid step result fails the attempt with an error naming the
step, so bad step output is a step failure (retried under the step's policy),
never a runner crash.
"""

from __future__ import annotations

from typing import Any

from ._codec import check_serialisable, detached_copy
from ._engine import ChildRequested, StepFailed, StepSucceeded, StepSuspended
from ._errors import InvalidResult, UndeclaredEvent
from ._seconds import seconds_problem
from ._steps import TIMEOUT_EVENT, Emit, Step, Suspend
from ._subworkflow import ChildRequest, child_spec

Outcome = StepSucceeded | StepFailed | StepSuspended | ChildRequested


def outcome(step: Step, attempt: int, result: object) -> Outcome:
    """Return the engine input for attempt ``attempt`` of ``step`` that returned ``result``.

    - ``str``: the event; it must be one the step declares.
    - ``hx.Emit``: a declared event plus results and metadata, each None or a
      msgpack-serialisable dict with str keys. Both are copied here, so step
      code that keeps and mutates them later changes nothing stored.
    - ``hx.Suspend``: ``timeout`` must be None or a finite number of seconds
      >= 0, and a timeout needs ``"timeout"`` among the step's events.

    Anything else, or any of the above with a bad part, is a :class:`StepFailed`
    whose message names the step and says what to return instead.
    """
    if isinstance(result, str):
        if result in step.events:  # the common case, without a call
            return StepSucceeded(step=step.key, attempt=attempt, event=result)
        problem = _undeclared(step, result)
        assert problem is not None
        return failed(step, attempt, problem)
    if isinstance(result, Emit):
        return _emitted(step, attempt, result)
    if isinstance(result, Suspend):
        return _suspended(step, attempt, result)
    if isinstance(result, ChildRequest) and child_spec(step) is not None:
        return ChildRequested(
            step=step.key, attempt=attempt, value=result.value, initial=result.initial
        )
    return failed(
        step,
        attempt,
        InvalidResult(
            f"step {step.key!r} returned {_short(result)}; return an event name (str), "
            "hx.Emit(...) or hx.Suspend(...)"
        ),
    )


def failed(step: Step, attempt: int, exc: BaseException) -> StepFailed:
    """Return the input saying that attempt ``attempt`` of ``step`` failed with ``exc``."""
    try:
        message = str(exc) or repr(exc)
    except Exception:  # a broken __str__ in user code must not lose the failure
        message = f"<{type(exc).__name__} whose message cannot be shown>"
    return StepFailed(
        step=step.key, attempt=attempt, error_type=type(exc).__name__, message=message
    )


def _emitted(step: Step, attempt: int, result: Emit) -> Outcome:
    event: Any = result.event
    if not isinstance(event, str):
        return failed(
            step,
            attempt,
            InvalidResult(
                f"step {step.key!r} returned hx.Emit with event {_short(event)}; "
                "the event must be a str the step declares"
            ),
        )
    problem = _undeclared(step, event)
    if problem is not None:
        return failed(step, attempt, problem)
    try:
        check_serialisable(result.results, f"results of step {step.key!r}")
        check_serialisable(result.metadata, f"metadata of step {step.key!r}")
    except InvalidResult as exc:
        return failed(step, attempt, exc)
    results = None if result.results is None else detached_copy(result.results)
    metadata = None if result.metadata is None else detached_copy(result.metadata)
    return StepSucceeded(
        step=step.key, attempt=attempt, event=event, results=results, metadata=metadata
    )


def _suspended(step: Step, attempt: int, result: Suspend) -> Outcome:
    timeout: Any = result.timeout
    if timeout is None:
        return StepSuspended(step=step.key, attempt=attempt, timeout=None)
    problem = seconds_problem(timeout, f"hx.Suspend timeout of step {step.key!r}")
    if problem is not None:
        return failed(step, attempt, InvalidResult(f"{problem} (or None to wait without one)"))
    if TIMEOUT_EVENT not in step.events:
        return failed(
            step,
            attempt,
            UndeclaredEvent(
                f"step {step.key!r} suspended with a timeout but does not declare "
                f"{TIMEOUT_EVENT!r}: add it to events=..."
            ),
        )
    return StepSuspended(step=step.key, attempt=attempt, timeout=float(timeout))


def _undeclared(step: Step, event: str) -> UndeclaredEvent | None:
    if event in step.events:
        return None
    return UndeclaredEvent(
        f"step {step.key!r} ended with event {_short(event)}, which it does not declare "
        f"(declared: {list(step.events)!r})"
    )


def _short(value: object) -> str:
    """``repr(value)``, cut short: the message must stay readable whatever came back."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ in user code
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 200 else f"{text[:200]}..."
