"""Record, and fail on purpose, the os calls FileStorage makes inside one directory.

``Syscalls(monkeypatch, root)`` wraps ``os.open``, ``os.write``, ``os.fsync``,
``os.close``, ``os.replace`` and ``os.unlink``. Only calls on paths under
``root`` (and on descriptors opened there) are counted and traced, so trio's
own machinery is never disturbed. ``arm(n, mode)`` makes the n-th counted call
fail with ``OSError``: ``before`` it runs, ``after`` it ran, or (for a write)
``short``: half the bytes are written and the next write fails with ENOSPC.
With ``persistent=True`` every later call fails too.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest

Mode = Literal["before", "after", "short"]
TraceEntry = tuple[Any, ...]


class Syscalls:
    """The recorder and fault injector; see the module docstring."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        self.root = str(root)
        self.count = 0
        self.trace: list[TraceEntry] = []
        self.names: list[str] = []
        self.fail_at: int | None = None
        self.mode: Mode = "before"
        self.persistent = False
        self.errno = errno.EIO
        self.skip_fsync: Literal["file", "dir"] | None = None
        self._enospc_next_write = False
        self._fds: dict[int, str] = {}
        self._lock = threading.Lock()
        for name in ("open", "write", "fsync", "close", "replace", "unlink"):
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))

    def arm(self, n: int | None, mode: Mode = "before", *, persistent: bool = False) -> None:
        """Fail the n-th counted call from now (None: fail nothing); reset the trace."""
        self.count = 0
        self.trace.clear()
        self.names.clear()
        self.fail_at = n
        self.mode = mode
        self.persistent = persistent
        self._enospc_next_write = False

    def _relevant(self, name: str, args: tuple[Any, ...]) -> bool:
        if name in ("open", "replace", "unlink"):
            return str(os.fspath(args[0])).startswith(self.root)
        return args[0] in self._fds

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                if not self._relevant(name, args):
                    return real(*args, **kwargs)
                self.count += 1
                n = self.count
                self.names.append(name)
                failing = self.fail_at is not None and (
                    n == self.fail_at or (self.persistent and n > self.fail_at)
                )
                injected = OSError(self.errno, f"injected {os.strerror(self.errno)}: {name} #{n}")
                if name == "write" and self._enospc_next_write:
                    raise OSError(errno.ENOSPC, "injected: no space left on device")
                if name == "fsync" and self.skip_fsync is not None:
                    is_dir = self._fds[args[0]] == self.root
                    if is_dir == (self.skip_fsync == "dir"):
                        return None  # the fsync a broken writer would forget
                if failing and self.mode == "short" and name == "write":
                    fd, data = args
                    half = max(1, len(data) // 2)
                    result = real(fd, data[:half])
                    self.trace.append(("write", fd, bytes(data[:result])))
                    self._enospc_next_write = True
                    return result
                if failing and self.mode == "before" and name != "close":
                    raise injected
                result = real(*args, **kwargs)
                self._record(name, args, result)
                if failing:
                    raise injected
                return result

        return wrapper

    def _record(self, name: str, args: tuple[Any, ...], result: Any) -> None:
        if name == "open":
            path = os.fspath(args[0])
            self._fds[result] = path
            self.trace.append(("open", path, result))
        elif name == "write":
            self.trace.append(("write", args[0], bytes(args[1][:result])))
        elif name == "fsync":
            self.trace.append(("fsync", args[0]))
        elif name == "close":
            self.trace.append(("close", args[0]))
            del self._fds[args[0]]
        elif name == "replace":
            self.trace.append(("replace", os.fspath(args[0]), os.fspath(args[1])))
        elif name == "unlink":
            self.trace.append(("unlink", os.fspath(args[0])))
