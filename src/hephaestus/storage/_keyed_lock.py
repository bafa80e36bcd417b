"""Per-key Trio locks that exist only while someone holds or waits for them."""

from __future__ import annotations

from types import TracebackType
from typing import final

import trio


@final
class KeyedLock:
    """``async with locks.hold(key):`` serialises the tasks that use the same key."""

    __slots__ = ("_locks",)

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    def hold(self, key: str) -> _Hold:
        """Return an async context manager holding the lock of ``key``."""
        return _Hold(self, key)

    def is_held(self, key: str) -> bool:
        """True while some task holds or waits for ``key``."""
        return key in self._locks


@final
class _Hold:
    __slots__ = ("_key", "_owner")

    def __init__(self, owner: KeyedLock, key: str) -> None:
        self._owner = owner
        self._key = key

    async def __aenter__(self) -> None:
        locks = self._owner._locks
        lock, users = locks.get(self._key, (None, 0))
        if lock is None:
            lock = trio.Lock()
        locks[self._key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._forget(lock)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lock, _ = self._owner._locks[self._key]
        lock.release()
        self._forget(lock)

    def _forget(self, lock: trio.Lock) -> None:
        locks = self._owner._locks
        _, users = locks[self._key]
        if users == 1:
            del locks[self._key]
        else:
            locks[self._key] = (lock, users - 1)
