"""What a terminal instance answers to each input: the one place that rule is written.

A completed, failed or cancelled instance changes no more (re-opening a failed
one is a transition of its own). Its answers need no workflow definition, so
the runtime uses them too for instances whose workflow is not registered.
"""

from __future__ import annotations

from typing import Final

from ._engine import (
    Cancel,
    CancelTimer,
    ChildFinished,
    ChildRequested,
    ChildStartFailed,
    Deliver,
    Recover,
    ScheduleResume,
    Start,
    StepFailed,
    StepSucceeded,
    StepSuspended,
    TimerFired,
)
from ._errors import EventRejected
from ._model import Instance, Status
from ._notes import DUPLICATE, Reply

TERMINAL_INPUTS: Final = (
    Start,
    Recover,
    StepSucceeded,
    StepFailed,
    StepSuspended,
    TimerFired,
    Deliver,
    ScheduleResume,
    CancelTimer,
    Cancel,
    ChildRequested,
    ChildFinished,
    ChildStartFailed,
)
"""The inputs :func:`answer_terminal` answers; any other input is the engine's to apply."""


def answer_terminal(instance: Instance, event: object) -> Reply:
    """Return the reply of terminal ``instance`` to ``event``; the instance never changes.

    - a ``Deliver`` whose dedupe key was seen before: ``Delivery.IGNORED`` (a webhook
      retried after the instance finished gets no error);
    - ``CancelTimer``: False (a terminal instance has no timers);
    - ``Cancel`` of a cancelled instance: None (cancelling is idempotent);
    - reports of steps, timers and children that were still under way: None (ignored).

    Raises:
        EventRejected: for any other ``Deliver``, a ``ScheduleResume``, and a
            ``Cancel`` of a completed or failed instance.
    """
    status = instance.status
    where = f"instance {instance.id!r}: it is {status.value}"
    match event:
        case Deliver():
            if event.dedupe_key is not None and event.dedupe_key in instance.dedupe_keys:
                return DUPLICATE
            raise EventRejected(
                f"{where} and accepts no more events (event {event.event!r} not delivered)"
            )
        case ScheduleResume():
            raise EventRejected(f"{where}; no timer can be scheduled")
        case CancelTimer():
            return False
        case Cancel():
            if status is Status.CANCELLED:
                return None
            raise EventRejected(f"{where}; only an active instance can be cancelled")
    return None
