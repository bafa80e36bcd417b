"""Schedules: one instance of a workflow per tick of a cron expression, exactly once per tick.

``hx.Schedule`` is the definition; :func:`run_schedule` is the engine task
that serves one (``open_engine(schedules=[...])`` starts one task per
schedule). What to start when is decided in the core (:func:`.plan`); this
module reads the clock, sleeps and starts instances.

Exactly once per tick per store: a tick's instance id is built from the
tick's UTC time (``tick_value``), so it is the same whoever computes it; a
tick whose id the store already holds (in any status) counts as started and
is never started again. The start is create-only (``Engine._create(...,
replace_finished=False)``): the store's revision check lets one writer win,
so engines sharing a store that look at one tick together start it once,
even when the winner's instance has finished before another engine's write
arrives. The schedule's record says up to which moment
every tick was dealt with, so a restart never looks at a tick twice, even
once that tick's instance has been pruned. The record is written after the
ticks it covers are started: a crash between the two makes the next engine
look at those ticks again and find their instances.

Time: ticks are epoch seconds of the engine's clock. The task sleeps in trio
time, ``trio.current_time() + (tick - clock.now())`` as the timer service
does, and starts a tick only once the engine's clock has reached it; so
under ``hx.testing.VirtualClock`` and ``MockClock(autojump_threshold=0)`` a
month of hourly ticks takes milliseconds.

Faults: a storage error while reading the record or starting a tick is
reported (``storage.error``) and retried with capped exponential backoff; a
failed write of the record is reported and tried again at the next look.
Neither stops the schedule or the engine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, final

import trio

from .._core._codec import check_text, detached_copy, stored_copy
from .._core._errors import (
    AlreadyRunning,
    CorruptSnapshot,
    EngineClosed,
    RevisionConflict,
    WorkflowDefinitionError,
)
from .._core._ids import build_instance_id
from .._core._model import Instance
from .._core._schedule import (
    CatchUp,
    advanced,
    catch_up_problem,
    new_record,
    plan,
    record_id,
    record_through,
    scope_problem,
    tick_value,
)
from .._core._workflow import Workflow
from ._clock import Clock
from ._cron import Cron, CronError
from ._runner import RETRY_FIRST, RETRY_MAX

if TYPE_CHECKING:
    from ._engine import Engine

_log = logging.getLogger("hephaestus.engine")
_T = TypeVar("_T")


@final
class Schedule:
    """Start one instance of ``workflow`` at every tick of ``cron`` (evaluated in UTC).

    Each tick's instance has the tick's UTC time as its business value
    (``20261201T081500Z``), ``initial`` as its initial data, and in its
    metadata ``schedule`` (this schedule's name) and ``tick`` (the tick in
    epoch seconds, as ``ctx.metadata["tick"]`` shows its steps); the store
    holds at most one instance per tick, whatever crashes or restarts happen.
    A schedule seen for the first time starts with the first tick after that
    moment. Ticks that fall due while no engine runs the schedule are missed;
    when an engine opens again, ``catch_up`` says which of them start:
    ``"latest"`` only the most recent, ``"all"`` every one, in order,
    ``"skip"`` none.

    Args:
        workflow: the workflow to start; it must be registered with the
            engine, and its ``hx.Unique`` scope must not be ``"none"`` (a tick's
            id must be the same whoever computes it).
        cron: five fields ``minute hour day-of-month month day-of-week``, or six
            with seconds first (cronsim's syntax), in UTC.
        initial: the initial data of every instance it starts.
        catch_up: ``"latest"``, ``"all"`` or ``"skip"``.
        name: what the schedule's progress is stored under; defaults to the
            workflow's name. Two schedules of one engine need two names.

    Raises:
        WorkflowDefinitionError: listing every problem: no workflow, scope
            ``"none"``, a cron expression cronsim cannot read, an unknown
            ``catch_up``, a ``name`` that is no non-empty str.
        InvalidResult: ``initial`` is not a msgpack-serialisable dict.
        ImportError: cronsim is not installed (``pip install 'hephaestus-trio[cron]'``).
    """

    __slots__ = ("catch_up", "cron", "initial", "name", "ticks", "workflow")

    def __init__(
        self,
        workflow: Workflow,
        *,
        cron: str,
        initial: Mapping[str, Any] | None = None,
        catch_up: CatchUp = "latest",
        name: str | None = None,
    ) -> None:
        problems: list[str] = []
        if not isinstance(workflow, Workflow):
            problems.append(f"workflow must be an hx.Workflow, got {workflow!r}")
        else:
            problems += filter(None, [scope_problem(workflow.name, workflow.unique)])
        problems += filter(None, [catch_up_problem(catch_up)])
        ticks: Cron | None = None
        try:
            ticks = Cron(cron)
        except CronError as exc:
            problems.append(str(exc))
        if name is not None and (not isinstance(name, str) or not name):
            problems.append(
                f"name must be a non-empty str (or None for the workflow's), got {name!r}"
            )
        if problems:
            label = name if name is not None else getattr(workflow, "name", None)
            raise WorkflowDefinitionError(f"hx.Schedule({label!r})", problems)
        assert ticks is not None
        name = workflow.name if name is None else check_text(name, "Schedule name")
        assert name is not None
        copied = stored_copy(dict(initial) if isinstance(initial, Mapping) else initial, "initial")
        self.workflow = workflow
        self.cron = cron
        self.ticks = ticks
        self.initial: dict[str, Any] = copied or {}
        self.catch_up: CatchUp = catch_up
        self.name = name

    def __repr__(self) -> str:
        return (
            f"Schedule({self.workflow.name!r}, cron={self.cron!r}, "
            f"catch_up={self.catch_up!r}, name={self.name!r})"
        )


def check_schedules(schedules: object, workflows: Iterable[object]) -> list[Schedule]:
    """Return ``schedules`` as a list if one engine running ``workflows`` can serve them.

    Raises:
        WorkflowDefinitionError: listing every problem: an item that is no
            ``hx.Schedule``, a schedule whose workflow is not among
            ``workflows``, two schedules with one name.
    """
    if isinstance(schedules, Schedule) or not isinstance(schedules, Iterable):
        raise WorkflowDefinitionError(
            "open_engine(schedules=...)",
            [f"schedules must be a list of hx.Schedule values, got {schedules!r}"],
        )
    found = list(schedules)
    registered = [w for w in workflows if isinstance(w, Workflow)]
    problems: list[str] = []
    names: set[str] = set()
    for schedule in found:
        if not isinstance(schedule, Schedule):
            problems.append(f"schedules must hold hx.Schedule values, got {schedule!r}")
            continue
        workflow = schedule.workflow
        if not any(w is workflow for w in registered):
            problems.append(
                f"schedule {schedule.name!r} starts workflow {workflow.name!r} "
                f"v{workflow.version}, which is not in open_engine(workflows=[...]): register it"
            )
        if schedule.name in names:
            problems.append(
                f"two schedules are called {schedule.name!r}: give one of them "
                "hx.Schedule(..., name='...') (each keeps its progress under its name)"
            )
        names.add(schedule.name)
    if problems:
        raise WorkflowDefinitionError("open_engine(schedules=...)", problems)
    return found


async def open_schedule(engine: Engine, schedule: Schedule) -> Progress:
    """Read ``schedule``'s stored progress; one seen for the first time is stored as seen now.

    ``open_engine`` calls it on entry, after recovery, so "the first time" is
    the moment an engine with the schedule opened.

    Raises:
        Exception: the storage's error reading the record (as recovery's would).
    """
    progress = Progress(engine, schedule)
    await progress.load()
    return progress


async def run_schedule(engine: Engine, schedule: Schedule, progress: Progress) -> None:
    """Start ``schedule``'s ticks as they come, from ``progress`` on, until the engine closes.

    Returns early only when the cron expression has no further tick (cronsim
    looks 50 years ahead); that is logged.

    Cancellation (the engine closing) stops it at once; a start under way is
    the engine's (stored and run, or not acknowledged). The next engine on the
    same storage goes on from the stored record.
    """
    try:
        await _serve(engine, schedule, progress)
    except EngineClosed:
        return


async def _serve(engine: Engine, schedule: Schedule, progress: Progress) -> None:
    clock = engine.clock
    ticks = schedule.ticks
    through = progress.through
    waited: float | None = None
    while True:
        now = clock.now()
        chosen = plan(ticks, through=through, now=now, waited=waited, catch_up=schedule.catch_up)
        for tick in chosen.start:
            await _retrying(engine, schedule, "start", partial(_start_tick, engine, schedule, tick))
        if chosen.skipped is not None:
            _skipped(engine, schedule, chosen.skipped)
        through = max(through, chosen.through)
        await progress.save(through)
        if chosen.through < now:
            waited = None  # "all" has more missed ticks than one plan holds: go on at once
            continue
        waited = ticks.after(through)
        if waited is None:
            _log.warning(
                "schedule %r: cron %r has no tick in the next 50 years; it starts nothing more",
                schedule.name,
                schedule.cron,
            )
            return
        await _sleep_until(clock, waited)


async def _start_tick(engine: Engine, schedule: Schedule, tick: float) -> None:
    """Start the instance of ``tick`` unless the store already holds one under its id."""
    workflow = schedule.workflow
    value = tick_value(tick)
    instance_id = build_instance_id(workflow.unique, value, version=workflow.version)
    try:
        held = await engine.storage.get(instance_id) is not None
    except CorruptSnapshot:
        held = True  # something is stored under that id: never overwrite it
    if not held:
        try:
            # Never replace a finished instance (engine.start would): it is this tick's.
            await engine._create(
                workflow,
                instance_id,
                detached_copy(schedule.initial),
                {"schedule": schedule.name, "tick": tick},
                replace_finished=False,
            )
        except AlreadyRunning:
            held = True
    if engine.telemetry.enabled:
        engine.telemetry.emit(
            "schedule.tick",
            instance_id=instance_id,
            workflow=workflow.name,
            measurements={"late": max(0.0, engine.clock.now() - tick)},
            metadata={
                "version": workflow.version,
                "schedule": schedule.name,
                "tick": value,
                "started": not held,
            },
        )


def _skipped(engine: Engine, schedule: Schedule, span: tuple[float, float]) -> None:
    first, last = (tick_value(t) for t in span)
    _log.info(
        "schedule %r: catch_up=%r leaves out missed ticks %s to %s",
        schedule.name,
        schedule.catch_up,
        first,
        last,
    )
    if engine.telemetry.enabled:
        engine.telemetry.emit(
            "schedule.skip",
            workflow=schedule.workflow.name,
            metadata={
                "version": schedule.workflow.version,
                "schedule": schedule.name,
                "first": first,
                "last": last,
            },
        )


@final
class Progress:
    """A schedule's stored record, the revision this engine last saw, and its ``through``."""

    __slots__ = ("engine", "schedule", "stored", "through")

    def __init__(self, engine: Engine, schedule: Schedule) -> None:
        self.engine = engine
        self.schedule = schedule
        self.stored: Instance | None = None
        self.through = 0.0
        """Every tick up to this moment (epoch seconds) has been started or skipped."""

    async def load(self) -> None:
        """Read ``through``; for a schedule seen for the first time, now (and store that).

        Raises:
            Exception: the storage's error reading the record.
        """
        try:
            self.stored = await self.engine.storage.get(record_id(self.schedule.name))
        except CorruptSnapshot:
            self.stored = None  # quarantined by the storage: start afresh from now
        through = None if self.stored is None else record_through(self.stored)
        if through is None:
            through = self.engine.clock.now()
            await self.save(through)
        self.through = through

    async def save(self, through: float) -> None:
        """Store ``through`` (or a later one another engine stored); report a failure, no raise."""
        self.through = max(self.through, through)
        storage = self.engine.storage
        schedule = self.schedule
        for _ in range(3):  # a conflict means another writer: read its record, write again
            stored = self.stored
            now = self.engine.clock.now()
            if stored is not None and record_through(stored) is not None:
                record = advanced(stored, through=through, now=now)
            else:
                record = new_record(
                    schedule.name,
                    workflow=schedule.workflow.name,
                    cron=schedule.cron,
                    through=through,
                    now=now,
                    previous_revision=0 if stored is None else stored.revision,
                )
            try:
                await storage.put(
                    record, expected_revision=0 if stored is None else stored.revision
                )
            except RevisionConflict:
                try:
                    self.stored = await storage.get(record.id)
                except Exception as exc:
                    _report(self.engine, schedule, "get", exc, failures=1, retry_in=None)
                    return
                continue
            except Exception as exc:
                _report(self.engine, schedule, "put", exc, failures=1, retry_in=None)
                return
            self.stored = record
            return


