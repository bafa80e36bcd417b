"""Engine: the public operations and the path a caller's request takes.

This module is what callers see: start, resume, cancel, get, list, wait,
retry, delete and prune, each checking its arguments and then applying the
request under the instance's write token (or mailing it to the runner that
holds it). It keeps the registry, a dict of :class:`~._registry.Entry` by
instance id, and recovers stored instances when the engine opens. What an
entry is lives in :mod:`._registry`; what keeps a runner going, and what
happens when it crashes, lives in :mod:`._supervisor`; the runner tasks it
runs in, in :mod:`._workers`; timers in :mod:`._timers`.
"""

from __future__ import annotations

import gc
import logging
import secrets
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Literal, final

import trio

from .._core._codec import check_text, detached_instance, stored_copy
from .._core._definitions import check_definition, definition_changed, definition_problems
from .._core._engine import (
    ArmTimer,
    Cancel,
    CancelChild,
    CancelTimer,
    Command,
    Deliver,
    Input,
    Recover,
    RunStep,
    ScheduleResume,
    StartChild,
    TimerFired,
    Transition,
    apply,
    apply_without_graph,
    new_instance,
    prunable,
    prune_statuses,
    start_new,
)
from .._core._engine import Retry as RetryInput
from .._core._errors import (
    AlreadyRunning,
    EngineClosed,
    EventRejected,
    HephaestusError,
    InstanceNotFound,
    InvalidResult,
    RevisionConflict,
    RunnerFailed,
    UnknownWorkflow,
    WorkflowDefinitionError,
)
from .._core._ids import build_instance_id
from .._core._model import TERMINAL, Instance, ParentLink, Status
from .._core._registry import check_registry
from .._core._seconds import check_seconds
from .._core._terminal import answer_terminal
from .._core._workflow import Workflow
from .._telemetry import Telemetry
from ..storage._protocol import Storage
from ..storage._shared import LeaseLost
from ._admission import Admission
from ._children import Children
from ._clock import Clock
from ._limiters import Limiters
from ._mailbox import Mailbox, Message, Reply
from ._paging import check_page_args, for_each_page, query_page
from ._registry import Entry, State
from ._runner import Runner
from ._supervisor import drain, reload, stuck_message, supervise
from ._timers import TimerService
from ._workers import Workers

if TYPE_CHECKING:
    from ._shared import SharedRuntime

_log = logging.getLogger("hephaestus.engine")

_ACTIVE = (Status.PENDING, Status.RUNNING, Status.WAITING)


