"""The runner: one Trio task that owns one instance.

Its loop is: receive a message -> apply the pure transition -> persist the new
snapshot -> carry out the commands (start steps, arm and disarm timers) ->
acknowledge the sender. Step tasks live in the runner's own nursery and report
back through the same mailbox; timers are armed in the engine's timer service
(:mod:`._timers`), which posts each due one to the mailbox. So only the runner
ever touches the instance.

Storage faults are not bugs. A write that fails for a caller's request fails
that request (the caller gets the storage's exception) and the runner goes on
from its last stored snapshot. A write that records what the engine itself
must not lose (a step's outcome, a timer that fired, a recovery) is retried
with capped exponential backoff until it is stored, without re-running
anything; each failure is reported as ``storage.error``. A write refused
because the stored revision is not the one this runner wrote last means
someone else changed or deleted the snapshot: the runner stops with
:class:`SnapshotReplaced` and its supervisor (:mod:`._supervisor`) reloads what
is stored. On shared storage a write refused because another engine holds the
instance now (:class:`LeaseLost`) stops the runner too, and the instance is
dropped from this engine: no retry, no restart (:mod:`._shared`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final, final

import trio

from .._core._engine import (
    ArmTimer,
    CancelChild,
    CancelStep,
    ChildRequested,
    Command,
    DisarmTimer,
    Finished,
    Input,
    Recover,
    RunStep,
    StartChild,
    TimerFired,
    Transition,
    apply,
    step_context,
)
from .._core._errors import CorruptSnapshot, EngineClosed, EventRejected, RevisionConflict
from .._core._model import TERMINAL, Instance, Status
from .._core._outcome import failed, outcome
from .._core._workflow import Workflow
from ..storage._shared import LeaseLost
from ._lease import applying
from ._mailbox import Mailbox, Message, Reply
from ._registry import Entry, State
from ._report import report
from ._steprun import must_propagate, run_attempt
from ._workers import Lent

if TYPE_CHECKING:
    from ._engine import Engine

_log = logging.getLogger("hephaestus.engine")

RETRY_FIRST: Final = 0.1
"""Seconds before the first retry of a write that must be stored; doubled after each failure."""
RETRY_MAX: Final = 10.0
"""The longest pause between two retries of such a write."""


_NO_TELEMETRY: Final[dict[str, float]] = {}
"""The ``started`` of every runner of an engine without telemetry: never written."""

WAKE: Final = Message(Recover())
"""Queued only to wake a runner loop, which skips it (a caller started a step in a task)."""


class SnapshotReplaced(Exception):
    """The stored snapshot is not the one the runner wrote last: changed or deleted under it.

    ``message`` is the message whose write was refused; a caller's request
    among them is applied again to what is stored.
    """

    def __init__(self, message: Message | None, conflict: RevisionConflict) -> None:
        super().__init__(str(conflict))
        self.message = message


async def _take_until(mailbox: Mailbox, deadline: float) -> Message | None:
    """Return the next message, or None once trio's clock reaches ``deadline``."""
    with trio.move_on_at(deadline):
        return await mailbox.take()
    return None


