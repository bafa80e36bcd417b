"""Group commit: the queue a writer thread takes batches from, and the thread itself."""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Final, Generic, Protocol, TypeVar, final

import outcome
import trio

_T = TypeVar("_T")

_STOP: Final = object()


@final
class BatchQueue(Generic[_T]):
    """A thread-safe queue whose consumer takes everything queued so far, up to ``limit``.

    Producers (any thread) :meth:`put` items; :meth:`stop` ends the consumer
    once it has taken what was queued before it.
    """

    __slots__ = ("_limit", "_queue", "_stopped")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._queue: queue.SimpleQueue[_T | object] = queue.SimpleQueue()
        self._stopped = False

    def put(self, item: _T) -> None:
        """Queue ``item``; never blocks."""
        self._queue.put(item)

    def stop(self) -> None:
        """Tell the consumer to end after the items queued so far; never blocks."""
        self._queue.put(_STOP)

    def take(self) -> list[_T] | None:
        """Wait for the next batch: the first item queued and every one behind it, up to ``limit``.

        Returns None once :meth:`stop` was called and everything queued before
        it has been taken. Blocking: call it from the consumer thread only.
        """
        if self._stopped:
            return None
        first = self._queue.get()
        if first is _STOP:
            self._stopped = True
            return None
        batch: list[_T] = [first]  # type: ignore[list-item]
        while len(batch) < self._limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._stopped = True
                break
            batch.append(item)  # type: ignore[arg-type]
        return batch


class Batched(Protocol):
    """A queued request: the task waiting for it and, once its batch ran, its outcome."""

    task: trio.lowlevel.Task | None
    outcome: outcome.Outcome[Any] | None


_R = TypeVar("_R", bound=Batched)


class WriterThread(Generic[_R]):
    """A thread that runs queued requests a batch at a time and wakes each one's task.

    ``submit`` from Trio; the thread takes everything queued so far
    (:class:`BatchQueue`), runs it with :meth:`_run` (which sets every
    request's ``outcome``), then reschedules each waiting task in the Trio
    thread. A subclass sets up its own state, then calls ``__init__``, which
    starts the thread.
    """

    def __init__(self, token: trio.lowlevel.TrioToken, name: str, limit: int) -> None:
        self.token = token
        self._queue: BatchQueue[_R] = BatchQueue(limit)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, request: _R) -> None:
        """Queue ``request``; its task is rescheduled with its outcome later (Trio thread)."""
        self._queue.put(request)

    def stop(self) -> None:
        """Finish what is queued, close the connection and end the thread. Blocking."""
        self._queue.stop()
        self._thread.join()

    def _run(self, batch: list[_R]) -> None:
        """In the writer thread: run ``batch`` and set every request's outcome."""
        raise NotImplementedError

    def _close(self) -> None:
        """In the writer thread, once it ends: release the connection."""
        raise NotImplementedError

    def _loop(self) -> None:
        try:
            while (batch := self._queue.take()) is not None:
                self._run(batch)
                with contextlib.suppress(trio.RunFinishedError):  # nobody waits any more
                    self.token.run_sync_soon(_deliver, batch)
        finally:
            self._close()


def _deliver(batch: list[Any]) -> None:
    """In the Trio thread: wake every task of a finished batch with its outcome."""
    for request in batch:
        assert request.task is not None
        assert request.outcome is not None
        trio.lowlevel.reschedule(request.task, request.outcome)