async def _retrying(
    engine: Engine, schedule: Schedule, operation: str, attempt: Callable[[], Awaitable[_T]]
) -> _T:
    """Return ``attempt()``, retrying with capped exponential backoff while it raises.

    Raises:
        EngineClosed: the engine closed.
    """
    delay = RETRY_FIRST
    failures = 0
    while True:
        try:
            return await attempt()
        except EngineClosed:
            raise
        except Exception as exc:
            failures += 1
            _report(engine, schedule, operation, exc, failures=failures, retry_in=delay)
        await trio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


def _report(
    engine: Engine,
    schedule: Schedule,
    operation: str,
    exc: Exception,
    *,
    failures: int,
    retry_in: float | None,
) -> None:
    if failures == 1:
        _log.warning(
            "schedule %r: %s failed (%s: %s)%s",
            schedule.name,
            operation,
            type(exc).__name__,
            exc,
            "" if retry_in is None else "; retrying with backoff",
        )
    if engine.telemetry.enabled:
        engine.telemetry.emit(
            "storage.error",
            workflow=schedule.workflow.name,
            metadata={
                "operation": operation,
                "schedule": schedule.name,
                "error": type(exc).__name__,
                "message": str(exc),
                "failures": failures,
                "retry_in": retry_in,
            },
        )


async def _sleep_until(clock: Clock, deadline: float) -> None:
    """Sleep until ``clock`` reads at least ``deadline``, sleeping in trio time between looks."""
    while (now := clock.now()) < deadline:
        current = trio.current_time()
        await trio.sleep_until(max(current + (deadline - now), math.nextafter(current, math.inf)))
