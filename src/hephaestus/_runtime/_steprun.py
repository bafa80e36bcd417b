"""Running one step attempt and turning whatever happened into an engine input."""

from __future__ import annotations

from typing import Any

import trio

from .._core._codec import check_serialisable
from .._core._engine import StepFailed, StepSucceeded, StepSuspended
from .._core._errors import InvalidResult, StepTimeout
from .._core._steps import Emit, Step, StepContext, Suspend


async def run_attempt(step: Step, ctx: StepContext) -> StepSucceeded | StepFailed | StepSuspended:
    """Run one attempt of ``step`` and report its outcome; never raises for step errors.

    Async steps are awaited here; plain functions run in a worker thread. An
    attempt that exceeds ``step.timeout`` fails with :class:`StepTimeout`.
    Cancellation from outside propagates as usual.
    """
    try:
        if step.timeout is None:
            return outcome(ctx, await _call(step, ctx))
        with trio.move_on_after(step.timeout):
            return outcome(ctx, await _call(step, ctx))
        return _failed(
            ctx,
            StepTimeout(
                f"step {ctx.step!r} attempt {ctx.attempt} exceeded its timeout of {step.timeout} s"
            ),
        )
    except Exception as exc:  # step code failed: an ordinary step failure
        return _failed(ctx, exc)


async def _call(step: Step, ctx: StepContext) -> Any:
    if step.is_async:
        return await step.fn(ctx)  # type: ignore[misc]
    return await trio.to_thread.run_sync(step.fn, ctx, abandon_on_cancel=True)


def outcome(ctx: StepContext, result: object) -> StepSucceeded | StepFailed | StepSuspended:
    """Return the engine input for a step that returned ``result``."""
    if isinstance(result, str):
        return StepSucceeded(ctx.step, ctx.attempt, result)
    if isinstance(result, Emit):
        try:
            check_serialisable(result.results, f"results of step {ctx.step!r}")
            check_serialisable(result.metadata, f"metadata of step {ctx.step!r}")
        except InvalidResult as exc:
            return _failed(ctx, exc)
        return StepSucceeded(ctx.step, ctx.attempt, result.event, result.results, result.metadata)
    if isinstance(result, Suspend):
        return StepSuspended(ctx.step, ctx.attempt, result.timeout)
    return _failed(
        ctx,
        InvalidResult(
            f"step {ctx.step!r} returned {result!r}; return an event name (str), "
            "hx.Emit(...) or hx.Suspend(...)"
        ),
    )


def _failed(ctx: StepContext, exc: BaseException) -> StepFailed:
    return StepFailed(ctx.step, ctx.attempt, type(exc).__name__, str(exc) or repr(exc))