@final
class Engine:
    """A running engine: start, resume, cancel, inspect and await instances.

    Get one from :func:`open_engine`; it is valid only inside that block.
    Every method is async and checkpoints.
    """

    def __init__(
        self,
        *,
        workflows: Iterable[Workflow],
        storage: Storage,
        clock: Clock,
        telemetry: Telemetry,
        max_restarts: int,
        restart_window: float,
        nursery: trio.Nursery,
        passivate_after: float | None = None,
        limiters: Limiters | None = None,
    ) -> None:
        self.storage = storage
        self.limiters = Limiters({}) if limiters is None else limiters
        """The concurrency limits that step attempts naming one hold (:mod:`._limiters`)."""
        self.passivate_after = passivate_after
        """Seconds a waiting instance keeps its runner with nothing to do; None: always."""
        self.clock = clock
        self.telemetry = telemetry
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self._nursery = nursery
        self.shared: SharedRuntime | None = None
        """The shared-storage path (leases, claims, inbox) when the storage is shared."""
        self._registry: dict[str, Entry] = {}
        self._closed = False
        self._writes: set[trio.CancelScope] = set()
        self._workflows: dict[tuple[str, int], Workflow] = {}
        self._latest: dict[str, Workflow] = {}
        for workflow in workflows:
            if not isinstance(workflow, Workflow):
                raise TypeError(f"workflows must hold hx.Workflow objects, got {workflow!r}")
            key = (workflow.name, workflow.version)
            if key in self._workflows and self._workflows[key] is not workflow:
                raise WorkflowDefinitionError(
                    workflow.name,
                    [
                        f"two different workflows are registered as {workflow.name!r} version "
                        f"{workflow.version}: give one of them another version"
                    ],
                )
            self._workflows[key] = workflow
            latest = self._latest.get(workflow.name)
            if latest is None or latest.version < workflow.version:
                self._latest[workflow.name] = workflow
        check_registry(self._workflows.values())
        self.children = Children(self)
        """Parent and child instances (hx.SubWorkflow)."""
        self.admission = Admission(self, list(self._workflows.values()))
        """Slots and queues of the workflows with a max_active."""
        self.workers = Workers(self, nursery, supervise)
        self._recovering: list[Entry] | None = None
        """While recovery builds the registry: the entries whose runners are to start."""
        """Runner tasks waiting for the next instance to run (:mod:`._workers`)."""
        self.timers = TimerService(clock, self._timer_due)
        """Every armed timer of every instance; one task of the engine nursery fires them."""
        nursery.start_soon(self.timers.run)

    # -- public API ----------------------------------------------------------------------------

    @property
    def workflows(self) -> list[Workflow]:
        """The registered workflows."""
        return list(self._workflows.values())

    async def start(
        self,
        workflow: Workflow | str,
        value: str,
        initial: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Create an instance and persist it before returning its id.

        A caller cancelled during the write gets the cancellation and no id;
        if the write landed anyway, the instance is run all the same (and its
        id is held until it finishes), otherwise the id is free again.

        Raises:
            UnknownWorkflow: the workflow (or that version) is not registered.
            InvalidBusinessKey: ``value`` is not a valid business value.
            InvalidResult: ``initial`` or ``metadata`` is not a msgpack-serialisable dict,
                or ``workflow``/``version`` has the wrong type.
            AlreadyRunning: an active instance holds the id in the unique scope.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # the storage write below schedules
        self._check_open()
        _check_workflow_arg(workflow, version)
        wf = self._resolve(workflow, version)
        suffix = secrets.token_hex(4) if wf.unique.scope == "none" else None
        instance_id = build_instance_id(wf.unique, value, suffix, version=wf.version)
        # Deep copies, encoded as they will be stored: the caller keeps nothing of ours.
        initial_dict = {} if initial is None else stored_copy(_as_dict(initial), "initial") or {}
        metadata_dict = (
            {} if metadata is None else stored_copy(_as_dict(metadata), "metadata") or {}
        )
        return await self._create(wf, instance_id, initial_dict, metadata_dict)

    async def _create(
        self,
        wf: Workflow,
        instance_id: str,
        initial: dict[str, Any],
        metadata: dict[str, Any],
        *,
        parent: ParentLink | None = None,
        replace_finished: bool = True,
    ) -> str:
        """Store a new instance of ``wf`` under ``instance_id`` and run it (or queue it).

        ``initial`` and ``metadata`` are the caller's checked copies. Started
        at once, or stored PENDING when ``wf``'s ``max_active`` is full (see
        :mod:`._admission`). A caller cancelled during the write is treated as
        in :meth:`start` (the claim is settled by :meth:`_settle_claim`).
        A finished instance under the id is replaced, unless ``replace_finished``
        is false (a schedule's tick: any instance stored under its id, finished
        or not, means the tick ran; the store's revision check decides).

        Raises:
            AlreadyRunning: an active instance holds the id (or any instance
                does, without ``replace_finished``).
        """
        held = self._registry.get(instance_id)
        if held is not None and held.state is not State.FINISHED:
            raise self._already_running(wf, instance_id, held)
        now = self.clock.now()
        admitted = self.admission.try_admit(wf.name, instance_id)
        sequence = 0 if admitted else self.admission.next_sequence()
        transition = _first(wf, instance_id, initial, metadata, now, 0, parent, admitted, sequence)
        entry = Entry(wf, transition.instance, State.LIVE)
        # Claimed before the first await (see _claiming: this is its body, written out on
        # start's path): a concurrent start, retry or delete of the id waits or is refused.
        self._registry[instance_id] = entry
        try:
            try:
                await self.storage.put(transition.instance, expected_revision=0)
            except RevisionConflict:
                stored = await self.storage.get(instance_id)
                if stored is not None and (not stored.status.is_terminal or not replace_finished):
                    raise self._already_running(
                        wf, instance_id, Entry(None, stored, State.ORPHAN)
                    ) from None
                previous = 0 if stored is None else stored.revision
                if self.shared is not None and stored is not None:
                    await self.shared.claim_finished(wf, stored)
                transition = _first(
                    wf, instance_id, initial, metadata, now, previous, parent, admitted, sequence
                )
                entry.instance = transition.instance
                await self.storage.put(transition.instance, expected_revision=previous)
            if self._closed:  # the next open_engine recovers what was written
                self._check_open()
        except trio.Cancelled:
            # The write may have landed: the claim is settled in a task of its own, slot
            # included (_settle_claim), and the cancellation propagates.
            if self._registry.get(instance_id) is entry:
                self._nursery.start_soon(self._settle_claim, entry)
            raise
        except BaseException as exc:
            self._release_claim(entry, exc)
            if admitted:
                self.admission.release(transition.instance)
            raise
        if self.telemetry.enabled:
            self.telemetry.emit(
                "workflow.start",
                instance_id=instance_id,
                workflow=wf.name,
                metadata={"version": wf.version, "pending": not admitted},
            )
        if admitted:
            self.workers.run(entry, transition.commands)
        else:
            self._queue_pending(entry)
        return instance_id

    def _queue_pending(self, entry: Entry) -> None:
        """Keep the stored PENDING instance of ``entry`` as an index record in its queue.

        Requests mailed to it while its first write was under way are applied
        again, as requests to a passivated instance, and answered.
        """
        instance = entry.instance
        queued: list[Message] = []
        mailbox = entry.mailbox
        while mailbox is not None and (message := mailbox.take_nowait()) is not None:
            queued.append(message)
        entry.state = State.PASSIVE
        entry.passivate()
        self.admission.enqueue(instance)
        for message in queued:
            if message.fault is None:  # a fault was for a runner (a lost lease): none runs it
                self._nursery.start_soon(self._forward, instance.id, message)

    async def _forward(self, instance_id: str, message: Message) -> None:
        """Apply a request mailed to an entry that nobody will run by mail, and answer it."""
        reply = message.reply
        try:
            answer = await self._request(instance_id, message.input)
        except Exception as exc:
            if reply is not None:
                reply.fail(exc)
        else:
            if reply is not None:
                reply.set(answer)

    async def resume(
        self,
        instance_id: str,
        event: str,
        payload: Mapping[str, Any] | None = None,
        *,
        step: str | None = None,
        dedupe_key: str | None = None,
    ) -> None:
        """Deliver ``event`` to the instance; return once it is persisted.

        An event that no step is suspended on yet, but that a step which can
        still run declares, is kept in the instance's inbox (at most 1,000
        events) and delivered when such a step suspends; queued events that no
        step which can still run would take are dropped.

        A ``dedupe_key`` seen before is accepted and ignored, whatever the
        instance's status (a webhook retried after the instance finished gets
        no error). An instance remembers its 1,000 most recent keys: a key
        older than that counts as new.

        Raises:
            InstanceNotFound: no instance has that id.
            EventRejected: the instance is terminal, or no step can take the event,
                or several suspended steps can and ``step`` names none of them, or
                the inbox is full.
            DefinitionChanged: the instance's stored state does not fit its
                registered workflow definition.
            UndeclaredEvent: no step (or not ``step``) declares the event.
            InvalidResult: ``payload`` is not a msgpack-serialisable dict, or an
                argument that must be a str is not one (or is not valid Unicode).
        """
        check_text(instance_id, "instance_id")
        check_text(event, "event")
        if not event:
            raise EventRejected(f"event must be a non-empty string, got {event!r}")
        payload_dict = stored_copy(_as_dict(payload), "payload")
        check_text(step, "step", optional=True)
        check_text(dedupe_key, "dedupe_key", optional=True)
        await self._request(
            instance_id,
            Deliver(event=event, payload=payload_dict, step=step, dedupe_key=dedupe_key),
        )

    async def schedule_resume(self, instance_id: str, step: str, delay: float) -> str:
        """Arm a durable timer that resumes suspended ``step`` with ``"timeout"`` after ``delay`` s.

        Returns the timer id, for :meth:`cancel_timer`. The timer fires no
        matter how often the engine restarts meanwhile; if ``step`` is not
        suspended then, it has no effect.

        Raises:
            InstanceNotFound: no instance has that id.
            EventRejected: the instance is terminal, or has no such step, or the
                step has completed.
            UndeclaredEvent: the step does not declare ``"timeout"``.
            ValueError: ``delay`` is negative or not finite.
            InvalidResult: ``instance_id`` or ``step`` is not a str.
        """
        check_text(instance_id, "instance_id")
        check_text(step, "step")
        seconds = check_seconds(delay, "delay")
        timer_id: str = await self._request(instance_id, ScheduleResume(step=step, delay=seconds))
        return timer_id

    async def cancel_timer(self, instance_id: str, timer_id: str) -> bool:
        """Drop a pending timer; return whether it was still pending.

        Raises:
            InstanceNotFound: no instance has that id.
            InvalidResult: ``instance_id`` or ``timer_id`` is not a str.
        """
        check_text(instance_id, "instance_id")
        check_text(timer_id, "timer_id")
        found: bool = await self._request(instance_id, CancelTimer(timer_id=timer_id))
        return found

    async def cancel(self, instance_id: str, reason: str | None = None) -> None:
        """Cancel the instance: running step code is cancelled, timers dropped.

        Idempotent on a cancelled instance.

        Raises:
            InstanceNotFound: no instance has that id.
            EventRejected: the instance has completed or failed.
            InvalidResult: ``instance_id`` is not a str, or ``reason`` neither a
                str nor None (or not valid Unicode).
        """
        check_text(instance_id, "instance_id")
        check_text(reason, "reason", optional=True)
        await self._request(instance_id, Cancel(reason=reason))

    async def get(self, instance_id: str) -> Instance:
        """Return the instance's current snapshot.

        The snapshot is the caller's: mutating it changes nothing in the engine
        or in storage.

        Raises:
            InstanceNotFound: no instance has that id.
            InvalidResult: ``instance_id`` is not a str.
        """
        await trio.lowlevel.checkpoint()
        self._check_open()
        check_text(instance_id, "instance_id")
        entry = self._registry.get(instance_id)
        if entry is not None and entry.snapshot is not None:
            return detached_instance(entry.snapshot)  # the runner goes on with the original
        return await self._load(instance_id)  # decoded for this call alone (or passivated)

    async def list(
        self,
        *,
        workflow: Workflow | str | None = None,
        status: Status | Collection[Status] | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[Instance]:
        """Return the stored instances of ``workflow`` with ``status``, ordered by id.

        With ``after`` (an id) only ids greater than it; with ``limit`` at most
        that many: pass the last id of one page as ``after`` to get the next.

        Raises:
            InvalidResult: ``workflow`` is neither a Workflow, a str nor None.
            TypeError: ``limit`` is not an int or ``after`` not a str.
            ValueError: ``limit`` is negative, or ``status`` is not a Status.
        """
        self._check_open()
        if workflow is not None:
            _check_workflow_arg(workflow, None)
        name = workflow.name if isinstance(workflow, Workflow) else workflow
        if limit is not None or after is not None:
            check_page_args(limit, after)
            return await query_page(
                self.storage, workflow=name, status=status, after=after, limit=limit
            )
        return await self.storage.query(workflow=name, status=status)

    async def wait(self, instance_id: str) -> Instance:
        """Return the instance once it is terminal (at once if it already is).

        The snapshot is the caller's: mutating it changes nothing in the engine
        or in storage.

        Raises:
            InstanceNotFound: no instance has that id.
            RunnerFailed: its runner crashed past the restart budget.
            EngineClosed: the engine closed before the instance finished.
            EventRejected: this engine does not run the instance (its workflow
                is not registered), so it would never finish here.
            InvalidResult: ``instance_id`` is not a str.
        """
        # A checkpoint on every path, but one schedule point is enough: waiting for the
        # entry and reading the store (every storage operation is a checkpoint; start
        # relies on that too) are one, the other paths take a shielded one below.
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        check_text(instance_id, "instance_id")
        if self.shared is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return await self.shared.wait(instance_id)
        entry = self._registry.get(instance_id)
        if entry is None:
            try:
                stored = await self.storage.get(instance_id)  # decoded for this call alone
            except Exception:
                self._check_open()  # the engine closed during the read: say that
                raise
            if stored is None:
                raise InstanceNotFound(f"no instance with id {instance_id!r}")
            instance = stored
        else:
            if entry.state in (State.LIVE, State.PASSIVE):
                if entry.finished is None:
                    entry.finished = trio.Event()
                await entry.finished.wait()  # a checkpoint even when it is set already
                if entry.state in (State.LIVE, State.PASSIVE):  # woken by the engine closing
                    raise EngineClosed(
                        f"the engine closed before instance {instance_id!r} finished"
                    )
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
            if entry.state is State.STUCK:
                raise RunnerFailed(stuck_message(self, entry))
            if entry.state is State.GONE:
                raise InstanceNotFound(f"instance {instance_id!r} was deleted from storage")
            # An entry's instance is shared with the engine and with other waiters.
            snapshot = entry.snapshot
            instance = (
                await self._load(instance_id) if snapshot is None else detached_instance(snapshot)
            )
        if instance.status not in TERMINAL:
            workflow = self._workflows.get((instance.workflow, instance.version))
            if workflow is not None:
                check_definition(workflow, instance)
            raise EventRejected(
                f"instance {instance_id!r} is {instance.status.value} but not run by this "
                f"engine (workflow {instance.workflow!r} v{instance.version} is not registered)"
            )
        return instance

    # -- internals -----------------------------------------------------------------------------

    def _claiming(self, entry: Entry) -> _Claim:
        """Hold ``entry``'s id in the registry while the block writes its first snapshot.

        The id is claimed before the block's first await, so a concurrent
        start, retry or delete of it waits or is refused. If the block raises,
        or the engine closed meanwhile (the next ``open_engine`` recovers what
        was written), the claim is released, requests queued for the entry get
        the error, and it propagates.

        A caller cancelled during the write cannot tell whether it landed (a
        storage may acknowledge after writing), and a write that landed must
        get its runner, or the stored instance would sit unrun with its id
        blocked. So the claim is not released then: the engine settles it in a
        task of its own (:meth:`_settle_claim`) and the cancellation propagates.
        """
        return _Claim(self, entry)

    def _release_claim(self, entry: Entry, exc: BaseException) -> None:
        """Give up a claimed id whose first snapshot was not written (or may have been).

        On shared storage a write that failed with a storage error may have
        committed, under this engine's lease: the claimer looks at the id again
        (:meth:`~._shared.SharedRuntime.recheck`).
        """
        if self._registry.get(entry.id) is entry:
            del self._registry[entry.id]
        drain(self, entry, self.unacknowledged(exc))
        if self.shared is not None and not isinstance(exc, HephaestusError):
            self.shared.recheck(entry.id)

    async def _settle_claim(self, entry: Entry) -> None:
        """Run a claimed instance whose caller was cancelled during its write, if it landed.

        Reads what is stored: the snapshot the caller wrote gets its runner
        (``Recover`` first: steps that were to start run); anything else (no
        write, or an older one) releases the claim. Requests queued meanwhile
        are served, or answered with the error.
        """
        written = entry.instance
        stored = await reload(self, entry)
        if stored is None or stored.revision != written.revision:
            self.admission.release(written)
            self._release_claim(
                entry,
                InstanceNotFound(
                    f"instance {entry.id!r} was not stored: the request that wrote it was "
                    "cancelled first"
                ),
            )
            return
        entry.instance = stored
        if stored.status is Status.PENDING and self.admission.limited(stored.workflow):
            self._queue_pending(entry)
            return
        mailbox = entry.mailbox
        assert mailbox is not None
        mailbox.put_back([Message(Recover())])
        await supervise(self, entry, ())

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed("the engine is closed: use it inside 'async with open_engine()'")

    def _resolve(self, workflow: Workflow | str, version: int | None) -> Workflow:
        name = workflow.name if isinstance(workflow, Workflow) else workflow
        if version is None and isinstance(workflow, Workflow):
            version = workflow.version
        found = self._latest.get(name) if version is None else self._workflows.get((name, version))
        if found is None:
            known = ", ".join(f"{n} v{v}" for n, v in sorted(self._workflows)) or "none"
            wanted = name if version is None else f"{name} v{version}"
            raise UnknownWorkflow(
                f"workflow {wanted!r} is not registered with this engine (registered: {known}); "
                "pass it in open_engine(workflows=[...])"
            )
        if isinstance(workflow, Workflow) and found is not workflow:
            raise UnknownWorkflow(
                f"a different workflow object is registered as {name!r} v{found.version}: "
                "start the registered one, or register this one"
            )
        return found

    def _already_running(self, wf: Workflow, instance_id: str, held: Entry) -> AlreadyRunning:
        holder = held.snapshot
        if holder is not None:
            name, version = holder.workflow, holder.version
        else:  # passivated: the index record's workflow
            assert held.workflow is not None
            name, version = held.workflow.name, held.workflow.version
        same = name == wf.name and (wf.unique.scope != "version" or version == wf.version)
        if same or wf.unique.scope == "global":
            return AlreadyRunning(
                f"instance {instance_id!r} is already {held.status.value} "
                f"(workflow {name!r} v{version}); wait for it to finish "
                "or cancel it first"
            )
        return AlreadyRunning(
            f"id {instance_id!r} is held by an active instance of workflow "
            f"{name!r} v{version}; ids are shared across workflows, so give "
            f"{wf.name!r} its own hx.Unique key"
        )

    async def _load(self, instance_id: str) -> Instance:
        instance = await self.storage.get(instance_id)
        if instance is None:
            raise InstanceNotFound(f"no instance with id {instance_id!r}")
        return instance

    async def _request(self, instance_id: str, event: Input) -> Any:
        """Send ``event`` to the instance's runner and return its reply once persisted."""
        if self.shared is not None:
            return await self.shared.request(instance_id, event)
        return await self._request_here(instance_id, event)

    async def _request_here(self, instance_id: str, event: Input) -> Any:
        """Apply ``event`` in this engine (its runner, or the caller under the token).

        Raises:
            LeaseLost: shared storage: the instance was held here when the call
                began and was let go before the request was applied (its
                passivation released it while the request waited for the token
                or at its first checkpoint). Nothing was applied; the caller
                routes the request again, since this engine may no longer write it.
        """
        # Looked up before the checkpoint: the caller has just seen it held (shared storage).
        entry = self._registry.get(instance_id) if self.shared is not None else None
        held = entry is not None and entry.state in (State.LIVE, State.PASSIVE)
        await trio.lowlevel.checkpoint()
        self._check_open()
        entry = self._registry.get(instance_id)
        while entry is not None and entry.state in (State.LIVE, State.PASSIVE):
            if entry.state is State.PASSIVE:
                if entry.token.try_acquire():
                    workflow = entry.workflow
                    assert workflow is not None
                    try:
                        reply = await Runner(self, entry, workflow).apply_passive(event)
                    finally:
                        entry.token.release()
                        entry.drop_idle_token()
                    return await reply.wait()
                await entry.token.changed()
                self._check_open()
                entry = self._registry.get(instance_id)
                continue
            runner = entry.runner
            if runner is None or entry.backoff:
                # No runner takes requests directly now (starting, restarting, backing off):
                # it applies them from its mailbox in order.
                assert entry.mailbox is not None
                reply = Reply()
                entry.mailbox.put(Message(event, reply))
                return await reply.wait()
            if entry.token.try_acquire():
                try:
                    reply = await runner.apply_request(event)
                finally:
                    entry.token.release()
                return await reply.wait()
            await entry.token.changed()
            self._check_open()
            entry = self._registry.get(instance_id)
        if entry is None and held:
            # Released meanwhile: what is stored may be another engine's to change now.
            raise LeaseLost(f"instance {instance_id!r} was let go while the request waited")
        if entry is not None and entry.state is State.STUCK and not isinstance(event, Cancel):
            raise RunnerFailed(stuck_message(self, entry))
        instance = entry.instance if entry is not None else await self._load(instance_id)
        workflow = self._workflows.get((instance.workflow, instance.version))
        if workflow is None:
            if instance.status.is_terminal:
                return answer_terminal(instance, event)
            raise EventRejected(
                f"instance {instance_id!r} belongs to workflow {instance.workflow!r} "
                f"v{instance.version}, which this engine does not run; register it"
            )
        transition = apply(workflow, instance, event, self.clock.now())
        if transition.changed:  # only a stuck instance being cancelled gets here
            await self.storage.put(transition.instance, expected_revision=instance.revision)
            if entry is not None:
                entry.instance = transition.instance
                entry.mark_done(State.FINISHED)
            self._on_finished(transition.instance)
        return transition.reply

    def _timer_due(self, instance_id: str, timer_id: str) -> None:
        """Hand a due timer to its instance (the timer service calls this).

        A resident instance's runner gets it by mail; a passivated one is
        applied by a task of its own under the token (:meth:`_fire_passive`).
        """
        entry = self._registry.get(instance_id)
        if entry is None:
            return
        if entry.state is State.PASSIVE:
            self._nursery.start_soon(self._fire_passive, entry, timer_id)
        elif entry.state is State.LIVE and entry.mailbox is not None:
            entry.mailbox.put(Message(TimerFired(timer_id=timer_id)))

    async def _fire_passive(self, entry: Entry, timer_id: str) -> None:
        """Apply a due timer to a passivated instance under its token, without a runner.

        If the instance became resident meanwhile, its runner gets the timer by mail.
        """
        token = entry.token
        await token.acquire()
        try:
            if self._registry.get(entry.id) is not entry:
                return  # finished, deleted or replaced meanwhile
            if entry.state is State.PASSIVE:
                workflow = entry.workflow
                assert workflow is not None
                await Runner(self, entry, workflow).fire_passive(timer_id)
            elif entry.state is State.LIVE and entry.mailbox is not None:
                entry.mailbox.put(Message(TimerFired(timer_id=timer_id)))
        finally:
            token.release()
            entry.drop_idle_token()

    def activate(
        self, entry: Entry, commands: Sequence[Command], messages: Sequence[Message] = ()
    ) -> None:
        """Give a passivated instance its runner back.

        Its timers are still armed in the timer service, so nothing is
        re-derived; ``commands`` (steps to run) are the new runner's first, and
        ``messages`` are queued for it. An entry without a snapshot is reloaded
        from storage by its supervisor first (``Recover``).
        """
        entry.state = State.LIVE
        mailbox = entry.mailbox
        if mailbox is None:
            mailbox = entry.mailbox = Mailbox()
        for message in messages:
            mailbox.put(message)
        self.workers.run(entry, commands, False)

    def finish_passive(self, entry: Entry) -> None:
        """Let go of a passivated instance that a request finished (no runner to do it)."""
        instance_id = entry.id
        if self._registry.get(instance_id) is entry:
            del self._registry[instance_id]
        entry.mark_done(State.FINISHED)
        self.timers.disarm_all(instance_id)
        self._on_finished(entry.instance)

    def _on_finished(self, instance: Instance) -> None:
        """After terminal ``instance`` is stored and let go of: free its slot, tell its parent."""
        self.admission.release(instance)
        self.children.finished(instance)

    def _carry_out_child(self, command: StartChild | CancelChild) -> None:
        """Carry out a command about a child instance (in a task of its own)."""
        self.children.carry_out(command)

    def unacknowledged(self, exc: BaseException) -> Exception:
        """Return the error to hand a caller whose request was not acknowledged."""
        if isinstance(exc, Exception):
            return exc
        return EngineClosed("the engine closed before the request was acknowledged")

    async def _recover_all(self) -> None:
        """Give every non-terminal stored instance its runner back (or its index record).

        The cyclic garbage collector is paused meanwhile (and restored as it
        was, however this ends): decoding and indexing many instances only
        allocates, and collections triggered by those allocations would walk
        every object already built again and again (100,000 stored instances:
        most of the recovery time).
        """
        paused = gc.isenabled()
        gc.disable()
        try:
            await self._recover_each()
        finally:
            if paused:
                gc.enable()

    async def _recover_each(self) -> None:
        recovered = await self.storage.query(status=_ACTIVE)
        for instance in recovered:
            self.admission.recovered(instance)
        runners: list[Entry] = []
        self._recovering = runners
        try:
            for instance in recovered:
                self._recover_instance(instance)
        finally:
            self._recovering = None
        self.admission.fill_all()
        for entry in runners[:_RECOVERY_BATCH]:
            self.workers.run(entry, ())
        if len(runners) > _RECOVERY_BATCH:
            self._nursery.start_soon(self._start_recovered, runners, name=_START_RECOVERED)

    async def _start_recovered(self, entries: Sequence[Entry]) -> None:
        """Start the runners of recovered instances after the first batch, a batch at a time.

        Each runner's first step runs in the batch of Trio's scheduler it was
        started in: 100,000 at once would make every request wait for all of
        them. A schedule point between batches lets requests be served
        meanwhile (a request to an instance whose runner has not started is
        applied under its token, as to any runner that has not yet looked at
        its mailbox). If the engine closes first, the rest start at once, to
        end as the others do. The cyclic garbage collector stays paused until
        the last batch has started, as during the rest of recovery
        (:meth:`_recover_all`): each collection would walk every runner built
        so far (100,000 resident instances: 4.1 s to settle instead of 2-3).
        """
        started = _RECOVERY_BATCH
        paused = gc.isenabled()
        gc.disable()
        try:
            while started < len(entries):
                await trio.lowlevel.checkpoint()
                for entry in entries[started : started + _RECOVERY_BATCH]:
                    self.workers.run(entry, ())
                started += _RECOVERY_BATCH
        finally:
            for entry in entries[started:]:
                self.workers.run(entry, ())
            if paused:
                gc.enable()

    def _recover_instance(self, instance: Instance) -> None:
        """Take a stored non-terminal instance into the registry, with a runner if it needs one.

        One this engine cannot run (workflow not registered, definition
        changed) is registered ``ORPHAN`` and reported; a pending one waits
        for its workflow's ``max_active`` slot.
        """
        self.children.recovered(instance)
        workflow = self._workflows.get((instance.workflow, instance.version))
        if workflow is None:
            self._registry[instance.id] = Entry(None, instance, State.ORPHAN)
            _log.warning(
                "instance %r is %s but workflow %r v%d is not registered; left untouched",
                instance.id,
                instance.status.value,
                instance.workflow,
                instance.version,
            )
            if self.telemetry.enabled:
                self.telemetry.emit(
                    "runner.skip",
                    instance_id=instance.id,
                    workflow=instance.workflow,
                    metadata={"version": instance.version, "reason": "workflow not registered"},
                )
            return
        problems = definition_problems(workflow, instance)
        if problems:
            self._skip_changed(workflow, instance, problems)
            return
        if instance.status is Status.PENDING and self.admission.limited(workflow.name):
            self._registry[instance.id] = Entry(workflow, instance, State.PASSIVE)
            self.admission.enqueue(instance, admit=False)
            for timer in instance.timers:  # schedule_resume before it was admitted
                self.timers.arm(instance.id, timer.id, timer.deadline)
            return
        if self._recover_passive(workflow, instance):
            return
        entry = Entry(workflow, instance, State.LIVE)
        assert entry.mailbox is not None
        entry.mailbox.put(Message(Recover()))
        self._registry[instance.id] = entry
        if self._recovering is not None:
            self._recovering.append(entry)  # started by _recover_each, in batches
        else:
            self.workers.run(entry, ())

    def _recover_passive(self, workflow: Workflow, instance: Instance) -> bool:
        """Take a waiting instance back without a runner if recovering it runs nothing.

        The core says what recovery does (``Recover``): when that changes no
        state and starts no step, only its timers are armed and the entry is
        passive. Returns False when it needs a runner (or passivation is off).
        """
        if self.passivate_after is None or instance.status is not Status.WAITING:
            return False
        transition = apply(workflow, instance, Recover(), self.clock.now())
        if transition.changed or any(isinstance(c, RunStep) for c in transition.commands):
            return False
        entry = Entry(workflow, instance, State.PASSIVE)
        self._registry[instance.id] = entry
        for command in transition.commands:
            if isinstance(command, ArmTimer):
                self.timers.arm(instance.id, command.timer.id, command.timer.deadline)
            elif isinstance(command, StartChild):
                self._carry_out_child(command)
        if self.telemetry.enabled:
            self.telemetry.emit(
                "runner.init",
                instance_id=instance.id,
                workflow=workflow.name,
                metadata={"version": workflow.version, "restarts": 0, "resident": False},
            )
        return True

    def _skip_changed(
        self, workflow: Workflow, instance: Instance, problems: Sequence[str]
    ) -> None:
        """Leave an instance its definition no longer fits as stored, and report it once."""
        self._registry[instance.id] = Entry(None, instance, State.ORPHAN)
        _log.warning("%s", definition_changed(workflow, instance, problems))
        if self.telemetry.enabled:
            self.telemetry.emit(
                "runner.skip",
                instance_id=instance.id,
                workflow=instance.workflow,
                metadata={
                    "version": instance.version,
                    "reason": "definition changed",
                    "problems": list(problems),
                },
            )

    def _close(self) -> None:
        self._closed = True
        for entry in self._registry.values():
            if entry.state is State.PASSIVE and entry.finished is not None:
                entry.finished.set()  # wait() callers get EngineClosed
        for scope in self._writes:
            scope.cancel()

    @contextmanager
    def request_write(self) -> Iterator[trio.CancelScope]:
        """A scope for a caller's write: shielded from the caller, cancelled by the engine closing.

        A caller cancelled mid-write must not leave the engine unsure of what
        is stored, so only the engine's closing interrupts the write; check
        ``cancelled_caught`` afterwards.
        """
        scope = trio.CancelScope(shield=True)
        if self._closed:
            scope.cancel()
        self._writes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._writes.discard(scope)

    # -- operating instances: retry, delete, prune, paging ------------------------------------

    async def retry(self, instance_id: str) -> None:
        """Re-open a FAILED instance at the steps that failed; return once that is persisted.

        Every step the instance started but did not complete (the one that
        failed for good, and the siblings cancelled with it) runs again with a
        fresh retry budget; ``ctx.attempt`` keeps counting, so an idempotency
        key built from it never repeats. Completed steps keep their results and
        do not run again; the history is kept. A caller cancelled during the
        write gets the cancellation; if the write landed anyway, the instance
        is run all the same.

        Raises:
            InstanceNotFound: no instance has that id.
            EventRejected: the instance is not FAILED (nothing is changed).
            UnknownWorkflow: its workflow version is not registered with this
                engine, which therefore could not run it.
            TypeError: ``instance_id`` is not a str.
        """
        _check_instance_id(instance_id)
        if self.shared is not None:
            await self.shared.retry(instance_id)
            return
        await self._retry_here(instance_id)

    async def _retry_here(self, instance_id: str) -> None:
        """Apply ``retry`` in this engine (see :meth:`retry`)."""
        await trio.lowlevel.checkpoint()
        instance = await self._settled(instance_id, self._refuse_retry)
        workflow = self._workflows.get((instance.workflow, instance.version))
        now = self.clock.now()
        if workflow is None:
            apply_without_graph(instance, RetryInput(), now)  # EventRejected unless FAILED
            raise UnknownWorkflow(
                f"instance {instance_id!r} belongs to workflow {instance.workflow!r} "
                f"v{instance.version}, which this engine does not run: register that "
                "version in open_engine(workflows=[...]) to retry it"
            )
        transition = apply(workflow, instance, RetryInput(), now)
        entry = Entry(workflow, transition.instance, State.LIVE)
        with self._claiming(entry):
            await self.storage.put(transition.instance, expected_revision=instance.revision)
        # Re-opened at once, even over its workflow's max_active: it holds a slot from now.
        self.admission.recovered(transition.instance)
        if self.telemetry.enabled:
            self.telemetry.emit(
                "workflow.retry",
                instance_id=instance_id,
                workflow=workflow.name,
                metadata={
                    "version": workflow.version,
                    "steps": [c.step for c in transition.commands if isinstance(c, RunStep)],
                    "revision": transition.instance.revision,
                },
            )
        self.workers.run(entry, transition.commands)

    async def delete(self, instance_id: str) -> None:
        """Remove a finished (completed, failed or cancelled) instance from storage.

        Its id is free afterwards, as if it had never been started. Once the
        removal has begun, cancelling the caller does not interrupt it.

        Raises:
            InstanceNotFound: no instance has that id.
            EventRejected: the instance is active (cancel it first); nothing is changed.
            TypeError: ``instance_id`` is not a str.
        """
        _check_instance_id(instance_id)
        await trio.lowlevel.checkpoint()
        await self._delete_if(instance_id, _is_finished)

    async def prune(
        self, *, older_than: float, status: Status | Collection[Status] | None = None
    ) -> int:
        """Delete finished instances last updated more than ``older_than`` seconds ago.

        ``status`` narrows it to some terminal statuses (default: completed,
        failed and cancelled). Active instances are never deleted; "ago" is by
        the engine's clock. Each instance is checked again just before it is
        removed, so one retried or started again meanwhile is kept. Cancelling
        the caller stops between two deletions (those done stay done).

        Returns:
            How many instances were deleted.

        Raises:
            ValueError: ``older_than`` is not a finite number >= 0, or ``status``
                names an active status or no status at all.
        """
        seconds = check_seconds(older_than, "older_than")
        statuses = prune_statuses(status)
        await trio.lowlevel.checkpoint()
        self._check_open()
        cut = self.clock.now() - seconds

        def wanted(instance: Instance) -> str | None:
            if prunable(instance, statuses=statuses, cut=cut):
                return None
            return "no longer prunable"

        deleted = 0

        async def prune_page(page: list[Instance]) -> None:
            nonlocal deleted
            for instance in page:
                if wanted(instance) is not None:
                    continue
                try:
                    await self._delete_if(instance.id, wanted)
                except (EventRejected, InstanceNotFound):
                    continue  # changed or removed meanwhile: not ours to delete
                deleted += 1

        await for_each_page(self.storage, prune_page, status=statuses, size=_PRUNE_PAGE)
        return deleted

    async def _settled(
        self, instance_id: str, refuse_active: Callable[[Instance], None]
    ) -> Instance:
        """Return the stored instance once no runner of this engine holds it.

        A runner that is letting go of a finished instance is waited for; for
        an active one that a runner serves, ``refuse_active`` raises the answer.

        Raises:
            InstanceNotFound: no instance has that id.
            EventRejected: a runner serves the (active) instance, or it is being deleted.
            EngineClosed: the engine closed meanwhile.
        """
        while True:
            self._check_open()
            entry = self._registry.get(instance_id)
            if entry is not None and entry.state is State.DELETING:
                raise EventRejected(f"instance {instance_id!r} is being deleted")
            if entry is not None and entry.state in (State.LIVE, State.PASSIVE):
                if not entry.status.is_terminal:
                    snapshot = entry.snapshot
                    refuse_active(
                        snapshot if snapshot is not None else await self._load(instance_id)
                    )
                    raise AssertionError("refuse_active must raise")  # pragma: no cover
                if entry.finished is None:
                    entry.finished = trio.Event()
                await entry.finished.wait()  # its runner is finishing: let it go first
                continue
            instance = await self._load(instance_id)
            held = self._registry.get(instance_id)
            if held is None or held.state not in (State.LIVE, State.PASSIVE, State.DELETING):
                return instance
            # started, retried or being deleted meanwhile: look again

    def _refuse_retry(self, instance: Instance) -> None:
        apply_without_graph(instance, RetryInput(), self.clock.now())  # the core says why

    async def _delete_if(self, instance_id: str, refuse: Callable[[Instance], str | None]) -> None:
        """Delete the stored instance unless ``refuse(instance)`` gives a reason not to."""

        def refuse_active(instance: Instance) -> None:
            raise EventRejected(f"instance {instance_id!r} is not deleted: {refuse(instance)}")

        instance = await self._settled(instance_id, refuse_active)
        reason = refuse(instance)
        if reason is not None:
            raise EventRejected(f"instance {instance_id!r} is not deleted: {reason}")
        previous = self._registry.get(instance_id)
        claim = Entry(None, instance, State.DELETING)
        self._registry[instance_id] = claim  # start, retry and delete wait or refuse meanwhile
        try:
            with trio.CancelScope(shield=True):
                await self.storage.delete(instance_id)
        except BaseException:
            if self._registry.get(instance_id) is claim:
                if previous is None:
                    del self._registry[instance_id]
                else:
                    self._registry[instance_id] = previous
            raise
        if self._registry.get(instance_id) is claim:
            del self._registry[instance_id]


@final
class _Claim:
    """The context :meth:`Engine._claiming` returns (a plain class: start's hot path)."""

    __slots__ = ("engine", "entry")

    def __init__(self, engine: Engine, entry: Entry) -> None:
        self.engine = engine
        self.entry = entry

    def __enter__(self) -> None:
        self.engine._registry[self.entry.id] = self.entry

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> Literal[False]:
        engine, entry = self.engine, self.entry
        if exc is None:
            try:
                engine._check_open()
            except EngineClosed as closed:
                engine._release_claim(entry, closed)
                raise
        elif isinstance(exc, trio.Cancelled):
            if engine._registry.get(entry.id) is entry:
                engine._nursery.start_soon(engine._settle_claim, entry)
        else:
            engine._release_claim(entry, exc)
        return False


_PRUNE_PAGE: Final = 500
"""Instances prune reads per page of the store."""

_RECOVERY_BATCH: Final = 1000
"""Runners of recovered instances started per schedule point (see ``_start_recovered``)."""

_START_RECOVERED: Final = "hephaestus.engine.start_recovered"


def _first(
    wf: Workflow,
    instance_id: str,
    initial: dict[str, Any],
    metadata: dict[str, Any],
    now: float,
    stored_revision: int,
    parent: ParentLink | None,
    admitted: bool,
    sequence: int,
) -> Transition:
    """The first change of a new instance, one above ``stored_revision`` (what is stored).

    ``Start`` applied when it is ``admitted``; else stored as it is, PENDING
    until a slot frees (queued by ``sequence``).
    """
    if admitted:
        return start_new(
            wf,
            instance_id,
            initial=initial,
            metadata=metadata,
            now=now,
            stored_revision=stored_revision,
            parent=parent,
        )
    fresh = new_instance(
        wf,
        instance_id,
        initial=initial,
        metadata=metadata,
        now=now,
        previous_revision=stored_revision,
        parent=parent,
        sequence=sequence,
    )
    return Transition(fresh, (), None, changed=True)


def _check_instance_id(instance_id: object) -> None:
    if not isinstance(instance_id, str):
        raise TypeError(f"instance_id must be a str, got {instance_id!r}")


def _is_finished(instance: Instance) -> str | None:
    """Why ``delete`` refuses ``instance``, or None when it is finished."""
    if instance.status.is_terminal:
        return None
    return f"it is {instance.status.value}; only a finished instance is deleted (cancel it first)"


def _as_dict(value: Any) -> Any:
    """Turn a mapping that is no dict into one; leave anything else for stored_copy to judge."""
    return dict(value) if isinstance(value, Mapping) and not isinstance(value, dict) else value


def _check_workflow_arg(workflow: object, version: object) -> None:
    """Raise InvalidResult unless ``workflow`` is a Workflow or a name and ``version`` an int."""
    if not isinstance(workflow, Workflow):
        check_text(workflow, "workflow (an hx.Workflow or its name)")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise InvalidResult(
            f"version must be an int or None, got {type(version).__name__} {version!r}"
        )
