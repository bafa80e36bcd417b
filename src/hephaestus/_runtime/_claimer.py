"""The claimer: one task per engine that takes over work no live engine holds.

It asks the store for runnable instances (steps to run), due ones (a timer
reached by the store's clock) and mailed ones (pending inbox rows) whose
owner is null or not live, ``BATCH`` at a time, and gives each the recovery
``open_engine`` gives stored instances on one engine: steps that were
running run again, timers are re-armed, pending inbox rows are served.
Between batches it sleeps until the earliest timer that will fall due, at
most TTL/4, or until a notification says work was released.

Telemetry: ``engine.claim`` per non-empty batch (``instances``), and
``engine.takeover`` for each instance another engine (or an older epoch of
this one) owned.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import trio

from ..storage._shared import LeaseLost

if TYPE_CHECKING:
    from ._shared import SharedRuntime

_log = logging.getLogger("hephaestus.engine")

BATCH: Final = 64
"""Instances claimed per query; a full batch is followed by another at once."""


async def claim_loop(runtime: SharedRuntime) -> None:
    """Claim and adopt work until cancelled; never raises anything else."""
    store = runtime.store
    engine = runtime.engine
    while True:
        runtime.claimer_wake = trio.Event()
        delay = runtime.poll
        try:
            batch = await store.claim(runtime.lease, limit=BATCH)
        except LeaseLost:
            batch = None  # the heartbeat starts a new epoch; claim again after it
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
                if runtime.adopt(claimed) is None:
                    unheld.append(claimed.instance.id)
                else:
                    engine._nursery.start_soon(runtime.serve_inbox, claimed.instance.id)
            for instance_id in unheld:
                engine._nursery.start_soon(runtime.serve_unheld, instance_id)
            if len(batch.claimed) >= BATCH:
                await trio.lowlevel.checkpoint()
                continue
            if batch.next_due is not None:
                # A store clock a little behind ours must not make this a busy loop.
                until = batch.next_due - engine.clock.now()
                delay = min(delay, until if until > 0 else runtime.poll / 100)
        with trio.move_on_after(delay):
            await runtime.claimer_wake.wait()
