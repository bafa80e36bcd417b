"""Hypothesis strategies: step outcomes, event schedules and crash points for a workflow."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, Literal

from hypothesis import strategies as st

from .._core._steps import TIMEOUT_EVENT, Emit, Step
from .._core._workflow import Workflow
from ._crash import CrashPoint
from ._run import CANCEL, ScheduledEvent
from ._stubs import SimulatedFailure, StepOverride

_KEEP: Final = object()  # "run the step's own code": left out of the overrides dict


def _steps(workflow: Workflow, steps: Collection[str] | None) -> list[Step]:
    if steps is None:
        return [workflow.steps[key] for key in workflow.topo_order]
    unknown = sorted(set(steps) - set(workflow.steps))
    if unknown:
        raise ValueError(
            f"workflow {workflow.name!r} has no steps {unknown!r} (steps: {list(workflow.steps)!r})"
        )
    return [workflow.steps[key] for key in workflow.topo_order if key in steps]


def outcomes(
    workflow: Workflow,
    *,
    steps: Collection[str] | None = None,
    failures: bool | Literal["transient"] = True,
    unchanged: bool = True,
    results: Mapping[str, st.SearchStrategy[dict[str, Any]]] | None = None,
) -> st.SearchStrategy[dict[str, StepOverride]]:
    """Draw ``step_overrides``: for each step, one of its declared events, or a failure.

    Args:
        steps: the step keys to vary (default: every step).
        failures: True to also draw failures: ``SimulatedFailure`` on every
            attempt, and, for a step with a retry policy, a few failed attempts
            before an event; ``"transient"`` for only the latter (the step
            always ends with an event within its retry budget); False for none.
        unchanged: also draw "keep the step's own code" (the step is then left
            out of the dict). Examples shrink towards it.
        results: step key -> strategy for the results dict the step emits
            with its event (``hx.Emit(event, results)``); default none.

    The dict maps step keys to stubs for ``run_workflow(step_overrides=...)``.
    """
    chosen = _steps(workflow, steps)
    per_step: dict[str, st.SearchStrategy[Any]] = {}
    for step in chosen:
        event: st.SearchStrategy[Any] = st.sampled_from(step.events)
        produce = (results or {}).get(step.key)
        if produce is not None:
            event = st.builds(Emit, event, produce)
        options: list[st.SearchStrategy[Any]] = [st.just(_KEEP)] if unchanged else []
        options.append(event)
        if failures is True:
            options.append(st.builds(SimulatedFailure, st.just(step.key)))
        retries = step.retry.max_attempts - 1 if step.retry is not None else 0
        if failures and retries > 0:
            options.append(st.tuples(st.integers(1, retries), event).map(_transient(step.key)))
        per_step[step.key] = st.one_of(options)
    return st.fixed_dictionaries(per_step).map(
        lambda drawn: {key: value for key, value in drawn.items() if value is not _KEEP}
    )


def _transient(key: str) -> Callable[[tuple[int, Any]], list[Any]]:
    """Return a function turning (failures, outcome) into that many failures, then the outcome."""

    def plan(drawn: tuple[int, Any]) -> list[Any]:
        return [*(SimulatedFailure(key) for _ in range(drawn[0])), drawn[1]]

    return plan


def resumable_events(workflow: Workflow) -> list[str]:
    """Return the events that steps which suspend can be resumed with (not ``"timeout"``).

    A step counts as suspending when it is an ``hx.WaitForEvent`` or declares
    ``"timeout"`` (a step suspending with a timeout must).
    """
    found: list[str] = []
    for key in workflow.topo_order:
        step = workflow.steps[key]
        waits = getattr(step.fn, "__qualname__", "").startswith("WaitForEvent.")
        if waits or TIMEOUT_EVENT in step.events:
            found.extend(e for e in step.events if e != TIMEOUT_EVENT and e not in found)
    return found


def event_schedules(
    workflow: Workflow,
    *,
    events: Collection[str] | None = None,
    payloads: Mapping[str, st.SearchStrategy[dict[str, Any] | None]] | None = None,
    max_delay: int = 86_400,
    max_size: int = 3,
    cancel: bool = False,
) -> st.SearchStrategy[list[ScheduledEvent]]:
    """Draw ``events=`` schedules: ``(delay, event, payload)`` lists sorted by delay.

    Args:
        events: the events to send (default: :func:`resumable_events`, the
            events declared by ``hx.WaitForEvent`` steps and by steps that
            declare ``"timeout"``).
        payloads: event -> strategy for its payload (default: None).
        max_delay: the latest delay in (virtual) seconds after the start.
        max_size: at most this many events (repeats included: a webhook can
            arrive twice).
        cancel: also draw ``(delay, CANCEL, None)``: the instance is cancelled then.

    Delays are whole seconds (half of them drawn within the first minute), so
    examples shrink to readable schedules.
    """
    names = list(resumable_events(workflow) if events is None else events)
    declared = {e for step in workflow.steps.values() for e in step.events}
    unknown = sorted(set(names) - declared)
    if unknown:
        raise ValueError(f"no step of workflow {workflow.name!r} declares {unknown!r}")
    if cancel:
        names.append(CANCEL)
    if not names:
        return st.just([])
    payload_for = dict(payloads or {})
    # Half the draws come in the first minute, where most interesting races are.
    delays = st.integers(0, min(60, max_delay)) | st.integers(0, max_delay)

    item = st.one_of(
        [st.tuples(delays, st.just(event), payload_for.get(event, st.none())) for event in names]
    )
    drawn = st.lists(item, max_size=max_size)
    return drawn.map(lambda schedule: sorted(schedule, key=lambda entry: entry[0]))


def crash_points(
    workflow: Workflow | None = None, *, max_write: int = 12, max_downtime: int = 0
) -> st.SearchStrategy[CrashPoint | None]:
    """Draw where to crash and recover: None (no crash), or a :class:`CrashPoint`.

    Args:
        workflow: draw ``CrashPoint(step=key)`` for its steps (lose the write
            that records the step's outcome or suspension). Such a point stays
            put when other parts of the example change, so examples shrink well.
            Without it, draw ``CrashPoint(write=n)``.
        max_write: the latest ``CrashPoint(write=n)`` to draw; a point past the
            run's last write means no crash.
        max_downtime: up to this many virtual seconds between the crash and the
            recovery (default 0: the engine comes straight back).
    """
    downtime: st.SearchStrategy[int] = (
        st.integers(0, max_downtime) if max_downtime > 0 else st.just(0)
    )
    if workflow is not None:
        point = st.builds(CrashPoint, step=st.sampled_from(workflow.topo_order), downtime=downtime)
    else:
        point = st.builds(CrashPoint, write=st.integers(1, max_write), downtime=downtime)
    return st.none() | point
