"""PostgresStorage's notifications: one thread LISTENing on a dedicated connection.

The thread listens on ``hx_all`` (broadcasts), ``hx_sync`` (see ``flush``) and
the channel of every engine id subscribed in this process, and hands what
arrives to Trio in batches (one ``TrioToken.run_sync_soon`` per batch), where
each notification goes to the subscribers it is for. LISTEN commands are
given to the thread (it owns the connection) and acknowledged once
executed, so a subscription sees everything sent after it returns; a NOTIFY
on ``hx_sync`` wakes the thread for them (and to stop) instead of its next poll.

Delivery is best effort, as the protocol says: a lost connection is
reopened (with a short backoff) and listened on again; what was sent
meanwhile is missed, and the runtime's polling finds it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, final

import trio

from ._postgres_shared import BROADCAST, channel_of, decode_payload
from ._shared import Notification

_log: Final = logging.getLogger("hephaestus.storage")
_SYNC: Final = "hx_sync"
_WAKE: Final = "wake"
"""The payload on ``hx_sync`` that only wakes the thread (to run a command, or to stop)."""
_POLL_S: Final = 0.5
"""How long the thread waits for notifications before looking at its commands."""
_BUFFER: Final = 10_000
"""Notifications a subscriber may fall behind by before newer ones are dropped for it."""
_RECONNECT_S: Final = 0.5
_FLUSH_S: Final = 10.0


@final
class Listener:
    """The LISTEN thread of one store, and the subscriptions of this process.

    ``connect()`` opens a new autocommit connection (blocking); ``notify_sync``
    sends ``NOTIFY hx_sync, payload`` on some other connection (blocking).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        notify_sync: Callable[[str], None],
        token: trio.lowlevel.TrioToken,
        describe: str,
    ) -> None:
        self._connect = connect
        self._notify_sync = notify_sync
        self.token = token
        self._commands: queue.SimpleQueue[tuple[str, Callable[[], None]] | None] = (
            queue.SimpleQueue()
        )
        self._channels: set[str] = {BROADCAST, _SYNC}
        self._subscribers: dict[int, tuple[str, trio.MemorySendChannel[Notification]]] = {}
        self._keys = itertools.count()
        self._syncs: dict[str, trio.Event] = {}
        self._stopped = threading.Event()
        self.reconnects = 0
        self._ready = trio.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"hephaestus-pg-listen {describe}", daemon=True
        )
        self._thread.start()

    @asynccontextmanager
    async def subscribe(
        self, engine_id: str
    ) -> AsyncIterator[trio.abc.ReceiveChannel[Notification]]:
        """Yield a channel of ``engine_id``'s notifications and the broadcasts (see listen)."""
        await self._ready.wait()
        channel = channel_of(engine_id)
        if channel not in self._channels:
            done = trio.Event()
            self._channels.add(channel)
            self._commands.put((channel, done.set))
            await trio.to_thread.run_sync(self._notify_sync, _WAKE)  # not at the next poll
            await done.wait()
        send, receive = trio.open_memory_channel[Notification](_BUFFER)
        key = next(self._keys)
        self._subscribers[key] = (engine_id, send)
        try:
            async with receive:
                yield receive
        finally:
            del self._subscribers[key]
            send.close()

    async def flush(self) -> bool:
        """Wait until what was notified before this call reached the subscribers.

        PostgreSQL delivers the notifications of committed transactions in
        commit order, so once a NOTIFY sent now comes back, everything
        committed before it has come too. Returns False after ``_FLUSH_S`` without it.
        """
        await self._ready.wait()
        marker = f"sync-{id(self)}-{time.monotonic_ns()}"
        event = trio.Event()
        self._syncs[marker] = event
        try:
            await trio.to_thread.run_sync(self._notify_sync, marker)
            with trio.move_on_after(_FLUSH_S):
                await event.wait()
            return event.is_set()
        finally:
            del self._syncs[marker]

    def stop(self) -> None:
        """End the thread and close its connection. Blocking."""
        self._stopped.set()
        self._commands.put(None)
        with contextlib.suppress(Exception):  # wakes the thread; else it ends at its next poll
            self._notify_sync(_WAKE)
        self._thread.join()

    # -- the thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        conn: Any = None
        try:
            while not self._stopped.is_set():
                if conn is None:
                    conn = self._open()
                    if conn is None:
                        continue
                try:
                    self._run_commands(conn)
                    notes = [
                        (n.channel, n.payload) for n in conn.notifies(timeout=_POLL_S, stop_after=1)
                    ]
                except Exception as exc:  # the connection broke: reopen it
                    _log.warning("PostgreSQL listener connection lost (%s); reconnecting", exc)
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
                    self.reconnects += 1
                    continue
                if notes:
                    with contextlib.suppress(trio.RunFinishedError):
                        self.token.run_sync_soon(self._deliver, notes)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def _open(self) -> Any:
        try:
            conn = self._connect()
            for channel in sorted(self._channels):
                conn.execute(f'LISTEN "{channel}"'.encode())
        except Exception as exc:
            _log.warning("PostgreSQL listener cannot connect (%s); retrying", exc)
            self._stopped.wait(_RECONNECT_S)
            return None
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(self._ready.set)
        return conn

    def _run_commands(self, conn: Any) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command is None:
                return
            channel, done = command
            conn.execute(f'LISTEN "{channel}"'.encode())
            with contextlib.suppress(trio.RunFinishedError):
                self.token.run_sync_soon(done)

    # -- in the Trio thread -------------------------------------------------------------

    def _deliver(self, notes: list[tuple[str, str]]) -> None:
        for channel, payload in notes:
            if channel == _SYNC:
                event = self._syncs.get(payload)
                if event is not None:
                    event.set()
                continue
            note = decode_payload(payload)
            if note is None:
                continue
            target = getattr(note, "engine_id", None)
            for engine_id, send in list(self._subscribers.values()):
                if target is None or target == engine_id:
                    # Best effort: a subscriber that falls behind polls instead.
                    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                        send.send_nowait(note)


SYNC_CHANNEL: Final = _SYNC
