"""Group commit: one directory fsync covers every rename that finished before it.

A durable put renames its snapshot into place and then needs *some*
directory fsync that started after that rename. Many runners persist at once,
so instead of one fsync each, callers share: while an fsync runs, newcomers
wait for it to end and then one of them starts the next, which covers them
all. N concurrent puts cost about two directory fsyncs, not N.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import final

import trio


@final
class GroupSync:
    """Runs a blocking ``flush`` in a worker thread, shared by concurrent callers.

    After a flush fails no flush ever starts again: every later ``sync()``
    raises. A failed fsync is not retried, because a retry may "succeed"
    without the data that the failed one lost.
    """

    __slots__ = ("_failure", "_finished", "_flush", "_limiter", "_running", "_started", "_wakeup")

    def __init__(self, flush: Callable[[], None], limiter: trio.CapacityLimiter) -> None:
        self._flush = flush
        self._limiter = limiter
        self._started = 0
        self._finished = 0
        self._running = False
        self._wakeup = trio.Event()
        self._failure: tuple[int, OSError] | None = None

    @property
    def failure(self) -> OSError | None:
        """The error of the flush that failed, if one did."""
        return None if self._failure is None else self._failure[1]

    async def sync(self) -> None:
        """Return once a flush that started after this call has succeeded.

        Cancellation while waiting for another caller's flush is fine; a flush
        this task started itself runs to its end (worker threads cannot be
        interrupted) before the cancellation is delivered.

        Raises:
            OSError: the error of the flush that should have covered this call,
                or of an earlier one that failed.
        """
        target = self._started + 1
        while True:
            if self._failure is not None and self._failure[0] <= target:
                number, exc = self._failure
                raise OSError(
                    exc.errno or errno.EIO,
                    f"directory fsync #{number} failed ({exc}); writes since then are not "
                    "known to be durable, and this store accepts no more: reopen it",
                ) from exc
            if self._finished >= target:
                await trio.lowlevel.checkpoint()
                return
            if self._running:
                await self._wakeup.wait()
                continue
            self._running = True
            self._started += 1
            number, wakeup = self._started, self._wakeup
            try:
                await trio.to_thread.run_sync(self._flush, limiter=self._limiter)
            except OSError as exc:
                self._failure = (number, exc)
            finally:
                self._running = False
                self._finished = number
                self._wakeup = trio.Event()
                wakeup.set()
