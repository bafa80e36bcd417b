"""Clocks: where persisted deadlines (epoch seconds) come from."""

from __future__ import annotations

import time
from typing import Protocol, final, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Anything with ``now() -> float`` giving epoch seconds."""

    def now(self) -> float: ...


@final
class SystemClock:
    """The wall clock: ``time.time()``."""

    __slots__ = ()

    now = staticmethod(time.time)
    """Return the current epoch time in seconds (``time.time`` itself: no frame per call)."""
