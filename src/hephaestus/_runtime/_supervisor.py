"""The supervisor: keeps one instance's runner going, within the restart budget.

:func:`supervise` is what the engine runs per resident instance, in a runner
task of its own or one that ran an earlier instance (:mod:`._workers`). It
runs a :class:`~._runner.Runner` and, when the runner stops, decides what
happens to the instance:

- it finished: the entry leaves the registry (``FINISHED``);
- it passivated with an empty mailbox: the entry stays, ``PASSIVE``;
- it crashed (a bug): the crash is reported and counted; more than
  ``max_restarts`` crashes within ``restart_window`` seconds leave the
  instance ``STUCK`` as stored, otherwise a new runner starts from the stored
  snapshot with ``Recover`` as its first message;
- its snapshot was changed or deleted under it: that is reported once, not
  counted, and the next runner goes on from what is stored (or the entry is
  ``GONE``, or ``ORPHAN`` when it now belongs to another workflow or version);
- shared storage only: it passivated (the instance is released: another engine
  may claim it), or its lease was lost (it is dropped, ``DROPPED``).

Requests still queued for an instance nobody will run are answered here
(:func:`drain`), never dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import trio

from .._core._engine import Command, Recover, apply
from .._core._errors import (
    CorruptSnapshot,
    EngineClosed,
    EventRejected,
    InstanceNotFound,
    RunnerFailed,
)
from .._core._model import Instance
from .._core._workflow import Workflow
from ..storage._shared import LeaseLost
from ._mailbox import Mailbox, Message
from ._registry import Entry, State
from ._runner import RETRY_FIRST, RETRY_MAX, Runner, SnapshotReplaced
from ._workers import Lent

if TYPE_CHECKING:
    from ._engine import Engine

_log = logging.getLogger("hephaestus.engine")

# States every runner's end looks at, looked up once (a member lookup costs ~50 ns on 3.11).
_LIVE: Final = State.LIVE
_PASSIVE: Final = State.PASSIVE
_FINISHED: Final = State.FINISHED


def stuck_message(engine: Engine, entry: Entry) -> str:
    """What ``wait`` and requests answer for an instance left ``STUCK``."""
    return (
        f"instance {entry.id!r} stopped after its runner crashed more than "
        f"{engine.max_restarts} times in {engine.restart_window} s; it is left as stored "
        "and is recovered by the next open_engine on this storage"
    )


def drain(engine: Engine, entry: Entry, error: Exception) -> None:
    """Answer every message still queued for ``entry`` without running it."""
    mailbox = entry.mailbox
    if mailbox is None:
        return
    for message in _take_all(mailbox):
        if message.reply is None:
            continue
        if entry.status.is_terminal and entry.workflow is not None:
            try:
                outcome = apply(entry.workflow, entry.instance, message.input, engine.clock.now())
            except EventRejected as exc:
                message.reply.fail(exc)
            else:
                message.reply.set(outcome.reply)
        else:
            message.reply.fail(error)


async def supervise(
    engine: Engine,
    entry: Entry,
    first_commands: Sequence[Command],
    announce: bool = True,
    lent: Lent | None = None,
) -> None:
    """Run the instance's runner, restarting it from storage after a crash.

    A crash (a bug) counts against ``max_restarts``; a snapshot changed or
    deleted under the runner does not: it is reported once and the runner
    goes on from what is stored, or stops if nothing is. ``lent`` is the
    cancel scope this task holds open around the call, lent to its runners'
    inline steps (:mod:`._workers`); None: they open their own.
    """
    workflow = entry.workflow
    assert workflow is not None
    mailbox = entry.mailbox
    assert mailbox is not None
    crashes: list[float] = []
    commands: Sequence[Command] = first_commands
    try:
        if entry.snapshot is None and not await _wake(engine, entry, workflow, mailbox):
            return
        while True:
            if engine.telemetry.enabled and announce:
                engine.telemetry.emit(
                    "runner.init",
                    instance_id=entry.id,
                    workflow=workflow.name,
                    metadata={"version": workflow.version, "restarts": len(crashes)},
                )
            try:
                runner = Runner(engine, entry, workflow, lent)
                await runner.run(commands)
                if runner.passivated:
                    if mailbox.empty():
                        # Its timers stay armed; a request or one of them wakes it.
                        entry.state = State.PASSIVE
                        entry.passivate()
                        if engine.shared is not None:
                            await engine.shared.let_go(entry)
                        return
                    commands, announce = (), False  # mail came as it let go: serve it
                    continue
                break
            except Exception as exc:
                # The next runner re-arms what is stored (Recover); nothing fires meanwhile.
                engine.timers.disarm_all(entry.id)
                # The runner's nursery wraps what broke it: report that, not the group.
                cause: BaseException = exc
                while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
                    cause = cause.exceptions[0]
                if engine.shared is not None and isinstance(cause, LeaseLost):
                    engine.shared.drop(entry, cause)
                    return
                if isinstance(cause, SnapshotReplaced):
                    # Only callers' requests carry over: step outcomes and timers belong
                    # to the state that was replaced; Recover re-derives them.
                    requests = [cause.message] if cause.message is not None else []
                    queued = [m for m in [*requests, *_take_all(mailbox)] if m.reply is not None]
                    replaced = True
                else:
                    now = trio.current_time()
                    crashes = [t for t in crashes if now - t <= engine.restart_window]
                    crashes.append(now)
                    _report_crash(engine, entry, workflow, exc, cause, len(crashes))
                    if len(crashes) > engine.max_restarts:
                        entry.mark_done(State.STUCK)
                        drain(engine, entry, RunnerFailed(stuck_message(engine, entry)))
                        _log.error("%s", stuck_message(engine, entry))
                        return
                    # Recover must be the first message the new runner sees (and only once).
                    queued = [m for m in _take_all(mailbox) if not isinstance(m.input, Recover)]
                    replaced = False
            stored = await reload(engine, entry)
            if replaced:
                report_replaced(engine, entry, workflow, cause, stored)
            if not continues(engine, entry, workflow, stored, queued):
                return
            commands = ()
            for message in [Message(Recover()), *queued]:
                mailbox.put(message)
            if engine.telemetry.enabled and not replaced:
                engine.telemetry.emit(
                    "runner.restart",
                    instance_id=entry.id,
                    workflow=workflow.name,
                    metadata={"crashes": len(crashes)},
                )
        if engine._registry.get(entry.id) is entry:
            del engine._registry[entry.id]
        entry.mark_done(_FINISHED)
        engine._on_finished(entry.instance)
        if not mailbox.empty():
            drain(engine, entry, EngineClosed("instance finished"))
    finally:
        if entry.state is not _PASSIVE and engine._registry.get(entry.id) in (entry, None):
            engine.timers.disarm_all(entry.id)
        if entry.state is _LIVE:  # the engine is closing
            if entry.finished is not None:
                entry.finished.set()  # wait() callers outside the engine get EngineClosed
            drain(
                engine,
                entry,
                EngineClosed(f"the engine closed before instance {entry.id!r} answered"),
            )


async def _wake(engine: Engine, entry: Entry, workflow: Workflow, mailbox: Mailbox) -> bool:
    """Load the snapshot of an entry woken from its index record; False if nothing runs it.

    What is stored wins: if it is not what the record names (changed or
    deleted under the engine) that is reported once, its timers are re-armed
    from what is stored, and only callers' requests carry over. ``Recover`` is
    the runner's first message.
    """
    stored = await reload(engine, entry)
    queued = _take_all(mailbox)
    if stored is None or stored.revision != entry.revision:
        report_replaced(
            engine,
            entry,
            workflow,
            f"instance {entry.id!r} is not at revision {entry.revision} in storage",
            stored,
            expected=entry.revision,
        )
        engine.timers.disarm_all(entry.id)
        queued = [message for message in queued if message.reply is not None]
    if not continues(engine, entry, workflow, stored, queued):
        return False
    for message in [Message(Recover()), *queued]:
        mailbox.put(message)
    return True


def _report_crash(
    engine: Engine,
    entry: Entry,
    workflow: Workflow,
    exc: Exception,
    cause: BaseException,
    crashes: int,
) -> None:
    _log.error(
        "runner of instance %r crashed (%d in %.1f s)",
        entry.id,
        crashes,
        engine.restart_window,
        exc_info=exc,
    )
    if engine.telemetry.enabled:
        engine.telemetry.emit(
            "runner.crash",
            instance_id=entry.id,
            workflow=workflow.name,
            metadata={"error": type(cause).__name__, "message": str(cause), "crashes": crashes},
        )


async def reload(engine: Engine, entry: Entry) -> Instance | None:
    """Read the instance's stored snapshot, retrying a failing storage with backoff.

    Returns None when nothing (readable) is stored under its id any more.
    """
    instance_id = entry.id
    delay = RETRY_FIRST
    failures = 0
    while True:
        try:
            return await engine.storage.get(instance_id)
        except CorruptSnapshot:
            return None  # quarantined and reported by the storage
        except Exception as exc:
            failures += 1
            if failures == 1:
                _log.warning(
                    "reading the snapshot of instance %r failed (%s: %s); retrying",
                    instance_id,
                    type(exc).__name__,
                    exc,
                )
            if engine.telemetry.enabled:
                engine.telemetry.emit(
                    "storage.error",
                    instance_id=instance_id,
                    workflow=entry.workflow.name if entry.workflow is not None else None,
                    metadata={
                        "operation": "get",
                        "error": type(exc).__name__,
                        "message": str(exc),
                        "failures": failures,
                        "retry_in": delay,
                    },
                )
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)


def report_replaced(
    engine: Engine,
    entry: Entry,
    workflow: Workflow,
    cause: BaseException | str,
    stored: Instance | None,
    expected: int | None = None,
) -> None:
    """Say once that the snapshot changed or vanished under the instance.

    ``expected`` is the revision this engine wrote last (default: the entry's).
    """
    if expected is None:
        expected = entry.revision
    if stored is None:
        what = "was deleted from storage; this engine stops running it"
    else:
        what = (
            f"was replaced in storage (revision {stored.revision}, this engine wrote "
            f"{expected}); going on from the stored snapshot"
        )
    _log.warning("snapshot of instance %r %s", entry.id, what)
    if engine.telemetry.enabled:
        engine.telemetry.emit(
            "storage.error",
            instance_id=entry.id,
            workflow=workflow.name,
            metadata={
                "operation": "put",
                "error": "RevisionConflict",
                "message": str(cause),
                "reason": "deleted" if stored is None else "replaced",
                "expected_revision": expected,
                "stored_revision": None if stored is None else stored.revision,
            },
        )


def continues(
    engine: Engine,
    entry: Entry,
    workflow: Workflow,
    stored: Instance | None,
    queued: Sequence[Message],
) -> bool:
    """Adopt ``stored`` for the next runner; False (and ``entry`` closed) if none can run it."""
    instance_id = entry.id
    if stored is None:
        if engine._registry.get(instance_id) is entry:
            del engine._registry[instance_id]
        entry.mark_done(State.GONE)
        engine.admission.release_id(workflow.name, entry.id)
        mailbox = entry.mailbox
        assert mailbox is not None
        for message in queued:
            mailbox.put(message)
        drain(engine, entry, InstanceNotFound(f"instance {instance_id!r} was deleted from storage"))
        return False
    entry.instance = stored
    if (stored.workflow, stored.version) != (workflow.name, workflow.version):
        entry.workflow = engine._workflows.get((stored.workflow, stored.version))
        entry.mark_done(State.ORPHAN)
        mailbox = entry.mailbox
        assert mailbox is not None
        for message in queued:
            mailbox.put(message)
        drain(
            engine,
            entry,
            EventRejected(
                f"instance {instance_id!r} was replaced in storage by one of workflow "
                f"{stored.workflow!r} v{stored.version}: send the request again"
            ),
        )
        return False
    return True


def _take_all(mailbox: Mailbox) -> list[Message]:
    """Empty ``mailbox``; a fault carrying a caller's request (snapshot replaced) yields it."""
    taken: list[Message] = []
    while (message := mailbox.take_nowait()) is not None:
        if message.fault is not None:
            fault = message.fault
            if not isinstance(fault, SnapshotReplaced) or fault.message is None:
                continue  # a bug already told to its caller, or nobody's request
            message = fault.message
        taken.append(message)
    return taken
