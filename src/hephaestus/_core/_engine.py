"""The pure engine: ``apply(workflow, instance, input, now) -> Transition``.

Everything that decides what an instance does lives here, in the manner of
h11's state machine: inputs in, a new frozen instance and commands out, no I/O
and no clock reads (``now`` is an argument). The Trio runtime carries out the
commands; this module never runs step code, only a Route's ``choose``.

Caller errors (an event nobody can accept, cancelling a finished instance)
raise :class:`EventRejected` and leave the instance untouched; any other
exception from this module is a bug.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Final, cast, final

import msgspec

from ._definitions import check_definition
from ._errors import EventRejected, UndeclaredEvent
from ._model import (
    TERMINAL,
    ChildLink,
    ErrorInfo,
    HistoryEntry,
    InboxEvent,
    Instance,
    ParentLink,
    Status,
    Timer,
    TimerKind,
)
from ._notes import (
    DUPLICATE,
    AttemptFailed,
    Delivery,
    EventDropped,
    EventQueued,
    InstanceFinished,
    Note,
    Reply,
    RetryArmed,
    StepEnded,
    Suspended,
    TimerElapsed,
    Via,
)
from ._schedule import is_record
from ._steps import TIMEOUT_EVENT, Step, StepContext, Target
from ._subworkflow import CHILD_EVENTS
from ._workflow import Workflow

# --- inputs -----------------------------------------------------------------------------------


class Start(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Begin a pending instance: its start step becomes due."""


