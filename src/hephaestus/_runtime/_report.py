"""Telemetry for one transition: a table from the core's notes to events.

The core says what happened (``Transition.notes``, see ``_core/_notes.py``);
this module only names it. Nothing here compares snapshots or re-derives a
decision. The order is the core's: the notes of the input (a step ended,
suspended or failed; an event queued or dropped; a timer fired), then
``workflow.transition`` if the instance changed, then what follows from it
(``step.retry`` for an armed backoff timer, ``workflow.stop`` /
``workflow.exception`` / ``workflow.cancel`` for a finished instance).
"""

from __future__ import annotations

from typing import Final, final

import trio

from .._core._engine import Input, RunStep, Transition
from .._core._model import Instance, Status
from .._core._notes import (
    AttemptFailed,
    EventDropped,
    EventQueued,
    InstanceFinished,
    Note,
    RetryArmed,
    StepEnded,
    Suspended,
    TimerElapsed,
    Via,
)
from .._core._workflow import Workflow
from .._telemetry import Telemetry

FINISHED_EVENTS: Final = {
    Status.COMPLETED: "workflow.stop",
    Status.FAILED: "workflow.exception",
    Status.CANCELLED: "workflow.cancel",
}
"""The telemetry event for each terminal status."""


def report(
    telemetry: Telemetry,
    workflow: Workflow,
    event: Input,
    transition: Transition,
    *,
    started: dict[str, float],
) -> None:
    """Emit the telemetry events that ``transition`` (the result of ``event``) stands for.

    ``started`` maps each running step to the ``trio.current_time()`` its
    attempt started at; an entry is taken out when the attempt ends, to
    measure its ``duration``. Never raises because of a handler (see
    :meth:`Telemetry.emit`).
    """
    out = _Out(telemetry, workflow, transition.instance, started)
    notes = transition.notes
    for note in notes:
        out.note(note)
    instance = transition.instance
    if transition.changed:
        out.emit(
            "workflow.transition",
            metadata={
                "input": type(event).__name__,
                "status": instance.status.value,
                "revision": instance.revision,
                "targets": [c.step for c in transition.commands if isinstance(c, RunStep)],
            },
        )
    for note in notes:
        match note:
            case RetryArmed(step=step, attempt=attempt, deadline=deadline):
                out.emit("step.retry", step, metadata={"deadline": deadline, "attempt": attempt})
            case InstanceFinished(status=status, error_type=error_type):
                out.emit(
                    FINISHED_EVENTS[status],
                    measurements={"duration": instance.updated_at - instance.created_at},
                    metadata={"status": status.value, "error": error_type},
                )


@final
class _Out:
    """Emits the events of one transition's instance."""

    __slots__ = ("instance", "started", "telemetry", "workflow")

    def __init__(
        self,
        telemetry: Telemetry,
        workflow: Workflow,
        instance: Instance,
        started: dict[str, float],
    ) -> None:
        self.telemetry = telemetry
        self.workflow = workflow
        self.instance = instance
        self.started = started

    def emit(
        self,
        name: str,
        step: str | None = None,
        measurements: dict[str, float] | None = None,
        metadata: dict[str, object] | None = None,
    ) -> None:
        workflow = self.workflow
        self.telemetry.emit(
            name,
            instance_id=self.instance.id,
            workflow=workflow.name,
            step=step,
            measurements=measurements,
            metadata={"version": workflow.version, **(metadata or {})},
        )

    def duration(self, step: str) -> dict[str, float]:
        began = self.started.pop(step, None)
        return {} if began is None else {"duration": trio.current_time() - began}

    def note(self, note: Note) -> None:
        """Emit the events of one note that precede ``workflow.transition``."""
        emit, duration = self.emit, self.duration
        match note:
            case StepEnded(step=step, attempt=attempt, event=event, via=Via.RETURNED):
                emit("step.stop", step, duration(step), {"event": event, "attempt": attempt})
            case StepEnded(step=step, event=event, via=Via.RESUMED | Via.INBOX):
                emit("step.resume", step, metadata={"event": event})
                emit("step.stop", step, metadata={"event": event})
            case StepEnded(step=step, event=event, via=Via.TIMEOUT | Via.CHILD):
                emit("step.stop", step, metadata={"event": event})
            case Suspended(step=step, attempt=attempt, timeout=timeout):
                emit("step.suspend", step, duration(step), {"attempt": attempt, "timeout": timeout})
            case AttemptFailed(step=step, attempt=attempt, event=str() as event):
                emit("step.exception", step, duration(step), {"event": event, "attempt": attempt})
            case AttemptFailed(step=step, attempt=attempt, error_type=error, message=message):
                metadata = {"attempt": attempt, "error": error, "message": message}
                emit("step.exception", step, duration(step), metadata)
            case EventQueued(event=event, step=step):
                emit("step.resume", step, metadata={"event": event, "queued": True})
            case EventDropped(event=event, step=step, dedupe_key=dedupe_key):
                emit("event.drop", step, metadata={"event": event, "dedupe_key": dedupe_key})
            case TimerElapsed(timer_id=timer_id):
                emit("timer.fire", metadata={"timer": timer_id})
