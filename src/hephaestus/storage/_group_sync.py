"""Group commit: one directory fsync covers every rename that finished before it.

A durable put renames its snapshot into place and then needs *some*
directory fsync that started after that rename. Many runners persist at once,
so instead of one fsync each, the writers share: while an fsync runs,
newcomers wait for it to end, then one of them starts the next, which covers
them all. N concurrent puts cost about two directory fsyncs, not N.

It runs in the worker threads themselves (right after the rename, in the same
thread call), so a durable put costs one hop to a thread, not two: on small
virtual machines a hop costs as much as the write.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import final


@final
class GroupSync:
    """Runs a blocking ``flush``, shared by concurrent callers. Thread-safe.

    After a flush fails no flush ever starts again: every later ``sync()``
    raises. A failed fsync is not retried, because a retry may "succeed"
    without the data that the failed one lost.
    """

    __slots__ = ("_cond", "_failure", "_finished", "_flush", "_running", "_started", "flushes")

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._cond = threading.Condition()
        self._started = 0
        self._finished = 0
        self._running = False
        self._failure: tuple[int, OSError] | None = None
        self.flushes = 0
        """How many flushes ran (for tests and benchmarks)."""

    @property
    def failure(self) -> OSError | None:
        """The error of the flush that failed, if one did."""
        failure = self._failure
        return None if failure is None else failure[1]

    def sync(self) -> None:
        """Return once a flush that started after this call has succeeded. Blocking.

        Raises:
            OSError: the error of the flush that should have covered this call,
                or of an earlier one that failed.
        """
        with self._cond:
            target = self._started + 1
        while True:
            with self._cond:
                while True:
                    if self._failure is not None and self._failure[0] <= target:
                        number, exc = self._failure
                        raise OSError(
                            exc.errno or errno.EIO,
                            f"directory fsync #{number} failed ({exc}); writes since then are "
                            "not known to be durable, and this store accepts no more: reopen it",
                        ) from exc
                    if self._finished >= target:
                        return
                    if not self._running:
                        break
                    self._cond.wait()
                self._running = True
                self._started += 1
                number = self._started
            failure: OSError | None = None
            try:
                self._flush()
            except OSError as exc:
                failure = exc
            except BaseException as exc:
                failure = OSError(errno.EIO, f"directory fsync did not complete: {exc!r}")
                raise
            finally:
                with self._cond:
                    self.flushes += 1
                    if failure is not None:
                        self._failure = (number, failure)
                    self._running = False
                    self._finished = number
                    self._cond.notify_all()
