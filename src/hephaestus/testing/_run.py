"""run_workflow: one instance, start to finish, under virtual time, with crashes on demand."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, final

import trio
import trio.testing

from .._core._errors import EngineClosed, EventRejected
from .._core._model import Instance, Status
from .._core._registry import check_registry
from .._core._seconds import check_seconds
from .._core._workflow import Workflow
from .._runtime._engine import Engine
from .._runtime._limiters import unlimited
from .._runtime._open import open_engine
from .._telemetry import TelemetryEvent
from ._clock import VirtualClock
from ._crash import CrashAt, CrashingStorage, CrashReport, crash_plan
from ._stubs import StepOverride, with_overrides

CANCEL: Final = "<cancel>"
"""Use as the event of a scheduled item to cancel the instance (``engine.cancel``) then."""

EVENT_LAG: Final = 0.001
"""Virtual seconds by which a scheduled event trails its nominal time.

So an event scheduled at a timer's deadline (a webhook at exactly the
timeout) deterministically arrives just after it, and every event arrives
once the zero-time work before it (stub steps, recovery) has settled.
"""

ScheduledEvent: TypeAlias = tuple[float, str] | tuple[float, str, Mapping[str, Any] | None]
"""``(delay, event)`` or ``(delay, event, payload)``: resume ``event`` ``delay`` s after start."""

_MAX_DEPTH: Final = 100
"""How deep is_stuck follows children (the registry refuses cycles; this bounds it anyway)."""

_TERMINAL_NAMES: Final = frozenset({"workflow.stop", "workflow.exception", "workflow.cancel"})


@final
@dataclass(frozen=True)
class EventOutcome:
    """What became of one scheduled event: ``reply`` ("accepted", "cancelled") or ``error``."""

    at: float
    event: str
    payload: Mapping[str, Any] | None
    reply: str | None = None
    error: str | None = None

    @property
    def rejected(self) -> bool:
        return self.error is not None


@final
@dataclass(frozen=True)
class WorkflowRun:
    """Everything :func:`trace_workflow` saw of one run.

    Attributes:
        instance: the final (terminal) snapshot.
        events: what became of each scheduled event, in the order sent.
        snapshots: every snapshot persisted, in order (lost writes excluded).
        telemetry: every telemetry event the engines emitted, in order.
        crashes: the crashes that happened and the writes they lost.
    """

    instance: Instance
    events: tuple[EventOutcome, ...]
    snapshots: tuple[Instance, ...]
    telemetry: tuple[TelemetryEvent, ...]
    crashes: tuple[CrashReport, ...]

    @property
    def rejected(self) -> tuple[EventOutcome, ...]:
        """The scheduled events the engine rejected (they came too late, or nobody wanted them)."""
        return tuple(e for e in self.events if e.rejected)

    @property
    def writes(self) -> int:
        """How many snapshots the engine wrote after the start one (lost ones included)."""
        return len(self.snapshots) - 1 + len(self.crashes)

    @property
    def attempts(self) -> tuple[tuple[str, int], ...]:
        """``(step, attempt)`` of every step attempt that started, crashed runs included."""
        return tuple(
            (e.step or "", int(e.metadata.get("attempt", 0)))
            for e in self.telemetry
            if e.name == "step.start"
        )


@final
class WorkflowStuck(AssertionError):
    """The instance stopped making progress before reaching a terminal status.

    It waits for events no one will send (the schedule is exhausted) and no
    timer is pending. ``instance`` is the snapshot it is stuck in.
    """

    def __init__(self, message: str, instance: Instance) -> None:
        super().__init__(message)
        self.instance = instance


def run_workflow(
    workflow: Workflow,
    value: str,
    initial: Mapping[str, Any] | None = None,
    *,
    events: Iterable[ScheduledEvent] = (),
    step_overrides: Mapping[str, StepOverride] | None = None,
    crash_at: CrashAt = None,
    workflows: Iterable[Workflow] = (),
) -> Instance:
    """Run one instance of ``workflow`` to a terminal status, in virtual time; return it.

    Runs ``trio.run`` with ``MockClock(autojump_threshold=0)``, an engine on a
    fresh ``MemoryStorage`` and a :class:`VirtualClock`: a workflow that waits
    30 days finishes at once. Call it from synchronous test code (hypothesis
    ``@given`` tests included); in an async test use :func:`run_workflow_async`.

    Args:
        value: the business value; the instance id is ``f"{unique key}::{value}"``.
        initial: the instance's ``initial`` data.
        events: ``(delay, event, payload)`` items: ``engine.resume(id, event,
            payload)`` ``delay`` virtual seconds after the start (plus
            :data:`EVENT_LAG`), in order of delay. ``event`` may be
            :data:`CANCEL` (``engine.cancel``). An event the engine rejects (it
            came too late, or no step can take it) does not stop the run: see
            :attr:`WorkflowRun.rejected`. Events still due after the instance
            ended are sent too, and rejected. An event interrupted by a crash
            is sent again to the recovered engine, like a client retrying.
        step_overrides: step key -> stub (an event, ``hx.Emit``, ``hx.Suspend``,
            an exception, a function, or a per-attempt list of these); see
            :func:`with_overrides`. The workflow itself is not changed.
        crash_at: kill the engine before its n-th snapshot write (an int or
            :class:`CrashPoint`, or several), reopen one on the same storage and
            carry on. Writes of child instances count too.
        workflows: more workflows to register beside ``workflow``. The children
            that its ``hx.SubWorkflow`` steps name by object (and theirs) are
            registered without asking; list those named by name here. A parent
            runs with its children: the run ends when the parent is terminal,
            and a parent waiting on a child is stuck only if the child is.

    Raises:
        WorkflowStuck: the instance can make no more progress and is not terminal.
        ValueError: an event no step declares, a bad override or crash point.
        WorkflowDefinitionError: a child workflow (named by name) is not given
            in ``workflows``, or the workflows contain each other.
        RuntimeError: called inside ``trio.run``.
    """
    return trace_workflow(
        workflow,
        value,
        initial,
        events=events,
        step_overrides=step_overrides,
        crash_at=crash_at,
        workflows=workflows,
    ).instance


async def run_workflow_async(
    workflow: Workflow,
    value: str,
    initial: Mapping[str, Any] | None = None,
    *,
    events: Iterable[ScheduledEvent] = (),
    step_overrides: Mapping[str, StepOverride] | None = None,
    crash_at: CrashAt = None,
    workflows: Iterable[Workflow] = (),
) -> Instance:
    """:func:`run_workflow` inside a running trio loop.

    It uses the loop's clock: with pytest-trio, request the ``autojump_clock``
    fixture, or timers, backoffs and scheduled events really sleep.
    """
    run = await trace_workflow_async(
        workflow,
        value,
        initial,
        events=events,
        step_overrides=step_overrides,
        crash_at=crash_at,
        workflows=workflows,
    )
    return run.instance


def trace_workflow(
    workflow: Workflow,
    value: str,
    initial: Mapping[str, Any] | None = None,
    *,
    events: Iterable[ScheduledEvent] = (),
    step_overrides: Mapping[str, StepOverride] | None = None,
    crash_at: CrashAt = None,
    workflows: Iterable[Workflow] = (),
) -> WorkflowRun:
    """:func:`run_workflow`, returning the whole :class:`WorkflowRun` (events, snapshots, ...)."""
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "run_workflow() starts its own trio.run; inside a trio task (an async test) "
            "use 'await run_workflow_async(...)' with the autojump_clock fixture"
        )
    run = functools.partial(
        trace_workflow_async,
        workflow,
        value,
        initial,
        events=events,
        step_overrides=step_overrides,
        crash_at=crash_at,
        workflows=workflows,
    )
    return trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))


async def trace_workflow_async(
    workflow: Workflow,
    value: str,
    initial: Mapping[str, Any] | None = None,
    *,
    events: Iterable[ScheduledEvent] = (),
    step_overrides: Mapping[str, StepOverride] | None = None,
    crash_at: CrashAt = None,
    workflows: Iterable[Workflow] = (),
) -> WorkflowRun:
    """:func:`trace_workflow` inside a running trio loop (see :func:`run_workflow_async`)."""
    schedule = _schedule(workflow, events)
    substitute = with_overrides(workflow, step_overrides or {})
    driver = _Driver(
        substitute, value, dict(initial or {}), schedule, CrashingStorage(crash_plan(crash_at))
    )
    driver.others = _family(substitute, workflows)
    check_registry([substitute, *driver.others])  # open_engine would; say it before running
    return await driver.run()


def _family(workflow: Workflow, extra: Iterable[Workflow]) -> list[Workflow]:
    """``extra`` plus every child workflow object reachable from ``workflow``, each once."""
    found: list[Workflow] = []
    for given in extra:
        if not isinstance(given, Workflow):
            raise TypeError(f"workflows must hold hx.Workflow objects, got {given!r}")
        if all(given is not known for known in found):
            found.append(given)
    frontier = [workflow, *found]
    while frontier:
        for spec in frontier.pop().children.values():
            child = spec.workflow
            if (
                isinstance(child, Workflow)
                and child is not workflow
                and all(child is not known for known in found)
            ):
                found.append(child)
                frontier.append(child)
    return found


def _schedule(
    workflow: Workflow, events: Iterable[ScheduledEvent]
) -> list[tuple[float, str, dict[str, Any] | None]]:
    declared = {event for step in workflow.steps.values() for event in step.events}
    items = []
    for item in events:
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise ValueError(f"scheduled event {item!r} must be (delay, event[, payload])")
        delay, event = item[0], item[1]
        payload = item[2] if len(item) == 3 else None
        check_seconds(delay, f"scheduled event {item!r}: delay")
        if event != CANCEL and event not in declared:
            raise ValueError(
                f"scheduled event {item!r}: no step of workflow {workflow.name!r} declares "
                f"{event!r} (declared: {sorted(declared)!r})"
            )
        items.append((float(delay), event, None if payload is None else dict(payload)))
    items.sort(key=lambda entry: entry[0])
    return items


@final
class _Driver:
    """One run: engines come and go (crashes); the instance and the schedule carry on."""

    def __init__(
        self,
        workflow: Workflow,
        value: str,
        initial: dict[str, Any],
        schedule: Sequence[tuple[float, str, dict[str, Any] | None]],
        storage: CrashingStorage,
    ) -> None:
        self.workflow = workflow
        self.value = value
        self.initial = initial
        self.schedule = schedule
        self.storage = storage
        self.instance_id = ""
        self.engine: Engine | None = None
        self.engine_changed = trio.Event()
        self.progress = trio.Event()
        self.schedule_done = not schedule
        self.outcomes: list[EventOutcome] = []
        self.telemetry: list[TelemetryEvent] = []
        self.started_at = 0.0
        self.others: list[Workflow] = []
        """The other workflows the engines register (children)."""

    def poke(self) -> None:
        """Wake the watcher: something happened that may change the verdict."""
        self.progress.set()
        self.progress = trio.Event()

    def record(self, event: TelemetryEvent) -> None:
        self.telemetry.append(event)
        self.poke()

    def set_engine(self, engine: Engine | None) -> None:
        self.engine = engine
        self.engine_changed.set()
        self.engine_changed = trio.Event()

    async def run(self) -> WorkflowRun:
        storage = self.storage
        storage.on_crash = self.poke
        clock = VirtualClock()
        self.started_at = trio.current_time()
        final: Instance | None = None
        stuck: WorkflowStuck | None = None
        async with storage, trio.open_nursery() as nursery:
            while final is None:
                try:
                    async with open_engine(
                        workflows=[self.workflow, *self.others],
                        storage=storage,
                        clock=clock,
                        telemetry=self.record,
                        limiters=self.limits(),
                    ) as engine:
                        final = await self.serve(engine, nursery)
                except WorkflowStuck as exc:
                    stuck = exc
                    nursery.cancel_scope.cancel()
                    break
                if final is None:  # crashed: recover on a new engine after the downtime
                    point = storage.crashes[-1].point
                    storage.revive()
                    await trio.sleep(point.downtime)
        if stuck is not None:
            raise stuck
        assert final is not None
        return WorkflowRun(
            instance=final,
            events=tuple(self.outcomes),
            snapshots=tuple(storage.snapshots),
            telemetry=tuple(self.telemetry),
            crashes=tuple(storage.crashes),
        )

    async def serve(self, engine: Engine, nursery: trio.Nursery) -> Instance | None:
        """Drive ``engine`` until the instance is terminal (return it) or the engine crashed."""
        self.set_engine(engine)
        try:
            if not self.instance_id:
                self.instance_id = await engine.start(self.workflow, self.value, self.initial)
                nursery.start_soon(self.send_events)
            if not await self.watch(engine):
                return None
            while not self.schedule_done:  # events due after the end: let them be rejected
                await self.progress.wait()
            return await self.stored()
        finally:
            self.set_engine(None)

    async def watch(self, engine: Engine) -> bool:
        """Return True once the instance is terminal, False when the engine crashed.

        Raises:
            WorkflowStuck: the instance is waiting for nothing that can still happen.
        """
        ended = False
        stuck: Instance | None = None

        async def wait_end(cancel_scope: trio.CancelScope) -> None:
            nonlocal ended
            await engine.wait(self.instance_id)
            ended = True
            cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_end, nursery.cancel_scope)
            while not self.storage.dead:
                progress = self.progress
                instance = await self.stored()
                if not self.storage.dead and await self.is_stuck(instance):
                    stuck = instance
                    break
                await progress.wait()
            nursery.cancel_scope.cancel()
        if stuck is not None:
            raise WorkflowStuck(self.stuck_message(stuck), stuck)
        return ended

    def limits(self) -> dict[str, int]:
        """Limiters under which the instance and its children never wait for one another."""
        limits: dict[str, int] = {}
        for workflow in (self.workflow, *self.others):
            for name, tokens in unlimited(workflow).items():
                limits[name] = limits.get(name, 0) + tokens
        return limits

    async def stored(self) -> Instance:
        """The instance as stored, read past the crash machinery.

        What is stored is what the engine acknowledged (it writes ahead), and
        a passivated instance is only in storage: reading it through the
        crashing storage could block the watcher for good at a crash.
        """
        instance = await self.storage.inner.get(self.instance_id)
        assert instance is not None, "the start was acknowledged, so it is stored"
        return instance

    async def is_stuck(self, instance: Instance, depth: int = 0) -> bool:
        """Whether ``instance`` waits for nothing that can still happen (its children too)."""
        if instance.status is not Status.WAITING or instance.timers or not self.schedule_done:
            return False
        for step in instance.waiting:
            link = instance.children.get(step)
            if link is None:
                continue  # an outside event that nobody will send
            # Read what is stored without the crash machinery: a crash while this looks
            # must not leave the watcher blocked on a dead storage.
            child = await self.storage.inner.get(link.id)
            if child is None:
                return False  # not stored yet: it is on its way
            if child.parent is None or child.parent.id != instance.id:
                return False  # the id is another's: the step is about to fail
            if depth > _MAX_DEPTH or not await self.is_stuck(child, depth + 1):
                return False
        return True

    def stuck_message(self, instance: Instance) -> str:
        waits = ", ".join(
            f"{key!r} for {list(events)!r}" for key, events in sorted(instance.waiting.items())
        )
        return (
            f"instance {instance.id!r} of workflow {instance.workflow!r} is stuck "
            f"{instance.status.value} after {trio.current_time() - self.started_at:g} virtual "
            f"s: steps wait ({waits}) for events nobody sends (the events schedule is "
            "exhausted) and no timer is pending. Schedule them with events=[(delay, event, "
            "payload)], override the step, or give it a timeout."
        )

    async def send_events(self) -> None:
        for delay, event, payload in self.schedule:
            await trio.sleep_until(self.started_at + delay + EVENT_LAG)
            # Work the engine can do at this instant (a step that does not sleep, the
            # previous event's consequences) comes first: the outcome of a schedule must
            # not depend on how many scheduler trips the engine takes to apply a request.
            await trio.testing.wait_all_tasks_blocked()
            at = trio.current_time() - self.started_at
            while True:
                engine = self.engine
                if engine is None:
                    await self.engine_changed.wait()
                    continue
                try:
                    if event == CANCEL:
                        reason = None if payload is None else payload.get("reason")
                        await engine.cancel(self.instance_id, reason)
                        reply = "cancelled"
                    else:
                        await engine.resume(self.instance_id, event, payload)
                        reply = "accepted"
                except EngineClosed:  # a crash interrupted it: retry on the next engine
                    while self.engine is engine:
                        await self.engine_changed.wait()
                    continue
                except EventRejected as exc:
                    self.outcomes.append(EventOutcome(at, event, payload, error=str(exc)))
                else:
                    self.outcomes.append(EventOutcome(at, event, payload, reply=reply))
                break
            self.poke()
        self.schedule_done = True
        self.poke()


def terminal_index(
    telemetry: Sequence[TelemetryEvent], instance_id: str | None = None
) -> int | None:
    """Return the index of the event that marks the instance terminal, if any.

    With ``instance_id``, that instance's (a run's children end before it).
    """
    for index, event in enumerate(telemetry):
        if event.name in _TERMINAL_NAMES and instance_id in (None, event.instance_id):
            return index
    return None