@final
class Runner:
    """Drives one instance until it is terminal, the engine closes, or it crashes.

    Step attempts run as tasks in the runner's nursery; its timers are armed
    in the engine's timer service, which posts ``TimerFired`` when one is due.
    """

    __slots__ = (
        "engine",
        "entry",
        "inline",
        "lent",
        "nursery",
        "passivated",
        "pending",
        "scope",
        "scopes",
        "started",
        "workflow",
    )

    def __init__(
        self,
        engine: Engine,
        entry: Entry,
        workflow: Workflow,
        lent: Lent | None = None,
    ) -> None:
        self.engine = engine
        self.entry = entry
        self.workflow = workflow
        self.scopes: dict[str, trio.CancelScope] = {}
        self.started: dict[str, float] = {} if engine.telemetry.enabled else _NO_TELEMETRY
        """When each running step started (trio time), for step.stop; only with telemetry."""
        self.scope: trio.CancelScope | None = None
        """What finishing the instance cancels: the scope of the inline steps running, or
        the nursery's once it is open; None while the runner waits for mail."""
        self.nursery: trio.Nursery | None = None
        """Opened once a step must run in a task of its own; None until then."""
        self.pending: list[tuple[str, int, trio.CancelScope]] | None = None
        """Steps to start in a task of their own once the nursery is open."""
        self.inline: tuple[str, int] | None = None
        """A lone step (and its attempt) the runner loop is to run in its own task next."""
        self.passivated = False
        """True when :meth:`run` returned because the instance no longer needs a runner."""
        self.lent = lent
        """The open scope of the runner's task, lent to its inline steps; None: they open one."""

    @property
    def instance(self) -> Instance:
        """The instance's current snapshot (the entry's: callers holding the token update it)."""
        return self.entry.instance

    async def run(self, first_commands: Sequence[Command] = ()) -> None:
        """Process the mailbox until the instance is terminal.

        Once the mailbox is empty for the first time (a ``Recover`` and the
        requests queued meanwhile are applied first), callers apply their
        requests themselves under the token (:meth:`apply_request`).

        The runner opens a nursery only once a step must run in a task of its
        own (fan-out, a step with a timeout or a sync one). Inline steps run
        in a cancel scope of their own (:meth:`run_chain`), or in the one
        their task lends them (:mod:`._workers`), which is what finishing the
        instance (a ``cancel`` while a step runs inline) cancels; a runner
        waiting for mail holds no scope (a parked resident instance costs
        less), and finishing its instance wakes it instead.

        Raises:
            Exception: whatever broke the runner (a storage error, a bug); the
                supervisor restarts it from the last snapshot.
        """
        entry = self.entry
        mailbox = entry.mailbox
        assert mailbox is not None
        try:
            lone = self.lone_inline(first_commands)
            if lone is None:
                self.carry_out(first_commands, inline=True)
            elif mailbox.empty():
                # What serve would do first, one frame higher: the steps of a linear
                # instance then run with a frame less on every resume.
                entry.runner = self
                await self.run_chain(mailbox, lone.step, lone.attempt)
            else:
                self.inline = (lone.step, lone.attempt)  # after what came first
            if not await self.serve(mailbox):
                async with trio.open_nursery() as nursery:
                    # From here on finishing the instance cancels the nursery: the step
                    # tasks and the runner loop in it.
                    self.nursery = nursery
                    self.scope = nursery.cancel_scope
                    for step, attempt, step_scope in self.pending or ():
                        nursery.start_soon(self.run_step, step, attempt, step_scope)
                    self.pending = None
                    await self.serve(mailbox)
                    nursery.cancel_scope.cancel()
        finally:
            if entry.runner is self:
                entry.runner = None
            entry.token.poke()  # waiting callers send their requests another way

    async def serve(self, mailbox: Mailbox) -> bool:
        """Apply messages and run inline steps until the instance no longer needs the runner.

        Returns True once it is terminal or passivated (``self.passivated``),
        False when a step waits for a task of its own and the runner has no
        nursery yet (never once it has one).
        """
        entry = self.entry
        take_nowait = mailbox.take_nowait
        while entry.instance.status not in TERMINAL:
            if self.pending:
                return False
            message = take_nowait()
            if message is None:
                entry.runner = self
                inline = self.inline
                if inline is not None:
                    # Queued messages came first; from now on callers apply their
                    # requests themselves while the step runs here.
                    self.inline = None
                    await self.run_chain(mailbox, *inline)
                    continue
                if self.idle():
                    message = await self.idle_wait(mailbox)
                    if message is None:
                        # From here on requests go by mail: the supervisor sees them.
                        entry.runner = None
                        self.passivated = True
                        return True
                else:
                    message = await mailbox.take()
            if message is not WAKE:
                await self.handle(message)
        return True

    def idle(self) -> bool:
        """Whether the instance could do without its runner: waiting, no step running."""
        return (
            self.engine.passivate_after is not None
            and not self.scopes
            and self.entry.instance.status is Status.WAITING
        )

    async def idle_wait(self, mailbox: Mailbox) -> Message | None:
        """The next message, or None once the runner may passivate (idle ``passivate_after`` s).

        It passivates only holding the token, so no caller is half-way through
        a request that this runner should carry out.
        """
        delay = self.engine.passivate_after
        assert delay is not None
        token = self.entry.token
        while True:
            if delay > 0:
                with trio.move_on_after(delay):
                    return await mailbox.take()
            message = mailbox.take_nowait()
            if message is not None:
                return message
            if not self.idle():
                return await mailbox.take()
            if token.try_acquire():
                token.release()
                return None
            await token.changed()  # a caller is applying a request: let it finish, look again

    async def apply_request(self, event: Input) -> Reply:
        """Apply a caller's request; the caller holds the token and releases it after.

        Returns the reply to wait on: already answered when the request was
        applied (and persisted), or pending when it was handed to the
        supervisor because the snapshot was replaced under us. The write is
        shielded from the caller (:meth:`Engine.request_write`): a caller
        cancelled meanwhile gets its cancellation at the next checkpoint, with
        the request applied.

        Raises:
            EventRejected: the instance cannot take ``event`` (nothing changed).
            EngineClosed: the engine closed during the write (nothing acknowledged).
            Exception: the storage's error when the write failed (nothing changed);
                a bug in the transition, which also crashes this runner.
        """
        entry = self.entry
        before = entry.instance
        engine = self.engine
        try:
            transition = apply(self.workflow, before, event, engine.clock.now())
        except EventRejected:
            raise
        except Exception as exc:
            self.post_fault(exc)  # a bug: the supervisor restarts the runner
            raise
        if transition.changed:
            handed = await self.persist_request(event, transition)
            if handed is not None:
                return handed
        if engine.telemetry.enabled:
            self.report(event, before, transition)
        if entry.runner is self:  # else the engine is closing: the next open_engine goes on
            self.carry_out(transition.commands)
        reply = Reply()
        reply.set(transition.reply)
        return reply

    async def persist_request(self, event: Input, transition: Transition) -> Reply | None:
        """Store a caller's changed ``transition`` and adopt it; the caller holds the token.

        Returns None once it is stored, or the pending reply of the request
        handed to the supervisor when the snapshot was replaced under us.

        Raises:
            EngineClosed: the engine closed during the write (nothing acknowledged).
            Exception: the storage's error when the write failed (nothing changed).
        """
        entry = self.entry
        with self.engine.request_write() as scope:
            try:
                with applying(event, transition.reply):
                    await self.engine.storage.put(
                        transition.instance, expected_revision=entry.instance.revision
                    )
            except RevisionConflict as exc:
                reply = Reply()
                self.post_fault(SnapshotReplaced(Message(event, reply), exc))
                return reply
            except LeaseLost as exc:
                self.post_fault(exc)  # shared storage: another engine holds it; drop it here
                raise
            except Exception as exc:
                self.storage_error(exc, failures=1, retry_in=None)
                raise
        if scope.cancelled_caught:
            raise EngineClosed("the engine closed before the request was acknowledged")
        entry.instance = transition.instance
        return None

    async def apply_passive(self, event: Input) -> Reply:
        """Apply a caller's request to a passivated instance; the caller holds the token.

        ``self`` is not running: it lends its transition, write and telemetry
        code. The snapshot is loaded from storage for the request and dropped
        again after it, unless a step must run: timers are armed and disarmed
        in the timer service directly, a step to run makes the instance
        resident again, a finished instance leaves the registry. A snapshot
        that is not the one the index record names (changed or deleted under
        the engine) is handed with the request to a runner, whose supervisor
        reports it and goes on from what is stored. Returns the reply to wait
        on, as :meth:`apply_request`.

        Raises:
            EventRejected: the instance cannot take ``event`` (nothing changed).
            EngineClosed: the engine closed during the write (nothing acknowledged).
            Exception: the storage's error when the read or the write failed
                (nothing changed); a bug in the transition, which is also
                reported as a crash of the instance's runner (``runner.crash``).
        """
        entry = self.entry
        engine = self.engine
        try:
            try:
                loaded = await self.load_passive()
            except LeaseLost:
                raise  # the caller routes the request again
            except Exception as exc:
                self.storage_error(exc, failures=1, retry_in=None, operation="get")
                raise
            if not loaded:
                reply = Reply()
                engine.activate(entry, (), [Message(event, reply)])
                return reply
            before = entry.instance
            try:
                transition = apply(self.workflow, before, event, engine.clock.now())
            except EventRejected:
                raise
            except Exception as exc:
                self.post_fault(exc)  # a bug: reported and counted like a runner's crash
                engine.activate(entry, ())
                raise
            if transition.changed:
                handed = await self.persist_request(event, transition)
                if handed is not None:
                    engine.activate(entry, ())  # its supervisor reloads what is stored
                    return handed
            if engine.telemetry.enabled:
                self.report(event, before, transition)
            self.carry_out_passive(transition.commands)
            reply = Reply()
            reply.set(transition.reply)
            return reply
        finally:
            if entry.state is State.PASSIVE:
                entry.passivate()

    async def fire_passive(self, timer_id: str) -> None:
        """Apply a due timer to a passivated instance; the caller holds the token.

        Like :meth:`apply_passive`, without a runner unless a step must run.
        What the engine must not lose goes to a runner instead: when the read
        or the write fails, or what is stored is not what the index record
        names, the instance becomes resident and its supervisor goes on from
        storage (the runner retries a failing write with backoff; the timer,
        still in the stored snapshot, fires again); a bug in the transition is
        reported as a runner crash. Cancelled (the engine closing), nothing is
        stored and the next ``open_engine`` fires the timer.
        """
        entry = self.entry
        engine = self.engine
        event = TimerFired(timer_id=timer_id)
        try:
            try:
                loaded = await self.load_passive()
            except LeaseLost:
                return  # dropped meanwhile: its new owner fires the timer
            except Exception as exc:
                self.storage_error(exc, failures=1, retry_in=RETRY_FIRST, operation="get")
                loaded = False
            if not loaded:
                engine.activate(entry, ())  # no snapshot: the supervisor reloads it
                return
            before = entry.instance
            try:
                transition = apply(self.workflow, before, event, engine.clock.now())
            except Exception as exc:
                self.post_fault(exc)
                engine.activate(entry, ())
                return
            if transition.changed:
                try:
                    await engine.storage.put(transition.instance, expected_revision=before.revision)
                except RevisionConflict:
                    entry.passivate()  # the record keeps the revision this engine wrote
                    engine.activate(entry, ())
                    return
                except Exception:
                    # The runner applies it again and retries the write with backoff.
                    engine.activate(entry, (), [Message(event)])
                    return
                entry.instance = transition.instance
            if engine.telemetry.enabled:
                self.report(event, before, transition)
            self.carry_out_passive(transition.commands)
        finally:
            if entry.state is State.PASSIVE:
                entry.passivate()

    async def load_passive(self) -> bool:
        """Load a passivated instance's snapshot into its entry; the caller holds the token.

        Returns False, loading nothing, when what is stored is not what the
        index record names: another revision, another workflow, or nothing.

        Raises:
            LeaseLost: shared storage: the engine dropped the instance during the
                read (its lease expired); nothing may be written for it, since a
                write now would go out under the engine's new lease.
            Exception: the storage's error (nothing loaded).
        """
        entry = self.entry
        try:
            stored = await self.engine.storage.get(entry.id)
        except CorruptSnapshot:
            return False  # quarantined and reported by the storage
        if entry.state is State.DROPPED:
            raise LeaseLost(f"instance {entry.id!r} was dropped while it was read")
        workflow = self.workflow
        if (
            stored is None
            or stored.revision != entry.revision
            or stored.workflow != workflow.name
            or stored.version != workflow.version
        ):
            return False
        entry.instance = stored
        return True

    def carry_out_passive(self, commands: Iterable[Command]) -> None:
        """Carry out what a transition of a passivated instance says, without a runner.

        Timers are armed and disarmed in the timer service; steps to run make
        the instance resident (a runner starts them); a finished instance
        leaves the registry.
        """
        engine = self.engine
        entry = self.entry
        steps: list[Command] = []
        instance_id = entry.id
        for command in commands:
            match command:
                case ArmTimer(timer=timer):
                    engine.timers.arm(instance_id, timer.id, timer.deadline)
                case DisarmTimer(timer_id=timer_id):
                    engine.timers.disarm(instance_id, timer_id)
                case RunStep():
                    steps.append(command)
                case StartChild() | CancelChild():
                    engine._carry_out_child(command)
        if entry.instance.status.is_terminal:
            engine.finish_passive(entry)
        elif steps:
            engine.activate(entry, steps)

    def post_fault(self, fault: Exception) -> None:
        """Make the runner raise ``fault`` before it takes any other message."""
        entry = self.entry
        mailbox = entry.mailbox
        if mailbox is None:  # passivated: the runner that raises it is about to start
            mailbox = entry.mailbox = Mailbox()
        mailbox.put_back([Message(Recover(), fault=fault)])

    async def handle(self, message: Message) -> None:
        """Apply one message under the token: transition, persist, carry out, acknowledge.

        Raises:
            Exception: the message's fault, or whatever broke the runner.
        """
        if message.fault is not None:
            raise message.fault
        reply = message.reply
        if reply is None:  # the engine's own input: a step outcome, a timer, a recovery
            await self.apply_own(message.input)
            return
        entry = self.entry
        token = entry.token
        if not token.try_acquire():
            await token.acquire()
        try:
            before = entry.instance
            engine = self.engine
            try:
                transition = apply(self.workflow, before, message.input, engine.clock.now())
            except EventRejected as exc:
                reply.fail(exc)
                return
            except BaseException as exc:
                reply.fail(exc)
                raise
            if transition.changed:
                with applying(message.input, transition.reply):
                    stored = await self.persist(transition.instance, before.revision, message)
                if not stored:
                    return  # the request's write failed: it was not applied, and said so
                entry.instance = transition.instance
            if engine.telemetry.enabled:
                self.report(message.input, before, transition)
            self.carry_out(transition.commands, inline=True)
            reply.set(transition.reply)
        finally:
            token.release()

    async def run_chain(self, mailbox: Mailbox, key: str, attempt: int) -> None:
        """Run inline step ``key``, apply its outcome, and go on while the next step is inline.

        This is the runner loop's path for steps that run one after another in
        its own task, in one frame: as long as nothing was mailed while a step
        ran, its outcome is the next message the loop would take, so it is
        applied here (as :meth:`apply_own` does) without the trip through the
        mailbox. Otherwise the outcome is queued behind what came, and the
        loop takes over.

        Raises:
            trio.Cancelled: the instance finished (cancelled) or the engine is closing.
            SnapshotReplaced, LeaseLost, Exception: as :meth:`apply_own`.
        """
        entry = self.entry
        engine = self.engine
        workflow = self.workflow
        steps = workflow.steps
        telemetry = engine.telemetry
        token = entry.token  # the resident instance's: it keeps it while it has a runner
        outer = self.scope
        lent = self.lent
        if lent is not None and (lent.scope.cancel_called or self.nursery is not None):
            lent = None  # spent, or a nursery is open under it: a scope of its own, inside
        with trio.CancelScope() if lent is None else lent as scope:
            self.scope = scope  # what finishing the instance cancels while steps run here
            try:
                while True:
                    definition = steps[key]
                    if definition.limiter is not None or telemetry.enabled:
                        event = await self.run_inline(key, attempt)
                    else:
                        # run_inline without telemetry or a limiter, written out. Cancelled
                        # already, no step code runs.
                        await trio.lowlevel.checkpoint_if_cancelled()
                        current = entry.snapshot
                        assert current is not None  # resident while its runner runs
                        ctx = step_context(workflow, current, key, attempt)
                        try:
                            event = outcome(definition, attempt, await definition.fn(ctx))  # type: ignore[misc]
                        except BaseException as exc:
                            if must_propagate(exc):
                                raise
                            event = failed(definition, attempt, exc)
                        if isinstance(event, ChildRequested):
                            event = engine.children.resolve(workflow, entry.instance, event)
                    # Resident: callers holding the token may have replaced it meanwhile.
                    before = entry.snapshot
                    assert before is not None
                    if not mailbox.empty() or self.pending or before.status in TERMINAL:
                        mailbox.put(Message(event))  # behind what came meanwhile
                        return
                    if token.held:
                        await token.acquire()
                    else:
                        token.held = True
                    try:
                        before = entry.snapshot
                        assert before is not None
                        try:
                            transition = apply(workflow, before, event, engine.clock.now())
                        except EventRejected:
                            return
                        if transition.changed:
                            instance = transition.instance
                            try:
                                await engine.storage.put(
                                    instance, expected_revision=before.revision
                                )
                            except Exception as exc:
                                await self.own_write_failed(instance, before.revision, exc)
                            entry.snapshot = instance
                        if telemetry.enabled:
                            self.report(event, before, transition)
                        commands = transition.commands
                        following = self.lone_inline(commands)
                        if following is None:
                            # A lone Finished, carried out here with no step task, stops
                            # nothing (carry_out's case for it): most instances end so.
                            if (
                                self.scopes
                                or len(commands) != 1
                                or type(commands[0]) is not Finished
                            ):
                                self.carry_out(commands, inline=True)
                        else:
                            key, attempt = following.step, following.attempt
                    finally:
                        token.release()
                    if following is None:
                        inline = self.inline
                        if inline is None or not mailbox.empty():
                            return  # the loop takes it from here
                        self.inline = None
                        key, attempt = inline
                    elif not mailbox.empty():
                        # Behind what came meanwhile: the loop's turn.
                        self.inline = (key, attempt)
                        return
            finally:
                self.scope = outer

    async def own_write_failed(self, instance: Instance, expected: int, exc: Exception) -> None:
        """Handle a failed write of the engine's own input: retry it until it is stored.

        Raises:
            SnapshotReplaced: ``exc`` says the stored revision is not ``expected``.
            LeaseLost: ``exc`` is that (shared storage): the instance is dropped here.
            trio.Cancelled: the engine is closing during the retries.
        """
        if isinstance(exc, RevisionConflict):
            raise SnapshotReplaced(None, exc) from None
        if isinstance(exc, LeaseLost):
            raise exc
        await self.persist_with_backoff(instance, expected, exc)

    async def apply_own(self, event: Input) -> None:
        """Apply the engine's own input (no caller waits on it) under the token.

        That is a step's outcome, a timer that fired or a recovery: its write
        must be stored, so a failing one is retried with backoff
        (:meth:`persist_with_backoff`) without re-running anything. An input
        the instance no longer takes (``EventRejected``) changes nothing.

        Raises:
            SnapshotReplaced: the stored revision is not the one this runner wrote last.
            LeaseLost: shared storage: another engine holds the instance now.
            trio.Cancelled: the engine is closing (nothing of ``event`` is stored).
            Exception: a bug in the transition.
        """
        entry = self.entry
        token = entry.token
        if not token.try_acquire():
            await token.acquire()
        try:
            before = entry.instance
            engine = self.engine
            try:
                transition = apply(self.workflow, before, event, engine.clock.now())
            except EventRejected:
                return
            if transition.changed:
                instance = transition.instance
                expected = before.revision
                try:
                    await engine.storage.put(instance, expected_revision=expected)
                except Exception as exc:
                    await self.own_write_failed(instance, expected, exc)
                entry.instance = instance
            if engine.telemetry.enabled:
                self.report(event, before, transition)
            self.carry_out(transition.commands, inline=True)
        finally:
            token.release()

    async def persist(self, instance: Instance, expected: int, message: Message) -> bool:
        """Store ``instance`` for a caller's request; return False if the write failed.

        The caller of ``message`` gets the storage's exception then (the
        engine's own inputs are stored by :meth:`apply_own` instead).

        Raises:
            SnapshotReplaced: the stored revision is not ``expected``.
            LeaseLost: shared storage: another engine holds the instance now.
            trio.Cancelled: the engine is closing (the caller gets EngineClosed).
        """
        reply = message.reply
        assert reply is not None
        try:
            await self.engine.storage.put(instance, expected_revision=expected)
        except RevisionConflict as exc:
            raise SnapshotReplaced(message, exc) from None
        except LeaseLost as exc:
            reply.fail(exc)
            raise
        except Exception as exc:
            self.storage_error(exc, failures=1, retry_in=None)
            reply.fail(exc)
            return False
        except BaseException as exc:
            reply.fail(self.engine.unacknowledged(exc))
            raise
        return True

    async def persist_with_backoff(
        self, instance: Instance, expected: int, first_error: Exception
    ) -> None:
        """Retry a failed write that must be stored until it is, pausing longer each time.

        Meanwhile internal messages wait their turn, and each caller request
        that arrives tries the write once more on its own behalf: it proceeds
        if that write succeeds and gets the storage's exception if not.

        Raises:
            SnapshotReplaced: a retry found the stored revision is not ``expected``.
            trio.Cancelled: the engine is closing; queued messages stay queued.
        """
        mailbox = self.entry.mailbox
        assert mailbox is not None
        put = self.engine.storage.put
        delay = RETRY_FIRST
        failures = 1
        self.storage_error(first_error, failures=failures, retry_in=delay)
        deferred: list[Message] = []
        self.entry.backoff = True
        self.entry.token.poke()  # callers waiting for the token send their requests by mail
        try:
            while True:
                wake = trio.current_time() + delay
                while (message := await _take_until(mailbox, wake)) is not None:
                    if message.fault is not None:
                        raise message.fault
                    deferred.append(message)
                    if message.reply is None:
                        continue
                    try:
                        await put(instance, expected_revision=expected)
                    except RevisionConflict as exc:
                        raise SnapshotReplaced(None, exc) from None
                    except LeaseLost:
                        raise
                    except Exception as exc:
                        deferred.pop()
                        failures += 1
                        self.storage_error(exc, failures=failures, retry_in=None)
                        message.reply.fail(exc)
                        continue
                    break
                else:
                    try:
                        await put(instance, expected_revision=expected)
                    except RevisionConflict as exc:
                        raise SnapshotReplaced(None, exc) from None
                    except LeaseLost:
                        raise
                    except Exception as exc:
                        failures += 1
                        delay = min(delay * 2, RETRY_MAX)
                        self.storage_error(exc, failures=failures, retry_in=delay)
                        continue
                _log.warning(
                    "snapshot of instance %r stored after %d failed writes",
                    self.instance.id,
                    failures,
                )
                return
        finally:
            self.entry.backoff = False
            mailbox.put_back(deferred)

    def storage_error(
        self, exc: Exception, *, failures: int, retry_in: float | None, operation: str = "put"
    ) -> None:
        """Report a failed write (or read): ``retry_in`` s until the next try, None if none."""
        if failures == 1:
            _log.warning(
                "%s the snapshot of instance %r failed (%s: %s)%s",
                "writing" if operation == "put" else "reading",
                self.entry.id,
                type(exc).__name__,
                exc,
                "" if retry_in is None else "; retrying with backoff",
            )
        if self.engine.telemetry.enabled:
            self.emit(
                "storage.error",
                metadata={
                    "operation": operation,
                    "error": type(exc).__name__,
                    "message": str(exc),
                    "failures": failures,
                    "retry_in": retry_in,
                },
            )

    def carry_out(self, commands: Sequence[Command], *, inline: bool = False) -> None:
        """Start steps, arm and disarm timers, cancel steps as ``commands`` say.

        With ``inline`` (only in the runner's own task), a lone step that may run
        inline (:meth:`inlinable`) is left in ``self.inline`` for the runner
        loop to run in this task instead of a task of its own.
        """
        nursery = self.nursery
        for command in commands:
            match command:
                case RunStep(step=step, attempt=attempt):
                    old = self.scopes.pop(step, None)
                    if old is not None:
                        old.cancel()
                    if inline and self.inlinable(step, commands):
                        self.inline = (step, attempt)
                        continue
                    scope = self.scopes[step] = trio.CancelScope()
                    if nursery is not None:
                        nursery.start_soon(self.run_step, step, attempt, scope)
                        continue
                    if self.pending is None:
                        self.pending = []
                    self.pending.append((step, attempt, scope))
                    if not inline:  # a caller's task: the runner opens its nursery
                        self.post_wake()
                case ArmTimer(timer=timer):
                    self.engine.timers.arm(self.entry.id, timer.id, timer.deadline)
                case DisarmTimer(timer_id=timer_id):
                    self.engine.timers.disarm(self.entry.id, timer_id)
                case CancelStep(step=step):
                    found = self.scopes.pop(step, None)
                    if found is not None:
                        found.cancel()
                case Finished():
                    # Stops the inline steps or the nursery with every step task; the
                    # runner itself, when it applied this, has nothing left to stop.
                    if not inline or self.scopes:
                        everything = self.scope
                        if everything is not None:
                            everything.cancel()
                        else:  # waiting for mail: it looks at the status again
                            self.post_wake()
                case StartChild() | CancelChild():
                    self.engine._carry_out_child(command)

    def lone_inline(self, commands: Sequence[Command]) -> RunStep | None:
        """The step to run inline next if ``commands`` are that one step alone, else None.

        That is :meth:`carry_out`'s inline case without carry_out: nothing else
        to carry out, no scope of an earlier attempt to cancel (an inline step
        needs no other step running).
        """
        if len(commands) != 1:
            return None
        first = commands[0]
        if type(first) is not RunStep or self.scopes or self.inline is not None:
            return None
        # inlinable() for one command, written out: this runs after every transition.
        step = first.step
        definition = self.workflow.steps[step]
        if not definition.is_async or definition.timeout is not None:
            return None
        instance = self.entry.snapshot
        assert instance is not None  # a runner's instance is resident
        if instance.active != (step,) or instance.waiting or instance.timers:
            return None
        return first

    def inlinable(self, step: str, commands: Sequence[Command]) -> bool:
        """Whether ``step`` may run in the runner's task: alone, async, without a timeout.

        Alone means no other step runs or waits and no timer is armed, so the
        runner, busy with step code, has nothing else to serve: callers apply
        their requests themselves, and a cancellation of the step always
        finishes the instance, which cancels the runner's nursery and with it
        the step code.
        """
        if self.scopes or self.inline is not None:
            return False
        definition = self.workflow.steps[step]
        if not definition.is_async or definition.timeout is not None:
            return False
        instance = self.entry.snapshot
        assert instance is not None  # a runner's instance is resident
        if instance.active != (step,) or instance.waiting or instance.timers:
            return False
        return len(commands) == 1 or sum(isinstance(c, RunStep) for c in commands) == 1

    async def run_inline(self, key: str, attempt: int) -> Input:
        """Run one attempt of ``key`` in the runner's task and return its outcome.

        Raises:
            trio.Cancelled: the instance finished (cancelled) or the engine is closing.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled already: no step code runs
        ctx = step_context(self.workflow, self.entry.instance, key, attempt)
        definition = self.workflow.steps[key]
        if definition.limiter is None:  # most steps: no limiter context to enter
            if self.engine.telemetry.enabled:
                self.started[key] = trio.current_time()
                self.emit("step.start", key, metadata={"attempt": attempt})
            # run_attempt for an async step without a timeout (the only kind that runs
            # inline), written out: one coroutine frame less on every step's path.
            try:
                result: Input = outcome(definition, attempt, await definition.fn(ctx))  # type: ignore[misc]
            except BaseException as exc:
                if must_propagate(exc):
                    raise
                result = failed(definition, attempt, exc)
        else:
            async with self.engine.limiters.hold(definition) as thread_token:
                if self.engine.telemetry.enabled:
                    self.started[key] = trio.current_time()
                    self.emit("step.start", key, metadata={"attempt": attempt})
                result = await run_attempt(definition, ctx, thread_token)
        if isinstance(result, ChildRequested):  # a SubWorkflow step: the shell names the child
            result = self.engine.children.resolve(self.workflow, self.instance, result)
        return result

    async def run_step(self, key: str, attempt: int, scope: trio.CancelScope) -> None:
        with scope:
            # Cancelled before it began (a sibling failed, the instance was cancelled, in the
            # same batch of messages that started it): its code must not run at all.
            await trio.lowlevel.checkpoint_if_cancelled()
            ctx = step_context(self.workflow, self.instance, key, attempt)
            definition = self.workflow.steps[key]
            async with self.engine.limiters.hold(definition) as thread_token:
                if self.engine.telemetry.enabled:
                    self.started[key] = trio.current_time()
                    self.emit("step.start", key, metadata={"attempt": attempt})
                result = await run_attempt(definition, ctx, thread_token)
            if self.scopes.get(key) is scope:
                del self.scopes[key]
            self.post(result)

    def post_wake(self) -> None:
        """Wake the runner loop without a message to apply (:data:`WAKE`)."""
        mailbox = self.entry.mailbox
        assert mailbox is not None
        mailbox.put(WAKE)

    def post(self, event: Input) -> None:
        if isinstance(event, ChildRequested):  # a SubWorkflow step: the shell names the child
            event = self.engine.children.resolve(self.workflow, self.instance, event)
        mailbox = self.entry.mailbox
        assert mailbox is not None
        mailbox.put(Message(event))

    # -- telemetry -----------------------------------------------------------------------------

    def emit(
        self,
        name: str,
        step: str | None = None,
        *,
        measurements: dict[str, float] | None = None,
        metadata: dict[str, object] | None = None,
    ) -> None:
        self.engine.telemetry.emit(
            name,
            instance_id=self.entry.id,
            workflow=self.workflow.name,
            step=step,
            measurements=measurements,
            metadata={"version": self.workflow.version, **(metadata or {})},
        )

    def report(self, event: Input, before: Instance, transition: Transition) -> None:
        """Emit the telemetry events that ``transition`` of ``event`` stands for (its notes)."""
        report(self.engine.telemetry, self.workflow, event, transition, started=self.started)
