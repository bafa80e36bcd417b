"""The claimer: one task per engine that takes over work no live engine holds.

It asks the store for runnable instances (steps to run), due ones (a timer
reached by the store's clock) and mailed ones (pending inbox rows) whose
owner is null or not live, ``BATCH`` at a time, and gives each the recovery
``open_engine`` gives stored instances on one engine: steps that were
running run again, timers are re-armed, pending inbox rows are served.
Between batches it sleeps until the earliest timer that will fall due, at
most TTL/4, or until a notification says work was released.

Claims ask only for the workflow versions this engine registers (``runs``),
so an instance no engine here can run is not claimed and released again every
round; each such instance is reported once (``runner.skip``, a warning).

Each round also serves inbox rows of instances this engine holds whose
wake-up notification was lost (the store's optional ``pending_instances``),
and, for workflows with ``max_active``, has the store hand free slots to
their queues (:meth:`._admission.SharedAdmission.heal`).

Telemetry: ``engine.claim`` per non-empty batch (``instances``), and
``engine.takeover`` for each instance another engine (or an older epoch of
this one) owned.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING, Final

import trio

from ..storage._shared import LeaseLost, Unrunnable
from ._admission import SharedAdmission
from ._lease import renew
from ._registry import State

if TYPE_CHECKING:
    from ._shared import SharedRuntime

_log = logging.getLogger("hephaestus.engine")

BATCH: Final = 64
"""Instances claimed per query; a full batch is followed by another at once."""


async def claim_loop(runtime: SharedRuntime) -> None:
    """Claim and adopt work until cancelled; never raises anything else."""
    store = runtime.store
    engine = runtime.engine
    runs = frozenset((w.name, w.version) for w in engine.workflows)
    reported: set[str] = set()
    while True:
        runtime.claimer_wake = trio.Event()
        delay = runtime.poll
        seen = runtime.lease
        admission = engine.admission
        if isinstance(admission, SharedAdmission):
            await admission.heal()
        try:
            batch = await store.claim(seen, limit=BATCH, runs=runs)
        except LeaseLost:
            batch = None
            with contextlib.suppress(Exception):  # the heartbeat reports its own failures
                await renew(runtime, seen)  # paused past the TTL: new epoch, claim again
            if runtime.lease != seen:
                continue
        except Exception as exc:
            batch = None
            _log.warning(
                "engine %s could not claim work (%s: %s)",
                runtime.engine_id,
                type(exc).__name__,
                exc,
            )
            runtime.emit(
                "storage.error",
                metadata={"operation": "claim", "error": type(exc).__name__, "message": str(exc)},
            )
        if batch is not None:
            if batch.claimed:
                runtime.emit("engine.claim", measurements={"instances": len(batch.claimed)})
            unheld: list[str] = []
            for claimed in batch.claimed:
                if isinstance(admission, SharedAdmission):
                    admission.expect(claimed.instance)
                adopted = runtime.adopt(claimed)
                if isinstance(admission, SharedAdmission):
                    admission.adopted(claimed.instance.id, adopted)
                if adopted is None:
                    unheld.append(claimed.instance.id)
                else:
                    engine._nursery.start_soon(runtime.serve_inbox, claimed.instance.id)
            for instance_id in unheld:
                engine._nursery.start_soon(runtime.serve_unheld, instance_id)
            for skipped in batch.unrunnable:
                if skipped.instance_id not in reported:
                    reported.add(skipped.instance_id)
                    _report_unrunnable(runtime, skipped)
            await _serve_missed(runtime)
            await _recheck_unsure(runtime)
            if len(batch.claimed) >= BATCH:
                await trio.lowlevel.checkpoint()
                continue
            if batch.next_due is not None:
                # A store clock a little behind ours must not make this a busy loop.
                until = batch.next_due - engine.clock.now()
                delay = min(delay, until if until > 0 else runtime.poll / 100)
        runtime.claimer_wakes_at = trio.current_time() + delay
        with trio.move_on_after(delay):
            await runtime.claimer_wake.wait()
        runtime.claimer_wakes_at = math.inf  # looking now: nothing needs to wake it


def _report_unrunnable(runtime: SharedRuntime, skipped: Unrunnable) -> None:
    """Say once that an instance with work waits for an engine that runs its workflow version."""
    _log.warning(
        "instance %r has work but workflow %r v%d is not registered with engine %s; "
        "left for an engine that runs it",
        skipped.instance_id,
        skipped.workflow,
        skipped.version,
        runtime.engine_id,
    )
    runtime.emit(
        "runner.skip",
        skipped.instance_id,
        skipped.workflow,
        metadata={"version": skipped.version, "reason": "workflow not registered"},
    )


async def _recheck_unsure(runtime: SharedRuntime) -> None:
    """Claim back the instances whose first write failed but landed, owned by this engine.

    An id of ``runtime.unsure`` stays while this engine's registry holds it
    (a runner, or a ``start`` of it under way, which may fail again), or
    while the store cannot say who owns it; it leaves once the store says.
    """
    registry = runtime.engine._registry
    for instance_id in list(runtime.unsure):
        entry = registry.get(instance_id)
        if entry is not None and entry.state in (State.LIVE, State.PASSIVE):
            continue
        try:
            owner = await runtime.store.owner_of(instance_id)
        except Exception as exc:
            _log.warning(
                "engine %s could not look up the owner of %r (%s: %s)",
                runtime.engine_id,
                instance_id,
                type(exc).__name__,
                exc,
            )
            return
        runtime.unsure.discard(instance_id)
        if owner == runtime.lease:
            runtime.engine._nursery.start_soon(runtime.serve_owned, instance_id)


async def _serve_missed(runtime: SharedRuntime) -> None:
    """Serve inbox rows of instances this engine holds whose wake-up was lost.

    Uses the store's optional ``pending_instances``; a store without it
    relies on notifications alone for instances this engine holds.
    """
    pending = getattr(runtime.store, "pending_instances", None)
    if pending is None:
        return
    try:
        instance_ids: list[str] = await pending(runtime.lease)
    except Exception as exc:
        _log.warning(
            "engine %s could not look for pending requests (%s: %s)",
            runtime.engine_id,
            type(exc).__name__,
            exc,
        )
        return
    for instance_id in instance_ids:
        runtime.engine._nursery.start_soon(runtime.serve_owned, instance_id)
