"""open_engine: the async context manager that runs an Engine and its supervisor nursery."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager

import trio

from .._core._admission import limits as admission_limits
from .._core._limits import check_limiters
from .._core._seconds import check_seconds
from .._core._workflow import Workflow
from .._telemetry import Telemetry, TelemetryHandler
from ..storage._memory import MemoryStorage
from ..storage._protocol import Storage
from ..storage._shared import SharedStorage
from ._admission import SharedAdmission
from ._clock import Clock, SystemClock
from ._engine import Engine
from ._lease import LeasedStorage
from ._limiters import Limiters
from ._schedules import Schedule, check_schedules, open_schedule, run_schedule
from ._shared import SharedRuntime, new_engine_id


@asynccontextmanager
async def open_engine(
    *,
    workflows: Iterable[Workflow],
    storage: Storage | None = None,
    clock: Clock | None = None,
    telemetry: TelemetryHandler | Iterable[TelemetryHandler] = (),
    max_restarts: int = 3,
    restart_window: float = 5.0,
    passivate_after: float | None = 0.0,
    limiters: Mapping[str, int] | None = None,
    schedules: Iterable[Schedule] = (),
) -> AsyncIterator[Engine]:
    """Run an engine for the length of the ``async with`` block.

    On entry every non-terminal instance in ``storage`` gets its runner back:
    steps that were running run again, persisted timers are re-armed (overdue
    ones fire at once). On exit, however it happens, every runner is
    cancelled and no task is left behind; the stored state stays for the next
    ``open_engine`` on the same storage. On a :class:`SharedStorage` the
    engine instead registers a lease and claims, in the background, the work
    no live engine holds (docs/scale-out.md); on exit it releases its lease.
    A storage that is not open yet is opened here and closed again on exit;
    one the caller opened (its ``is_open`` is true) stays open and stays the
    caller's. A storage without an ``is_open`` property is taken to be not
    open yet.

    Args:
        workflows: the workflows this engine runs.
        storage: where snapshots live; ``None`` means a new ``MemoryStorage()``.
        clock: epoch-seconds source for persisted deadlines (default ``time.time``).
        telemetry: a handler or handlers receiving ``TelemetryEvent`` objects.
        max_restarts: crashes of one instance's runner tolerated within
            ``restart_window`` seconds before it is left as stored.
        passivate_after: seconds a waiting instance with no step running keeps
            its runner task before it lets it go (its snapshot and timers stay,
            and the next request or timer gives it a runner again); ``None``
            keeps every instance's runner until it finishes.
        limiters: concurrency limits by name (``{"api": 4}``): at most that
            many attempts of the steps declared with ``limiter="api"`` run at
            once in this engine; the others wait, first come first served, and
            their timeout clocks start once they run.
        schedules: ``hx.Schedule`` values; each starts its workflow once per
            cron tick. Their stored progress is read on entry, after recovery
            (a schedule seen for the first time starts from that moment); the
            ticks missed meanwhile follow its ``catch_up`` just after.

    Raises:
        WorkflowDefinitionError: two different workflows share a name and version;
            a step names a limiter that ``limiters`` lacks, or a limit is no int >= 1;
            a schedule's workflow is not in ``workflows``, or two schedules share a name.

    On a :class:`SharedStorage`, ``max_active`` holds across every engine
    sharing it (the store counts the slots, see :class:`._admission.SharedAdmission`);
    ``limiters`` stay per engine.
    """
    workflows = list(workflows)
    limits = check_limiters(limiters, workflows)
    scheduled = check_schedules(schedules, workflows)
    handlers = [telemetry] if callable(telemetry) else list(telemetry)
    dispatcher = Telemetry(handlers)
    store: Storage = MemoryStorage() if storage is None else storage
    if getattr(store, "on_quarantine", False) is None:

        def quarantined(path: str, reason: str) -> None:
            dispatcher.emit("storage.quarantine", metadata={"path": path, "reason": reason})

        store.on_quarantine = quarantined  # type: ignore[attr-defined]
    # is_open is optional (API.md): a storage that cannot say it is open is opened here.
    opened_here = not getattr(store, "is_open", False)
    if opened_here:
        await store.aopen()
    shared: SharedRuntime | None = None
    try:
        leased: LeasedStorage | None = None
        if isinstance(store, SharedStorage):
            leased = LeasedStorage(
                store, await store.register(new_engine_id()), admission_limits(workflows)
            )
        try:
            async with trio.open_nursery() as nursery:
                engine = Engine(
                    workflows=workflows,
                    storage=store if leased is None else leased,
                    clock=clock or SystemClock(),
                    telemetry=dispatcher,
                    max_restarts=max_restarts,
                    restart_window=restart_window,
                    nursery=nursery,
                    passivate_after=(
                        None
                        if passivate_after is None
                        else check_seconds(passivate_after, "passivate_after")
                    ),
                    limiters=Limiters(limits),
                )
                if leased is None:
                    await engine._recover_all()
                else:
                    assert isinstance(store, SharedStorage)
                    shared = engine.shared = SharedRuntime(engine, store, leased)
                    engine.admission = SharedAdmission(engine, engine.workflows, shared)
                    shared.start(nursery)
                for schedule in scheduled:
                    progress = await open_schedule(engine, schedule)
                    nursery.start_soon(
                        run_schedule, engine, schedule, progress, name=f"schedule {schedule.name!r}"
                    )
                try:
                    yield engine
                finally:
                    if shared is not None:
                        shared.close()
                    engine._close()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The supervisor's own tasks never raise, so a group here carries the
            # caller's exception from the body of the block: hand it back as raised.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    finally:
        if shared is not None:
            await shared.release()
        if opened_here:
            with trio.CancelScope(shield=True):
                await store.aclose()
