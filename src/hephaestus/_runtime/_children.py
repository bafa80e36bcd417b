"""Child instances (``hx.SubWorkflow``): carrying out what the core decided about them.

The core records a child's id in its parent before anything is started and
says, with commands, what the shell must do:

- ``StartChild``: make sure the child exists. It is given when the step asks
  for its child and again on every recovery while the step waits, so a crash
  before the child was stored is healed; a child already there (with this
  parent link) is not started twice, and one that has already ended is
  reported to the parent, which heals a crash between the child ending and the
  parent hearing of it.
- ``CancelChild``: cancel the child of a step that stopped waiting (the parent
  was cancelled, or failed in another branch).

When a child ends (its runner lets go of it, or a request finishes it while
passivated) its parent is told with ``ChildFinished``, through the parent's
ordinary request path (its write token). A child recovered while its parent
no longer waits for it (the parent was cancelled and the engine died before
the child was) is cancelled.

Each of these runs as a task of the engine's nursery and never holds the
parent's token while it works on the child. A storage error is retried with
capped exponential backoff (``storage.error`` telemetry); the engine closing
cancels the task, and the next ``open_engine`` does it again from what is
stored.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar, final

import msgspec
import trio

from .._core._engine import (
    CancelChild,
    ChildFinished,
    ChildRequested,
    ChildStartFailed,
    Input,
    StartChild,
    StepFailed,
)
from .._core._errors import (
    AlreadyRunning,
    EngineClosed,
    EventRejected,
    InstanceNotFound,
    InvalidBusinessKey,
    RunnerFailed,
    UnknownWorkflow,
)
from .._core._model import Instance, ParentLink
from .._core._subworkflow import child_instance_id
from .._core._workflow import Workflow
from ._registry import State
from ._runner import RETRY_FIRST, RETRY_MAX

if TYPE_CHECKING:
    from ._engine import Engine

_log = logging.getLogger("hephaestus.engine")

_GONE = (State.FINISHED, State.GONE, State.DELETING)

_T = TypeVar("_T")


@final
class Children:
    """One engine's side of parent and child instances."""

    __slots__ = ("engine",)

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- resolving what a step asked for (runs in the parent's runner) -------------------------

    def resolve(self, workflow: Workflow, parent: Instance, event: ChildRequested) -> Input:
        """Fill in the child workflow and id of ``event``; a step failure if there is none."""
        spec = workflow.children[event.step]
        engine = self.engine
        wanted = spec.workflow
        if isinstance(wanted, str):
            child = engine._latest.get(wanted)
        else:
            child = engine._workflows.get((wanted.name, wanted.version))
            if child is not wanted:
                child = None
        if child is None:
            return StepFailed(
                step=event.step,
                attempt=event.attempt,
                error_type=UnknownWorkflow.__name__,
                message=f"SubWorkflow step {event.step!r}: workflow {spec.name!r} is not "
                "registered with this engine: pass it in open_engine(workflows=[...])",
            )
        try:
            child_id = child_instance_id(child, event.value, parent.id, event.step)
        except InvalidBusinessKey as exc:
            return StepFailed(
                step=event.step,
                attempt=event.attempt,
                error_type=InvalidBusinessKey.__name__,
                message=f"SubWorkflow step {event.step!r}: {exc}",
            )
        return msgspec.structs.replace(
            event, child_id=child_id, workflow=child.name, version=child.version
        )

    # -- commands -------------------------------------------------------------------------------

    def carry_out(self, command: StartChild | CancelChild) -> None:
        """Start the task that carries out ``command`` (it never blocks the caller)."""
        if isinstance(command, StartChild):
            self._spawn(self._start, command)
        else:
            self._spawn(self._cancel, command)

    def finished(self, instance: Instance) -> None:
        """Tell the parent of ``instance``, which has just become terminal, if it has one."""
        if instance.parent is not None and instance.status.is_terminal:
            self._spawn(self._tell, instance)

    def recovered(self, instance: Instance) -> None:
        """Check that the parent of recovered active ``instance`` still waits for it."""
        if instance.parent is not None and not instance.status.is_terminal:
            self._spawn(self._check_orphan, instance)

    def _spawn(self, work: Callable[[_T], Awaitable[None]], arg: _T) -> None:
        self.engine._nursery.start_soon(self._with_backoff, work, arg)

    async def _with_backoff(self, work: Callable[[_T], Awaitable[None]], arg: _T) -> None:
        """Run ``work(arg)`` until it succeeds, pausing longer after each storage error."""
        delay = RETRY_FIRST
        failures = 0
        while True:
            try:
                await work(arg)
            except EngineClosed:
                return  # the next open_engine does it again from what is stored
            except Exception as exc:
                failures += 1
                if failures == 1:
                    _log.warning(
                        "hx.SubWorkflow bookkeeping failed (%s: %s); retrying",
                        type(exc).__name__,
                        exc,
                    )
                engine = self.engine
                if engine.telemetry.enabled:
                    engine.telemetry.emit(
                        "storage.error",
                        metadata={
                            "operation": "child",
                            "error": type(exc).__name__,
                            "message": str(exc),
                            "failures": failures,
                            "retry_in": delay,
                        },
                    )
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            else:
                return

    async def _find(self, instance_id: str) -> Instance | None:
        """The instance's current snapshot: the registry's, else the stored one."""
        entry = self.engine._registry.get(instance_id)
        if entry is not None and entry.state not in _GONE and entry.snapshot is not None:
            return entry.snapshot
        return await self.engine.storage.get(instance_id)  # or passivated: an index record

    async def _start(self, command: StartChild) -> None:
        link, parent = command.child, command.parent
        engine = self.engine
        workflow = engine._workflows.get((link.workflow, link.version))
        while True:
            existing = await self._find(link.id)
            if existing is not None and existing.parent == parent:
                if existing.status.is_terminal:
                    await self._tell(existing)
                return  # it tells the parent when it ends
            if existing is not None and not existing.status.is_terminal:
                await self._send(
                    parent,
                    ChildStartFailed(
                        step=parent.step,
                        attempt=parent.attempt,
                        child_id=link.id,
                        error_type=AlreadyRunning.__name__,
                        message=f"SubWorkflow step {parent.step!r}: instance {link.id!r} is "
                        f"already {existing.status.value} and is not this step's child: give "
                        "the step a value=... that no other instance uses",
                    ),
                )
                return
            if workflow is None:  # the version that was asked for is not registered now
                await self._send(
                    parent,
                    ChildStartFailed(
                        step=parent.step,
                        attempt=parent.attempt,
                        child_id=link.id,
                        error_type=UnknownWorkflow.__name__,
                        message=f"SubWorkflow step {parent.step!r}: workflow "
                        f"{link.workflow!r} v{link.version} is not registered with this engine",
                    ),
                )
                return
            try:
                await engine._create(workflow, link.id, link.initial, {}, parent=parent)
            except AlreadyRunning:
                # Started meanwhile (a second StartChild), or the id is held while its
                # finished instance is being deleted: look again in a moment.
                await trio.sleep(RETRY_FIRST)
                continue
            return

    async def _cancel(self, command: CancelChild) -> None:
        child = await self._find(command.child_id)
        if child is None or child.parent != command.parent or child.status.is_terminal:
            return
        # It may have ended meanwhile, been deleted, or be stuck until the next open_engine.
        with contextlib.suppress(EventRejected, InstanceNotFound, RunnerFailed):
            await self.engine.cancel(
                command.child_id,
                f"its parent {command.parent.id!r} stopped waiting for it "
                f"(step {command.parent.step!r})",
            )

    async def _tell(self, child: Instance) -> None:
        parent = child.parent
        assert parent is not None
        await self._send(
            parent,
            ChildFinished(
                step=parent.step,
                attempt=parent.attempt,
                child_id=child.id,
                status=child.status,
                results=child.results,
            ),
        )

    async def _send(self, parent: ParentLink, event: Input) -> None:
        """Apply ``event`` to the parent; a parent that is gone or finished needs nothing."""
        with contextlib.suppress(EventRejected, InstanceNotFound, RunnerFailed):
            await self.engine._request(parent.id, event)

    async def _check_orphan(self, child: Instance) -> None:
        link = child.parent
        assert link is not None
        parent = await self._find(link.id)
        if parent is not None and not parent.status.is_terminal:
            asked = parent.children.get(link.step)
            if (
                parent.created_at == link.run
                and link.step in parent.waiting
                and asked is not None
                and (asked.id, asked.attempt) == (child.id, link.attempt)
            ):
                return  # still wanted
        await self._cancel(CancelChild(child_id=child.id, parent=link))
