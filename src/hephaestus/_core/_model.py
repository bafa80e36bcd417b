"""The instance model: frozen msgspec records that make up a persisted snapshot."""

from __future__ import annotations

import enum
from typing import Any, Final, Literal, TypeAlias

import msgspec

FORMAT_VERSION: Final = 1
"""Version of the snapshot schema. New fields get defaults; tags are never renamed."""


class Status(str, enum.Enum):
    """Where an instance is in its life. Derived from its state, never set by hand."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, FAILED and CANCELLED: nothing more will happen."""
        return self in TERMINAL

    def __str__(self) -> str:
        return self.value


TERMINAL: Final = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
"""The terminal statuses (``Status.is_terminal``), for hot loops that test membership."""

TimerKind: TypeAlias = Literal["timeout", "resume", "retry"]


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One finished attempt: the step, the event it ended with (None if it failed)."""

    step: str
    event: str | None
    attempt: int
    at: float
    error: str | None = None


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Why an instance failed: the step, the exception type and message, attempts made."""

    step: str
    type: str
    message: str
    attempts: int


class Timer(msgspec.Struct, frozen=True, kw_only=True):
    """A durable timer. ``deadline`` is in epoch seconds of the engine's clock.

    ``kind`` is "timeout" (a suspended step's timeout, Wait, WaitForEvent),
    "resume" (``engine.schedule_resume``) or "retry" (backoff before the next
    attempt of ``step``).
    """

    id: str
    kind: TimerKind
    step: str
    deadline: float


class InboxEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event that arrived before any step could accept it; delivered FIFO on suspension."""

    event: str
    payload: dict[str, Any] | None = None
    step: str | None = None
    dedupe_key: str | None = None
    at: float = 0.0


class ParentLink(msgspec.Struct, frozen=True, kw_only=True):
    """Which parent step started a child instance (``hx.SubWorkflow``).

    ``attempt`` is the parent step's attempt and ``run`` the parent's
    ``created_at``: a parent started again under the same id, or a step
    re-opened by ``retry``, asks for a new child, never an old one's result.
    """

    id: str
    step: str
    attempt: int
    run: float


class ChildLink(msgspec.Struct, frozen=True, kw_only=True):
    """The child instance a parent's ``hx.SubWorkflow`` step asked for (and waits on).

    Recorded in the parent before the child is started, so a parent recovered
    after a crash asks for the same child again instead of another one.
    """

    id: str
    workflow: str
    version: int
    attempt: int
    initial: dict[str, Any] = {}


class Instance(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A persisted snapshot of one workflow instance.

    Every field is plain data; ``status`` is derived from the others by the
    engine core whenever the instance changes, and ``revision`` grows by one
    with every persisted change. ``results`` has an entry for every completed
    step (``{}`` when it stored none). ``inbox`` holds at most 1,000 events and
    ``dedupe_keys`` the 1,000 most recent dedupe keys, so a snapshot's size
    does not grow with the number of resumes it took.

    Fields at their default value are not encoded (``omit_defaults``): a
    waiting instance's snapshot is about half the bytes, and a decoder fills
    them in again, so snapshots of every release decode both ways.
    """

    id: str
    workflow: str
    version: int
    status: Status = Status.PENDING
    initial: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    metadata: dict[str, Any] = {}
    active: tuple[str, ...] = ()
    completed: tuple[str, ...] = ()
    waiting: dict[str, tuple[str, ...]] = {}
    timers: tuple[Timer, ...] = ()
    inbox: tuple[InboxEvent, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    error: ErrorInfo | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    revision: int = 0
    # Engine bookkeeping (stable field names: part of the snapshot format).
    attempts: dict[str, int] = {}
    failures: dict[str, int] = {}
    configs: dict[str, dict[str, Any]] = {}
    fired: dict[str, tuple[str, ...]] = {}
    dedupe_keys: tuple[str, ...] = ()
    cancel_reason: str | None = None
    cancelled: bool = False
    next_timer: int = 1
    format: int = FORMAT_VERSION
    # Fingerprint of the workflow graph that last wrote this snapshot ("" before it was
    # recorded); a mismatch makes the engine check the state against its definition.
    graph: str = ""
    # hx.SubWorkflow: the parent step that started this instance, and the children this
    # instance's SubWorkflow steps asked for (step key -> link).
    parent: ParentLink | None = None
    children: dict[str, ChildLink] = {}
    # max_active: start order among the instances of a workflow waiting to be admitted.
    sequence: int = 0

    @property
    def retrying(self) -> tuple[str, ...]:
        """Keys of steps waiting on a retry backoff timer."""
        return tuple(t.step for t in self.timers if t.kind == "retry")