class StepSucceeded(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Attempt ``attempt`` of ``step`` ended with ``event``."""

    step: str
    attempt: int
    event: str
    results: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class StepFailed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Attempt ``attempt`` of ``step`` raised (or timed out, or returned nonsense)."""

    step: str
    attempt: int
    error_type: str
    message: str


class StepSuspended(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Attempt ``attempt`` of ``step`` returned ``Suspend(timeout)``."""

    step: str
    attempt: int
    timeout: float | None = None


class Deliver(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """An outside event (``engine.resume``)."""

    event: str
    payload: dict[str, Any] | None = None
    step: str | None = None
    dedupe_key: str | None = None


class TimerFired(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The timer ``timer_id`` reached its deadline."""

    timer_id: str


class ScheduleResume(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Add a durable timer that resumes ``step`` with ``"timeout"`` after ``delay`` seconds."""

    step: str
    delay: float


class CancelTimer(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Drop the timer ``timer_id``; the reply says whether it was pending."""

    timer_id: str


class Cancel(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Cancel the instance."""

    reason: str | None = None


class Recover(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The instance is loaded after a restart: re-run what was running, re-arm timers."""


class Retry(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Re-open a FAILED instance: every step it started but did not complete runs again.

    That is the step that failed for good and the siblings cancelled with it
    (running, suspended or backing off at the time). Each gets a fresh retry
    budget; its attempt number keeps counting, so ``ctx.attempt`` never repeats.
    Completed steps, their results, the inbox and the history are kept.
    """


class ChildRequested(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Attempt ``attempt`` of the SubWorkflow step ``step`` asks for a child instance.

    Its code gave the business ``value`` and ``initial``; the shell resolves
    the child workflow (``workflow`` v``version``) and its id ``child_id``
    before it applies the input (empty until then).
    """

    step: str
    attempt: int
    value: str
    initial: dict[str, Any] | None = None
    child_id: str = ""
    workflow: str = ""
    version: int = 0


class ChildFinished(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The child ``child_id`` that attempt ``attempt`` of ``step`` waits on ended: ``status``."""

    step: str
    attempt: int
    child_id: str
    status: Status
    results: dict[str, dict[str, Any]] = {}


class ChildStartFailed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The child of attempt ``attempt`` of ``step`` cannot be started (its id is taken)."""

    step: str
    attempt: int
    child_id: str
    error_type: str
    message: str


Input = (
    Start
    | StepSucceeded
    | StepFailed
    | StepSuspended
    | Deliver
    | TimerFired
    | ScheduleResume
    | CancelTimer
    | Cancel
    | Recover
    | Retry
    | ChildRequested
    | ChildFinished
    | ChildStartFailed
)

# --- commands ---------------------------------------------------------------------------------


class RunStep(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Run attempt ``attempt`` of ``step`` with ``config``."""

    step: str
    attempt: int
    config: dict[str, Any] | None = None


class ArmTimer(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Sleep until ``timer.deadline``, then feed ``TimerFired(timer.id)``."""

    timer: Timer


class DisarmTimer(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Stop the sleeping timer ``timer_id``, if it is armed."""

    timer_id: str


class CancelStep(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Cancel the running attempt of ``step``."""

    step: str


class Finished(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The instance reached a terminal status."""

    status: Status


class StartChild(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Make sure the child ``child`` of ``parent`` exists; tell the parent if it has ended.

    Idempotent: given again on every recovery while the parent step waits. A
    child already there with this ``parent`` link is not started twice; one
    already finished is reported to the parent (``ChildFinished``); an id held
    by another active instance is reported as ``ChildStartFailed``.
    """

    child: ChildLink
    parent: ParentLink


class CancelChild(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Cancel the child ``child_id`` of ``parent`` if it is still active (and still that one's)."""

    child_id: str
    parent: ParentLink


Command = RunStep | ArmTimer | DisarmTimer | CancelStep | Finished | StartChild | CancelChild

MAX_INBOX: Final = 1000
"""The most events an instance's inbox holds; a resume beyond that is rejected."""

DEDUPE_WINDOW: Final = 1000
"""How many of the most recent dedupe keys an instance remembers.

A key older than the last ``DEDUPE_WINDOW`` accepted ones is forgotten, so a
write's cost does not grow with the instance's age.
"""


@final
class Transition(msgspec.Struct, gc=False):
    """The outcome of :func:`apply`.

    ``instance`` is the input instance itself when nothing changed (then
    nothing needs persisting); otherwise a new instance with ``revision + 1``.
    ``reply`` is the answer for the caller of the input: a :class:`Delivery`
    for ``Deliver``, the timer id for ``ScheduleResume``, a bool for
    ``CancelTimer``, None otherwise. ``notes`` say what happened, in order
    (see ``_notes.py``); the shell maps them to telemetry. ``commands`` and
    ``notes`` are tuples (whoever builds one passes tuples).

    A struct, built in C: the fast paths make one per transition, and pass
    every field by position (keywords cost ~0.15 us a call there). It holds
    no reference back to itself, so the cyclic collector need not track it.
    """

    instance: Instance
    commands: tuple[Command, ...]
    reply: Reply
    changed: bool
    notes: tuple[Note, ...] = ()


# --- construction and helpers shared with the runtime -----------------------------------------


def new_instance(
    workflow: Workflow,
    instance_id: str,
    *,
    initial: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    now: float,
    previous_revision: int = 0,
    parent: ParentLink | None = None,
    sequence: int = 0,
) -> Instance:
    """Return a PENDING instance of ``workflow``; its revision follows ``previous_revision``.

    ``parent`` links a child to the SubWorkflow step that started it;
    ``sequence`` orders instances waiting for admission under ``max_active``.
    """
    return Instance(
        id=instance_id,
        workflow=workflow.name,
        version=workflow.version,
        status=Status.PENDING,
        initial=dict(initial or {}),
        metadata=dict(metadata or {}),
        created_at=now,
        updated_at=now,
        revision=previous_revision + 1,
        graph=workflow.fingerprint,
        parent=parent,
        sequence=sequence,
    )


def start_new(
    workflow: Workflow,
    instance_id: str,
    *,
    initial: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    now: float,
    stored_revision: int = 0,
    parent: ParentLink | None = None,
) -> Transition:
    """A new instance of ``workflow`` that starts at once: ``Start`` applied to it, in one go.

    Equals ``apply(workflow, new_instance(..., previous_revision=stored_revision - 1), Start(),
    now)`` field for field (a property test compares it with the general path), without
    building the PENDING instance first: the started snapshot sits one above
    ``stored_revision``, the revision stored under the id (0 for none).
    """
    key = workflow.start.key
    return Transition(
        Instance(
            id=instance_id,
            workflow=workflow.name,
            version=workflow.version,
            status=_RUNNING,
            initial=dict(initial or {}),
            metadata=dict(metadata or {}),
            created_at=now,
            updated_at=now,
            revision=stored_revision + 1,
            graph=workflow.fingerprint,
            parent=parent,
            active=(key,),
            attempts={key: 1},
        ),
        (RunStep(step=key, attempt=1, config=None),),
        None,
        True,
    )


def step_context(workflow: Workflow, instance: Instance, step: str, attempt: int) -> StepContext:
    """Return the context that attempt ``attempt`` of ``step`` receives.

    Its data is a copy of ``instance``'s, taken when the step first reads it:
    step code that mutates a nested list or dict cannot change the instance.
    """
    return StepContext._of(instance.id, workflow.name, workflow.version, instance, attempt, step)


def retry_delay(step: Step, instance_id: str, failed_attempt: int) -> float | None:
    """Return the backoff before the next attempt, or None when no attempt is left."""
    policy = step.retry
    if policy is None or failed_attempt >= policy.max_attempts:
        return None
    delay = policy.delay(failed_attempt)
    if policy.jitter:
        seed = zlib.crc32(f"{instance_id}\0{step.key}\0{failed_attempt}".encode())
        delay *= 0.5 + 0.5 * (seed / 0xFFFFFFFF)
    return delay


def derive_status(instance: Instance) -> Status:
    """Return the status that the instance's state implies."""
    return _status(
        instance.cancelled,
        instance.error,
        instance.attempts,
        instance.active,
        instance.waiting,
        instance.timers,
        instance.completed,
    )


def _status(
    cancelled: bool,
    error: ErrorInfo | None,
    attempts: Mapping[str, int],
    active: Sequence[str],
    waiting: Mapping[str, object],
    timers: Sequence[Timer],
    completed: Sequence[str],
) -> Status:
    if cancelled:
        return Status.CANCELLED
    if error is not None:
        return Status.FAILED
    if not attempts:  # never started: a timer or inbox event does not start it
        return Status.PENDING
    if active:
        return Status.RUNNING
    if waiting or timers:
        return Status.WAITING
    if not completed:
        return Status.PENDING
    return Status.COMPLETED


def live_steps(workflow: Workflow, instance: Instance) -> set[str]:
    """Return the keys of steps that may still run (or are running) in ``instance``.

    Seeds are the steps running, suspended, in backoff, or due to start after a
    join; everything not completed and reachable from a seed is live too.
    """
    completed = set(instance.completed)
    seeds = set(instance.active) | set(instance.waiting) | set(instance.retrying)
    if not instance.attempts and not instance.cancelled:  # not started yet: all may run
        seeds.add(workflow.start.key)
    seeds |= {k for k in instance.fired if k not in completed}
    live = set(seeds)
    frontier = list(seeds)
    successors = workflow.successors
    while frontier:
        for nxt in successors[frontier.pop()]:
            if nxt not in live and nxt not in completed:
                live.add(nxt)
                frontier.append(nxt)
    return live


# --- the transition function ------------------------------------------------------------------


def apply(workflow: Workflow, instance: Instance, event: Input, now: float) -> Transition:
    """Apply ``event`` to ``instance`` at time ``now`` (epoch seconds).

    Returns:
        The new instance (revision + 1 if anything changed), the commands to
        carry out after persisting it, and a reply for the caller.

    Raises:
        EventRejected: the instance cannot take ``event`` now (terminal, no
            step accepts the event, several do and none was named, ...).
        UndeclaredEvent: the event is not declared by any step that could take it.
        DefinitionChanged: ``instance``'s state names steps or events that
            ``workflow`` lacks (it was stored by another definition).
    """
    kind = type(event)
    fast: Transition | None = None
    if kind is StepSucceeded:
        fast = _fast_succeeded(workflow, instance, event, now)  # type: ignore[arg-type]
    elif kind is Start:
        fast = _fast_start(workflow, instance, now)
    elif kind is StepSuspended:
        fast = _fast_suspended(workflow, instance, event, now)  # type: ignore[arg-type]
    if fast is not None:
        return fast
    return apply_general(workflow, instance, event, now)


def apply_general(workflow: Workflow, instance: Instance, event: Input, now: float) -> Transition:
    """:func:`apply` without its fast paths: every input through the general ``_Draft``.

    Returns and raises exactly what :func:`apply` does (a property test
    compares the two on random workflows and runs).
    """
    if (answered := _answered_terminal(instance, event)) is not None:
        return answered
    if instance.graph != workflow.fingerprint:
        check_definition(workflow, instance)
    draft = _Draft(workflow, instance, now)
    match event:
        case Start():
            draft.start()
        case Recover():
            draft.recover()
        case StepSucceeded(
            step=step, attempt=attempt, event=ev, results=results, metadata=metadata
        ):
            if draft.is_current(step, attempt, draft.active):
                draft.complete(step, ev, results, metadata, Via.RETURNED)
        case StepFailed(step=step, attempt=attempt, error_type=error_type, message=message):
            if draft.is_current(step, attempt, draft.active):
                draft.fail(step, error_type, message)
        case StepSuspended(step=step, attempt=attempt, timeout=timeout):
            if draft.is_current(step, attempt, draft.active):
                draft.suspend(step, timeout)
        case Deliver(event=ev, payload=payload, step=step, dedupe_key=dedupe_key):
            draft.deliver(ev, payload, step, dedupe_key)
        case TimerFired(timer_id=timer_id):
            draft.timer_fired(timer_id)
        case ScheduleResume(step=step, delay=delay):
            draft.schedule_resume(step, delay)
        case CancelTimer(timer_id=timer_id):
            draft.cancel_timer(timer_id)
        case Cancel(reason=reason):
            draft.cancel(reason)
        case Retry():
            draft.retry()
        case ChildRequested():
            if draft.is_current(event.step, event.attempt, draft.active):
                draft.child_requested(event)
        case ChildFinished(step=step, attempt=attempt, child_id=child_id):
            if draft.waits_on_child(step, attempt, child_id):
                results = {"id": child_id, "results": event.results}
                draft.complete(step, event.status.value, results, None, Via.CHILD)
        case ChildStartFailed(step=step, attempt=attempt, child_id=child_id):
            if draft.waits_on_child(step, attempt, child_id):
                draft.fail(step, event.error_type, event.message)
    return draft.finish()


# Enum members the fast paths use, looked up once: a member lookup costs about 50 ns on 3.11.
_RUNNING: Final = Status.RUNNING
_COMPLETED: Final = Status.COMPLETED
_RETURNED: Final = Via.RETURNED

# --- fast paths -------------------------------------------------------------------------------
#
# The transitions every instance makes most: a fresh instance starts, a lone running step
# returns an event whose plain edge leads to one step that can start at once (or to Done),
# and a step suspends with an empty inbox. Each returns None unless the instance is in exactly the
# simple state it handles; then its result equals apply_general's, field for field
# (property_tests/test_fast_paths.py), at a fraction of the cost of a _Draft.


def _fast_start(workflow: Workflow, instance: Instance, now: float) -> Transition | None:
    """``Start`` of a fresh PENDING instance: its start step runs (attempt 1)."""
    if (
        instance.status is not Status.PENDING
        or instance.active
        or instance.inbox
        or instance.cancelled
        or instance.error is not None
        or instance.graph != workflow.fingerprint
    ):
        return None
    key = workflow.start.key
    return Transition(
        msgspec.structs.replace(
            instance,
            status=Status.RUNNING,
            active=(key,),
            attempts={**instance.attempts, key: 1},
            updated_at=now,
            revision=instance.revision + 1,
        ),
        (RunStep(step=key, attempt=1, config=instance.configs.get(key)),),
        None,
        True,
    )


def _fast_succeeded(
    workflow: Workflow, instance: Instance, event: StepSucceeded, now: float
) -> Transition | None:
    step = event.step
    if (
        instance.active != (step,)
        or instance.waiting
        or instance.timers
        or instance.inbox
        or instance.status in TERMINAL
        or instance.graph != workflow.fingerprint
        or instance.attempts.get(step) != event.attempt
    ):
        return None
    edge = workflow.edges.get((step, event.event))
    if edge is None or edge.route is not None or len(edge.targets) > 1:
        return None
    completed = instance.completed
    fired = instance.fired
    for key in fired:  # a loop, not any(): this runs three times per linear instance
        if key != step and key not in completed:
            return None  # a join is pending: the general path decides it
    attempt = event.attempt
    results = event.results
    history = (
        *instance.history,
        HistoryEntry(step=step, event=event.event, attempt=attempt, at=now, error=None),
    )
    metadata = {**instance.metadata, **event.metadata} if event.metadata else instance.metadata
    ended = StepEnded(step=step, attempt=attempt, event=event.event, via=_RETURNED)
    done = (*completed, step)
    step_results = {**instance.results, step: {} if results is None else results}
    if not edge.targets:
        status = _COMPLETED
        return Transition(
            msgspec.structs.replace(
                instance,
                status=status,
                active=(),
                completed=done,
                results=step_results,
                metadata=metadata,
                history=history,
                updated_at=now,
                revision=instance.revision + 1,
            ),
            (Finished(status=status),),
            None,
            True,
            (ended, InstanceFinished(status=status, error_type=None)),
        )
    target, config = edge.targets[0]
    if target in completed or target == step:
        return None
    for p in workflow.predecessors[target]:
        if p != step and p not in completed:
            return None
    configs = instance.configs if config is None else {**instance.configs, target: config}
    return Transition(
        msgspec.structs.replace(
            instance,
            status=_RUNNING,
            active=(target,),
            completed=done,
            results=step_results,
            metadata=metadata,
            history=history,
            attempts={**instance.attempts, target: 1},
            configs=configs,
            fired={**fired, target: (step,)},
            updated_at=now,
            revision=instance.revision + 1,
        ),
        (RunStep(step=target, attempt=1, config=configs.get(target)),),
        None,
        True,
        (ended,),
    )


def _fast_suspended(
    workflow: Workflow, instance: Instance, event: StepSuspended, now: float
) -> Transition | None:
    step = event.step
    active = instance.active
    if (
        step not in active
        or instance.inbox
        or instance.status in TERMINAL
        or instance.graph != workflow.fingerprint
        or instance.attempts.get(step) != event.attempt
    ):
        return None
    timeout = event.timeout
    events = workflow.steps[step].events
    if timeout is not None and TIMEOUT_EVENT not in events:
        return None  # a failed attempt: the general path says why
    still_active = tuple(key for key in active if key != step)
    waiting = {**instance.waiting, step: events}
    timers = instance.timers
    next_timer = instance.next_timer
    commands: tuple[Command, ...] = ()
    if timeout is not None:
        timer = Timer(
            id=f"t{next_timer}", kind="timeout", step=step, deadline=now + max(0.0, timeout)
        )
        next_timer += 1
        timers = (*timers, timer)
        commands = (ArmTimer(timer=timer),)
    status = Status.RUNNING if still_active else Status.WAITING
    return Transition(
        msgspec.structs.replace(
            instance,
            status=status,
            active=still_active,
            waiting=waiting,
            timers=timers,
            next_timer=next_timer,
            updated_at=now,
            revision=instance.revision + 1,
        ),
        commands,
        None,
        True,
        (Suspended(step=step, attempt=event.attempt, timeout=timeout),),
    )


@final
class _Draft:
    """A mutable working copy of an instance for the length of one transition."""

    def __init__(
        self, workflow: Workflow, instance: Instance, now: float, *, graph: str | None = None
    ) -> None:
        self.workflow = workflow
        self.graph = workflow.fingerprint if graph is None else graph
        self.original = instance
        self.now = now
        self.changed = False
        self.reply: Reply = None
        self.commands: list[Command] = []
        self.notes: list[Note] = []
        self.terminal = instance.status.is_terminal
        self.active = list(instance.active)
        self.completed = list(instance.completed)
        self.waiting = dict(instance.waiting)
        self.timers = list(instance.timers)
        self.inbox = list(instance.inbox)
        self.history = list(instance.history)
        self.results = instance.results
        self.metadata = instance.metadata
        self.attempts = instance.attempts
        self.failures = instance.failures
        self.configs = instance.configs
        self.fired = instance.fired
        self.dedupe_keys = instance.dedupe_keys
        self.error = instance.error
        self.cancelled = instance.cancelled
        self.cancel_reason = instance.cancel_reason
        self.next_timer = instance.next_timer
        self.children = instance.children

    # -- bookkeeping ---------------------------------------------------------------------------

    def is_current(self, step: str, attempt: int, where: Iterable[str]) -> bool:
        """True when ``attempt`` of ``step`` is the one the instance is waiting for."""
        return not self.terminal and step in where and self.attempts.get(step) == attempt

    def rejected(self, message: str, error: type[EventRejected] = EventRejected) -> EventRejected:
        return error(f"instance {self.original.id!r}: {message}")

    def run(self, step: str, attempt: int) -> None:
        self.changed = True
        self.attempts = {**self.attempts, step: attempt}
        if step not in self.active:
            self.active.append(step)
        self.commands.append(RunStep(step=step, attempt=attempt, config=self.configs.get(step)))

    def add_timer(self, kind: TimerKind, step: str, delay: float) -> Timer:
        self.changed = True
        timer = Timer(
            id=f"t{self.next_timer}",
            kind=kind,
            step=step,
            deadline=self.now + max(0.0, delay),
        )
        self.next_timer += 1
        self.timers.append(timer)
        self.commands.append(ArmTimer(timer=timer))
        return timer

    def drop_timers(self, keep: Any = lambda timer: False) -> None:
        kept = []
        for timer in self.timers:
            if keep(timer):
                kept.append(timer)
            else:
                self.changed = True
                self.commands.append(DisarmTimer(timer_id=timer.id))
        self.timers = kept

    def history_entry(self, step: str, event: str | None, error: str | None = None) -> None:
        self.history.append(
            HistoryEntry(
                step=step,
                event=event,
                attempt=self.attempts.get(step, 1),
                at=self.now,
                error=error,
            )
        )

    # -- inputs --------------------------------------------------------------------------------

    def start(self) -> None:
        if self.original.status is Status.PENDING:
            self.run(self.workflow.start.key, 1)

    def recover(self) -> None:
        if self.terminal:
            return
        if self.original.status is Status.PENDING:
            self.start()
            return
        for step in list(self.active):
            self.run(step, self.attempts.get(step, 0) + 1)
        # A child asked for may not have been started, or may have ended unheard of.
        self.commands.extend(
            StartChild(child=self.children[step], parent=self.parent_link(step))
            for step in self.waiting
            if step in self.children
        )
        for timer in self.timers:
            self.commands.append(ArmTimer(timer=timer))
            if timer.kind == "retry":
                attempt = self.attempts.get(timer.step, 1) + 1
                self.notes.append(
                    RetryArmed(step=timer.step, attempt=attempt, deadline=timer.deadline)
                )
        self.advance()

    def complete(
        self,
        step: str,
        event: str,
        results: dict[str, Any] | None,
        metadata: dict[str, Any] | None,
        via: Via,
    ) -> None:
        """Record that ``step`` (running or suspended) ended with ``event``; start what follows."""
        definition = self.workflow.steps[step]
        if event not in definition.events:
            self.fail(
                step,
                UndeclaredEvent.__name__,
                f"step {step!r} ended with event {event!r}, which it does not declare "
                f"(declared: {list(definition.events)!r})",
                event=event,
            )
            return
        edge = self.workflow.edges[(step, event)]
        targets: Sequence[tuple[str, dict[str, Any] | None]] = edge.targets
        if edge.route is not None:
            chosen = self.choose_route(step, event, results, edge.route.choose, edge.targets)
            if isinstance(chosen, str):
                self.fail(step, "RouteError", chosen)
                return
            targets = chosen
        self.changed = True
        self.notes.append(
            StepEnded(step=step, attempt=self.attempts.get(step, 1), event=event, via=via)
        )
        if step in self.active:
            self.active.remove(step)
        self.waiting.pop(step, None)
        self.completed.append(step)
        # Every completed step has an entry, so `key in ctx.results` tells what ran.
        self.results = {**self.results, step: {} if results is None else results}
        if metadata:
            self.metadata = {**self.metadata, **metadata}
        self.history_entry(step, event)
        self.drop_timers(keep=lambda timer: timer.step != step)
        if targets:
            fired = dict(self.fired)
            configs = self.configs
            for key, config in targets:
                fired[key] = (*fired.get(key, ()), step)
                if config is not None:
                    configs = {**configs, key: config}
            self.fired = fired
            self.configs = configs
        self.advance()

    def choose_route(
        self,
        step: str,
        event: str,
        results: dict[str, Any] | None,
        choose: Any,
        allowed: Sequence[tuple[str, dict[str, Any] | None]],
    ) -> list[tuple[str, dict[str, Any] | None]] | str:
        """Return the targets ``choose`` picks, or a message saying why the choice is invalid."""
        view = msgspec.structs.replace(
            self.original,
            results={**self.results, step: {} if results is None else results},
        )
        ctx = step_context(self.workflow, view, step, self.attempts.get(step, 1))
        try:
            picked = choose(ctx)
        except Exception as exc:  # user code: any failure fails the attempt
            return f"Route choose for ({step!r}, {event!r}) raised {type(exc).__name__}: {exc}"
        items = picked if isinstance(picked, list | tuple) else [picked]
        allowed_keys = dict(allowed)
        chosen: list[tuple[str, dict[str, Any] | None]] = []
        for item in items:
            if isinstance(item, Target) and isinstance(item.step, Step):
                key, config = item.step.key, item.config
            elif isinstance(item, Step):
                key, config = item.key, allowed_keys.get(item.key)
            else:
                key, config = "", None
            if key not in allowed_keys or self.workflow.steps.get(key) is not (
                item.step if isinstance(item, Target) else item
            ):
                return (
                    f"Route choose for ({step!r}, {event!r}) returned {item!r}, which is not "
                    f"among its targets {list(allowed_keys)!r}"
                )
            if all(key != k for k, _ in chosen):
                chosen.append((key, config))
        if not chosen:
            return f"Route choose for ({step!r}, {event!r}) returned no target"
        return chosen

    def fail(self, step: str, error_type: str, message: str, *, event: str | None = None) -> None:
        self.changed = True
        self.history_entry(step, None, error_type)
        attempt = self.attempts.get(step, 1)
        if step in self.active:
            self.active.remove(step)
        self.waiting.pop(step, None)
        # Retries count failed attempts: an attempt cut short by a crash is not a failure.
        failed = self.failures.get(step, 0) + 1
        self.failures = {**self.failures, step: failed}
        delay = retry_delay(self.workflow.steps[step], self.original.id, failed)
        failed_note = AttemptFailed(
            step=step, attempt=attempt, error_type=error_type, message=message, event=event
        )
        if delay is not None:
            self.drop_timers(keep=lambda timer: timer.step != step)
            deadline = self.add_timer("retry", step, delay).deadline
            self.notes.append(msgspec.structs.replace(failed_note, retry_at=deadline))
            self.notes.append(RetryArmed(step=step, attempt=attempt + 1, deadline=deadline))
            return
        self.notes.append(failed_note)
        self.error = ErrorInfo(step=step, type=error_type, message=message, attempts=attempt)
        self.stop_everything()

    def stop_everything(self) -> None:
        self.commands.extend(CancelStep(step=step) for step in self.active)
        self.commands.extend(
            CancelChild(child_id=self.children[step].id, parent=self.parent_link(step))
            for step in self.waiting
            if step in self.children
        )
        self.active.clear()
        self.waiting.clear()
        self.drop_timers()
        self.changed = True

    # -- SubWorkflow steps ---------------------------------------------------------------------

    def parent_link(self, step: str) -> ParentLink:
        """The link a child of ``step`` carries back to this instance."""
        link = self.children[step]
        return ParentLink(
            id=self.original.id, step=step, attempt=link.attempt, run=self.original.created_at
        )

    def waits_on_child(self, step: str, attempt: int, child_id: str) -> bool:
        """True when ``step`` is suspended on exactly that child, asked for by ``attempt``."""
        link = self.children.get(step)
        return (
            not self.terminal
            and step in self.waiting
            and link is not None
            and link.id == child_id
            and link.attempt == attempt
        )

    def child_requested(self, event: ChildRequested) -> None:
        """Record the child a SubWorkflow step asked for, suspend the step, start the child."""
        step = event.step
        attempt = self.attempts.get(step, 1)
        self.changed = True
        self.children = {
            **self.children,
            step: ChildLink(
                id=event.child_id,
                workflow=event.workflow,
                version=event.version,
                attempt=attempt,
                initial=event.initial or {},
            ),
        }
        self.notes.append(Suspended(step=step, attempt=attempt, timeout=None))
        self.active.remove(step)
        self.waiting[step] = CHILD_EVENTS
        self.commands.append(StartChild(child=self.children[step], parent=self.parent_link(step)))

    def suspend(self, step: str, timeout: float | None) -> None:
        definition = self.workflow.steps[step]
        if timeout is not None and TIMEOUT_EVENT not in definition.events:
            self.fail(
                step,
                UndeclaredEvent.__name__,
                f"step {step!r} suspended with a timeout but does not declare "
                f"{TIMEOUT_EVENT!r}: add it to events=...",
            )
            return
        self.changed = True
        self.notes.append(Suspended(step=step, attempt=self.attempts.get(step, 1), timeout=timeout))
        self.active.remove(step)
        self.waiting[step] = definition.events
        for index, queued in enumerate(self.inbox):
            if queued.event in definition.events and queued.step in (None, step):
                del self.inbox[index]
                self.complete(step, queued.event, queued.payload, None, Via.INBOX)
                return
        if timeout is not None:
            self.add_timer("timeout", step, timeout)

    def deliver(
        self,
        event: str,
        payload: dict[str, Any] | None,
        step: str | None,
        dedupe_key: str | None,
    ) -> None:
        if dedupe_key is not None and dedupe_key in self.dedupe_keys:
            self.reply = DUPLICATE
            return
        steps = self.workflow.steps
        children = self.workflow.children
        if step is not None:
            if step not in steps:
                raise self.rejected(
                    f"workflow {self.workflow.name!r} has no step {step!r} (steps: {list(steps)!r})"
                )
            if step in children:
                raise self.rejected(
                    f"step {step!r} is an hx.SubWorkflow: it ends when its child instance "
                    "ends, not by resume (cancel the child to end it)"
                )
            if event not in steps[step].events:
                raise self.rejected(
                    f"step {step!r} does not declare event {event!r} "
                    f"(declared: {list(steps[step].events)!r})",
                    UndeclaredEvent,
                )
        elif not any(event in s.events for s in steps.values()):
            raise self.rejected(
                f"no step of workflow {self.workflow.name!r} declares event {event!r}",
                UndeclaredEvent,
            )
        candidates = [
            key
            for key, accepted in self.waiting.items()
            if event in accepted and (step is None or key == step) and key not in children
        ]
        if len(candidates) > 1:
            raise self.rejected(
                f"steps {sorted(candidates)!r} are all suspended and accept {event!r}: "
                "pass step=... to name one"
            )
        if candidates:
            self.complete(candidates[0], event, payload, None, Via.RESUMED)
        else:
            live = live_steps(self.workflow, self.original)
            completed = set(self.completed)
            takers = [
                key
                for key in live
                if key not in completed
                and key not in children
                and event in steps[key].events
                and (step is None or key == step)
            ]
            if not takers:
                target = f"step {step!r}" if step is not None else "any step that can still run"
                raise self.rejected(
                    f"event {event!r} cannot be accepted: neither {target} is suspended on it "
                    "nor will it be (the steps declaring it have completed or can no longer run)"
                )
            if len(self.inbox) >= MAX_INBOX:
                raise self.rejected(
                    f"its inbox already holds {MAX_INBOX} events, the most an instance keeps "
                    f"(event {event!r} not queued): resume it once a step takes them"
                )
            self.inbox.append(
                InboxEvent(
                    event=event,
                    payload=payload,
                    step=step,
                    dedupe_key=dedupe_key,
                    at=self.now,
                )
            )
            self.changed = True
            self.notes.append(EventQueued(event=event, step=step))
            self.reply = Delivery.QUEUED
        if dedupe_key is not None:
            # A bounded window: the most recent DEDUPE_WINDOW keys are remembered.
            self.dedupe_keys = (*self.dedupe_keys[-(DEDUPE_WINDOW - 1) :], dedupe_key)
        if self.reply is None:
            self.reply = Delivery.DELIVERED

    def timer_fired(self, timer_id: str) -> None:
        timer = next((t for t in self.timers if t.id == timer_id), None)
        if timer is None or self.terminal:
            return
        self.changed = True
        self.timers.remove(timer)
        self.notes.append(TimerElapsed(timer_id=timer_id))
        if timer.kind == "retry":
            self.run(timer.step, self.attempts.get(timer.step, 1) + 1)
        elif TIMEOUT_EVENT in self.waiting.get(timer.step, ()):
            self.complete(timer.step, TIMEOUT_EVENT, None, None, Via.TIMEOUT)
        else:
            self.advance()

    def schedule_resume(self, step: str, delay: float) -> None:
        definition = self.workflow.steps.get(step)
        if definition is None:
            raise self.rejected(
                f"workflow {self.workflow.name!r} has no step {step!r} "
                f"(steps: {list(self.workflow.steps)!r})"
            )
        if TIMEOUT_EVENT not in definition.events:
            raise self.rejected(
                f"step {step!r} does not declare {TIMEOUT_EVENT!r}, so it cannot be resumed "
                "by a timer: add it to the step's events",
                UndeclaredEvent,
            )
        if step in self.completed:
            raise self.rejected(f"step {step!r} has already completed")
        self.reply = self.add_timer("resume", step, delay).id

    def cancel_timer(self, timer_id: str) -> None:
        # Only schedule_resume's timers are the caller's to drop: a retry timer is what
        # keeps a failed step alive, and without its timeout a Wait would sleep forever.
        before = len(self.timers)
        self.drop_timers(keep=lambda timer: timer.id != timer_id or timer.kind != "resume")
        self.reply = len(self.timers) < before

    def cancel(self, reason: str | None) -> None:
        self.cancelled = True
        self.cancel_reason = reason
        self.stop_everything()

    def retry(self) -> None:
        """Re-open a FAILED instance; see :class:`Retry`. Reads nothing of the graph."""
        status = self.original.status
        if status is not Status.FAILED:
            raise self.rejected(f"it is {status.value}; only a failed instance can be retried")
        completed = set(self.completed)
        # Every step that started and did not complete was live when the instance failed
        # (steps run at most once), so re-running them restores what the failure stopped.
        rerun = [step for step in self.attempts if step not in completed]
        if not rerun and self.error is not None:
            rerun = [self.error.step]
        if not rerun:
            raise self.rejected("it records no step that failed, so nothing can run again")
        self.error = None
        self.terminal = False
        self.failures = {k: n for k, n in self.failures.items() if k not in rerun}
        for step in rerun:
            self.run(step, self.attempts.get(step, 0) + 1)

    # -- joins ---------------------------------------------------------------------------------

    def advance(self) -> None:
        """Start every step whose join is satisfied; finish the instance when nothing is live."""
        if self.error is not None or self.cancelled:
            return
        busy = set(self.active) | set(self.waiting) | set(self.completed)
        busy.update(t.step for t in self.timers if t.kind == "retry")
        pending = [key for key in self.fired if key not in busy]
        if pending:
            completed = set(self.completed)
            live: set[str] | None = None  # computed only for joins that need it
            for key in self.workflow.topo_order:
                if key not in pending:
                    continue
                predecessors = self.workflow.predecessors[key]
                if not predecessors <= completed:
                    if live is None:
                        live = live_steps(self.workflow, self.snapshot())
                    if predecessors & live:
                        continue
                self.run(key, 1)
        if not self.active and not self.waiting and not any(t.kind == "retry" for t in self.timers):
            self.drop_timers()

    # -- result --------------------------------------------------------------------------------

    def snapshot(self, **final: Any) -> Instance:
        return msgspec.structs.replace(
            self.original,
            **final,
            active=tuple(self.active),
            completed=tuple(self.completed),
            waiting=dict(self.waiting),
            timers=tuple(self.timers),
            inbox=tuple(self.inbox),
            history=tuple(self.history),
            results=self.results,
            metadata=self.metadata,
            attempts=self.attempts,
            failures=self.failures,
            configs=self.configs,
            fired=self.fired,
            dedupe_keys=self.dedupe_keys,
            error=self.error,
            cancelled=self.cancelled,
            cancel_reason=self.cancel_reason,
            next_timer=self.next_timer,
            graph=self.graph,
            children=self.children,
        )

    def drop_untakable(self) -> None:
        """Drop inbox events that no step which can still run declares (noting each)."""
        if self.cancelled:
            live: set[str] = set()
        else:
            live = live_steps(self.workflow, self.snapshot()) - set(self.completed)
        steps = self.workflow.steps
        kept = []
        for queued in self.inbox:
            takers = live if queued.step is None else live & {queued.step}
            if any(queued.event in steps[key].events for key in takers):
                kept.append(queued)
            else:
                self.notes.append(
                    EventDropped(event=queued.event, step=queued.step, dedupe_key=queued.dedupe_key)
                )
        self.inbox = kept

    def finish(self) -> Transition:
        if not self.changed:
            return Transition(
                self.original, tuple(self.commands), self.reply, False, tuple(self.notes)
            )
        if self.inbox:
            self.drop_untakable()
        status = _status(
            self.cancelled,
            self.error,
            self.attempts,
            self.active,
            self.waiting,
            self.timers,
            self.completed,
        )
        instance = self.snapshot(
            status=status, updated_at=self.now, revision=self.original.revision + 1
        )
        if status.is_terminal and not self.terminal:
            self.commands.append(Finished(status=status))
            error_type = None if self.error is None else self.error.type
            self.notes.append(InstanceFinished(status=status, error_type=error_type))
        return Transition(instance, tuple(self.commands), self.reply, True, tuple(self.notes))


# --- inputs that need no workflow graph -------------------------------------------------------


def apply_without_graph(instance: Instance, event: Cancel | Retry, now: float) -> Transition:
    """Apply ``Cancel`` or ``Retry`` to a stored snapshot without its workflow definition.

    For tools that hold a store but not the application's workflows (the
    command line). Neither input reads the graph, so the result is exactly what
    :func:`apply` returns for the same input (a property test compares them).
    The commands are for a runtime that runs the instance; without one they
    can be ignored: the next engine to open the store recovers the instance.

    Raises:
        EventRejected: as :func:`apply` does (cancelling a finished instance,
            retrying one that has not failed); the instance is untouched.
        TypeError: for any other input, which needs the graph.
    """
    if not isinstance(event, Cancel | Retry):
        raise TypeError(f"apply_without_graph takes Cancel or Retry, not {event!r}")
    if (answered := _answered_terminal(instance, event)) is not None:
        return answered
    # Neither input reads the workflow; the stored fingerprint stays as it is.
    draft = _Draft(cast(Workflow, None), instance, now, graph=instance.graph)
    if isinstance(event, Cancel):
        draft.cancel(event.reason)
    else:
        draft.retry()
    return draft.finish()


TERMINAL_STATUSES: Final = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
"""The statuses ``prune`` may delete, in the order they are listed."""


def prune_statuses(status: Status | Collection[Status] | None) -> tuple[Status, ...]:
    """Return the statuses a ``prune(status=...)`` argument selects (None: every terminal one).

    Raises:
        ValueError: for a value that is not a Status, or a status that is not
            terminal (prune never deletes an active instance).
    """
    if status is None:
        return TERMINAL_STATUSES
    items = [status] if isinstance(status, Status | str) else list(status)
    chosen: list[Status] = []
    for item in items:
        try:
            value = Status(item)
        except ValueError:
            names = ", ".join(s.value for s in TERMINAL_STATUSES)
            raise ValueError(f"status must be one of {names}; got {item!r}") from None
        if not value.is_terminal:
            raise ValueError(
                f"prune deletes only finished instances: status {value.value!r} is active "
                "(choose completed, failed or cancelled; cancel an instance first to prune it)"
            )
        if value not in chosen:
            chosen.append(value)
    return tuple(chosen)


def prunable(instance: Instance, *, statuses: Collection[Status], cut: float) -> bool:
    """True when ``prune`` deletes ``instance``: terminal, of ``statuses``, older than ``cut``.

    ``cut`` is an epoch time; "older" means last updated strictly before it. A
    schedule's record (:mod:`._schedule`) is never pruned.
    """
    return (
        instance.status.is_terminal
        and instance.status in statuses
        and instance.updated_at < cut
        and not is_record(instance)
    )


def _answered_terminal(instance: Instance, event: Input) -> Transition | None:
    """The no-change transition answering ``event`` for a terminal instance, if it is one."""
    if instance.status.is_terminal and isinstance(event, TERMINAL_INPUTS):
        return Transition(instance, (), answer_terminal(instance, event), changed=False)
    return None


# The terminal answers need the inputs defined above.
from ._terminal import TERMINAL_INPUTS, answer_terminal  # noqa: E402
