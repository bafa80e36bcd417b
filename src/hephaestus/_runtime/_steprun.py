"""Running one step attempt and turning whatever happened into an engine input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from .._core._engine import ChildRequested, StepFailed, StepSucceeded, StepSuspended
from .._core._errors import StepTimeout
from .._core._outcome import failed, outcome
from .._core._steps import Step, StepContext

if TYPE_CHECKING:
    from ._limiters import ThreadToken

# Exceptions that stop more than the step: trio's cancellation, and the interpreter
# being asked to stop. Everything else a step raises is that step's failure.
_PROPAGATE = (trio.Cancelled, KeyboardInterrupt, SystemExit)


async def run_attempt(
    step: Step, ctx: StepContext, thread_token: ThreadToken | None = None
) -> StepSucceeded | StepFailed | StepSuspended | ChildRequested:
    """Run one attempt of ``step`` and report its outcome; never raises for step errors.

    Async steps are awaited here; plain functions run in a worker thread, which
    takes ``thread_token`` (the step's limiter token, see :mod:`._limiters`)
    when one is given, to give it back when the thread ends. What
    the step returns is classified by the core (:func:`outcome`). Any exception
    from step code, ``BaseException`` subclasses included, fails the attempt;
    an attempt that exceeds ``step.timeout`` fails with :class:`StepTimeout`.

    Raises:
        trio.Cancelled: cancellation from outside propagates as usual.
        KeyboardInterrupt, SystemExit: raised by step code (alone or in an
            exception group), they stop the engine; nothing about the attempt
            is stored, so the next ``open_engine`` runs it again.
    """
    try:
        if step.timeout is None:
            if step.is_async:  # the common case, one frame less
                return outcome(step, ctx.attempt, await step.fn(ctx))  # type: ignore[misc]
            return outcome(step, ctx.attempt, await _call(step, ctx, thread_token))
        with trio.move_on_after(step.timeout):
            return outcome(step, ctx.attempt, await _call(step, ctx, thread_token))
        return failed(
            step,
            ctx.attempt,
            StepTimeout(
                f"step {ctx.step!r} attempt {ctx.attempt} exceeded its timeout of {step.timeout} s"
            ),
        )
    except BaseException as exc:  # step code failed: an ordinary step failure
        if must_propagate(exc):
            raise
        return failed(step, ctx.attempt, exc)


def must_propagate(exc: BaseException) -> bool:
    """Whether ``exc`` (raised by step code) stops more than the step: see ``_PROPAGATE``."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(_PROPAGATE) is not None
    return isinstance(exc, _PROPAGATE)


async def _call(step: Step, ctx: StepContext, thread_token: ThreadToken | None) -> Any:
    if step.is_async:
        return await step.fn(ctx)  # type: ignore[misc]
    return await trio.to_thread.run_sync(
        step.fn,
        ctx,
        abandon_on_cancel=True,
        limiter=thread_token,  # type: ignore[arg-type]  # duck-typed: see ThreadToken
    )
