"""The queue a group-commit writer thread takes its work from, a batch at a time."""

from __future__ import annotations

import queue
from typing import Final, Generic, TypeVar, final

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
