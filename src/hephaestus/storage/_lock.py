"""The store's exclusive lock: ``flock`` on a lock file that names its holder.

``flock`` (not POSIX ``lockf``) because its lock belongs to the open file
description: a second opener in the same process is refused too, and closing
some unrelated descriptor of the file does not silently drop the lock. The
kernel releases the lock when the holder dies, so a crash never leaves the
store locked; the pid in the file is only there for the error message.
"""

from __future__ import annotations

import fcntl
import os
from typing import Final, final

from .._core._errors import StorageLocked

LOCK_NAME: Final = "hephaestus.lock"


@final
class StoreLock:
    """An acquired lock; ``release()`` gives it back. Blocking: call from a thread."""

    __slots__ = ("_fd", "path")

    def __init__(self, fd: int, path: str) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, directory: str) -> StoreLock:
        """Take the exclusive lock of the store in ``directory`` without waiting.

        Raises:
            StorageLocked: naming the directory and the holder's pid when another
                open file description (another process, or another FileStorage
                in this one) holds the lock.
            OSError: when the lock file cannot be opened or locked.
        """
        return cls.acquire_file(os.path.join(directory, LOCK_NAME), directory)

    @classmethod
    def acquire_file(cls, path: str, store: str) -> StoreLock:
        """Take the exclusive lock on the lock file ``path`` of the store ``store``.

        Raises:
            StorageLocked: naming ``store`` and the holder's pid.
            OSError: when the lock file cannot be opened or locked.
        """
        directory = store
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StorageLocked(
                f"the store {directory!r} is locked by {holder}: another engine or "
                "storage object has it open. Close that one first, or open this store "
                "with read_only=True to look at it"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path)

    def release(self) -> None:
        """Clear the holder pid and release the lock; releasing twice is harmless."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # only the pid shown to the next waiter is stale; the lock still goes
        finally:
            os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process (pid unknown)"
