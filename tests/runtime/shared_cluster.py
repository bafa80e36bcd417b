"""Several engines sharing one MemorySharedStorage in one trio run, each killable or pausable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

import hephaestus as hx
from hephaestus.storage._shared_memory import MemorySharedConnection

from .helpers import Recorder

TTL = 2.0


@dataclass
class Node:
    """One engine "process": its engine, its connection, and the scope that ends it."""

    engine: hx.Engine
    conn: MemorySharedConnection
    scope: trio.CancelScope
    events: Recorder
    closed: trio.Event
    """Set once its ``open_engine`` has returned."""

    @property
    def engine_id(self) -> str:
        shared = self.engine.shared
        assert shared is not None
        return shared.engine_id

    def kill(self) -> None:
        """SIGKILL: the connection refuses everything and every task stops; no release."""
        self.conn.kill()
        self.scope.cancel()

    def stop(self) -> None:
        """A graceful exit: open_engine returns and releases the lease."""
        self.scope.cancel()


async def _run(
    store: hx.MemorySharedStorage,
    workflows: Sequence[hx.Workflow],
    options: dict[str, Any],
    *,
    task_status: trio.TaskStatus[Node],
) -> None:
    conn = store.connect()
    conn.deaf = options.pop("deaf", False)
    events = Recorder()
    closed = trio.Event()
    try:
        with trio.CancelScope() as scope:
            async with hx.open_engine(
                workflows=workflows,
                storage=conn,
                clock=options.pop("clock"),
                telemetry=events,
                **options,
            ) as engine:
                node = Node(engine=engine, conn=conn, scope=scope, events=events, closed=closed)
                task_status.started(node)
                await trio.sleep_forever()
    finally:
        closed.set()


async def spawn(
    nursery: trio.Nursery,
    store: hx.MemorySharedStorage,
    workflows: Sequence[hx.Workflow],
    clock: Any,
    **options: Any,
) -> Node:
    """Start an engine on its own connection to ``store``; it runs until killed or stopped.

    ``deaf=True`` makes its connection lose every notification.
    """
    node: Node = await nursery.start(_run, store, workflows, {"clock": clock, **options})
    return node
