"""VirtualClock: epoch time that follows trio's (possibly mocked) clock."""

from __future__ import annotations

from typing import Final, final

import trio

DEFAULT_EPOCH: Final = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@final
class VirtualClock:
    """Epoch seconds = ``start`` + ``trio.current_time()``.

    Pass it as ``open_engine(clock=VirtualClock())`` and run under
    ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's
    ``autojump_clock`` fixture): persisted deadlines then follow virtual time,
    so a workflow that waits 30 days finishes at once. Must be read inside
    ``trio.run``.
    """

    __slots__ = ("start",)

    def __init__(self, start: float = DEFAULT_EPOCH) -> None:
        self.start = float(start)

    def now(self) -> float:
        """Return ``start + trio.current_time()``."""
        return self.start + trio.current_time()

    def __repr__(self) -> str:
        return f"VirtualClock(start={self.start!r})"
