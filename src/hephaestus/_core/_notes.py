"""What a transition says happened (notes) and what it answers its caller (replies).

A :class:`~hephaestus._core._engine.Transition` carries, besides the new
instance and the commands, ``notes``: facts in the order they happened, for
telemetry and anyone else who must know what the core decided. The shell maps
them to events (``_runtime/_report.py``); it never re-derives a decision by
comparing snapshots. Notes are never stored, so their shape may change freely.

``reply`` is typed: a :class:`Delivery` for ``Deliver``, the timer id (str)
for ``ScheduleResume``, a bool for ``CancelTimer``, None for everything else.
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec

from ._model import Status


@enum.unique
class Delivery(enum.Enum):
    """How an instance took an outside event (the reply to ``Deliver``)."""

    DELIVERED = "delivered"
    """A suspended step took it and completed."""
    QUEUED = "queued"
    """It waits in the inbox for a step that can still suspend on it."""
    IGNORED = "ignored"
    """Its dedupe key was seen before: accepted, and nothing changed."""


class Via(enum.Enum):
    """How a step came to end with its event."""

    RETURNED = "returned"
    """Its code returned the event."""
    RESUMED = "resumed"
    """It was suspended and an outside event (``resume``) arrived."""
    INBOX = "inbox"
    """It suspended and took an event already waiting in the inbox."""
    TIMEOUT = "timeout"
    """It was suspended and its timer fired (``Suspend(timeout)``, ``schedule_resume``)."""
    CHILD = "child"
    """It was an ``hx.SubWorkflow`` step and its child instance ended."""


class StepEnded(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Attempt ``attempt`` of ``step`` completed with ``event``, ``via`` what."""

    step: str
    attempt: int
    event: str
    via: Via


class Suspended(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Attempt ``attempt`` of ``step`` suspended (``timeout``: seconds, None for none)."""

    step: str
    attempt: int
    timeout: float | None


class AttemptFailed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Attempt ``attempt`` of ``step`` failed; ``retry_at`` is the next attempt's deadline.

    ``event`` is set when the attempt reported an event that its step does
    not declare (then ``error_type`` is ``"UndeclaredEvent"``). ``retry_at``
    is None when the step failed for good.
    """

    step: str
    attempt: int
    error_type: str
    message: str
    event: str | None = None
    retry_at: float | None = None


class RetryArmed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Attempt ``attempt`` of ``step`` is due at ``deadline`` (epoch s): its backoff timer is armed.

    Noted when an attempt fails with retries left, and again when recovery
    re-arms a pending backoff timer.
    """

    step: str
    attempt: int
    deadline: float


class EventQueued(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """An outside event was kept in the inbox (``step``: the step it names, if any)."""

    event: str
    step: str | None


class EventDropped(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A queued inbox event was dropped: no step that can still run would ever take it."""

    event: str
    step: str | None
    dedupe_key: str | None


class TimerElapsed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The pending timer ``timer_id`` reached its deadline and was taken."""

    timer_id: str


class InstanceFinished(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The instance reached terminal ``status`` (``error_type``: why it failed, if it did)."""

    status: Status
    error_type: str | None = None


Note = (
    StepEnded
    | Suspended
    | AttemptFailed
    | RetryArmed
    | EventQueued
    | EventDropped
    | TimerElapsed
    | InstanceFinished
)

Reply = Delivery | str | bool | None
"""What :func:`~hephaestus._core._engine.apply` answers the caller of an input."""

DUPLICATE: Final = Delivery.IGNORED
"""The reply to an event whose dedupe key the instance has seen before."""
