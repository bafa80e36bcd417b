"""Helpers for testing workflows: virtual time, a one-call runner, hypothesis strategies.

Layout: ``_clock`` (VirtualClock), ``_stubs`` (step overrides), ``_crash``
(crash points), ``_run`` (run_workflow and friends), ``_strategies``
(hypothesis strategies), ``_invariants`` (assert_workflow_invariants),
``_plugin`` (the pytest fixtures, loaded through the ``pytest11`` entry point).

hypothesis is not a dependency of hephaestus: the names that need it
(``outcomes``, ``event_schedules``, ``crash_points``,
``assert_workflow_invariants``) are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._clock import VirtualClock as VirtualClock
from ._crash import CrashAt as CrashAt
from ._crash import CrashPoint as CrashPoint
from ._crash import CrashReport as CrashReport
from ._run import CANCEL as CANCEL
from ._run import EVENT_LAG as EVENT_LAG
from ._run import EventOutcome as EventOutcome
from ._run import ScheduledEvent as ScheduledEvent
from ._run import WorkflowRun as WorkflowRun
from ._run import WorkflowStuck as WorkflowStuck
from ._run import run_workflow as run_workflow
from ._run import run_workflow_async as run_workflow_async
from ._run import trace_workflow as trace_workflow
from ._run import trace_workflow_async as trace_workflow_async
from ._stubs import SimulatedFailure as SimulatedFailure
from ._stubs import StepOverride as StepOverride
from ._stubs import with_overrides as with_overrides

if TYPE_CHECKING:
    from ._invariants import assert_workflow_invariants as assert_workflow_invariants
    from ._strategies import crash_points as crash_points
    from ._strategies import event_schedules as event_schedules
    from ._strategies import outcomes as outcomes
    from ._strategies import resumable_events as resumable_events

__all__ = [
    # virtual time and running
    "VirtualClock",
    "run_workflow",
    "run_workflow_async",
    "trace_workflow",
    "trace_workflow_async",
    "WorkflowRun",
    "EventOutcome",
    "WorkflowStuck",
    "CANCEL",
    "EVENT_LAG",
    # stubs and crashes
    "with_overrides",
    "SimulatedFailure",
    "CrashPoint",
    "CrashReport",
    # type aliases of the arguments
    "ScheduledEvent",
    "StepOverride",
    "CrashAt",
    # hypothesis
    "outcomes",
    "event_schedules",
    "crash_points",
    "resumable_events",
    "assert_workflow_invariants",
]

_LAZY = {
    "outcomes": "_strategies",
    "event_schedules": "_strategies",
    "crash_points": "_strategies",
    "resumable_events": "_strategies",
    "assert_workflow_invariants": "_invariants",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    try:
        found = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    except ModuleNotFoundError as exc:
        if exc.name != "hypothesis":
            raise
        raise ImportError(
            f"hephaestus.testing.{name} needs hypothesis: pip install hypothesis "
            "(or hephaestus-trio[test])"
        ) from exc
    globals()[name] = found
    return found
