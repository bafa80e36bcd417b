"""Cron expressions, evaluated in UTC by cronsim (the optional extra ``hephaestus-trio[cron]``).

cronsim is imported only when a schedule is built, so ``import hephaestus``
and engines without schedules never need it. Ticks are epoch seconds; a
moment is turned into a UTC datetime rounded *down* to the microsecond, so a
float a hair below a tick never reads as the tick itself (and skips it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    from cronsim import CronSim

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_PROBE: Final = datetime(2026, 1, 1, tzinfo=UTC)
MISSING: Final = (
    "hx.Schedule needs the cron extra, which is not installed: "
    "pip install 'hephaestus-trio[cron]' (it brings cronsim)"
)


class CronError(ValueError):
    """A cron expression cronsim cannot read; the message says what is wrong."""


def _cronsim() -> type[CronSim]:
    """Import cronsim on first use.

    Raises:
        ImportError: cronsim is not installed (the message says how to install it).
    """
    try:
        from cronsim import CronSim
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    return CronSim


@final
class Cron:
    """The ticks of a cron expression in UTC, in epoch seconds (:class:`.Ticks`).

    Five fields ``minute hour day-of-month month day-of-week``, or six with
    seconds first, as cronsim reads them (Debian cron's syntax plus ``L``,
    ``LW``, ``#`` and a seconds field).

    Raises:
        CronError: ``expression`` is no cron expression cronsim reads.
        ImportError: cronsim is not installed.
    """

    __slots__ = ("_cronsim", "_last", "expression")

    def __init__(self, expression: str) -> None:
        cronsim = _cronsim()
        from cronsim import CronSimError

        if not isinstance(expression, str):
            raise CronError(f"cron must be a str such as '0 * * * *', got {expression!r}")
        try:
            cronsim(expression, _PROBE)
        except CronSimError as exc:
            raise CronError(
                f"cron {expression!r} is not a valid cron expression ({exc}): give five fields "
                "'minute hour day-of-month month day-of-week' (UTC), or six with seconds "
                "first, e.g. '0 * * * *' for every hour or '15 8 * * 1-5' for 08:15 on weekdays"
            ) from None
        self.expression = expression
        self._cronsim = cronsim
        self._last: tuple[float, Iterator[datetime]] | None = None
        """The tick ``after`` returned last and the iterator that found it: asked for the
        tick after that one (catching up tick by tick), it goes on instead of starting over."""

    def after(self, moment: float) -> float | None:
        """The first tick strictly after ``moment``, or None if none comes within 50 years."""
        last = self._last
        found = last[1] if last is not None and last[0] == moment else None
        if found is None:
            found = self._cronsim(self.expression, _datetime(moment))
        try:
            tick = next(found).timestamp()
        except StopIteration:
            self._last = None
            return None
        self._last = (tick, found)
        return tick

    def latest(self, moment: float) -> float | None:
        """The last tick at or before ``moment``, or None if none was within 50 years."""
        # Ticks are whole seconds, so those before the next microsecond are those <= moment.
        just_after = _datetime(moment) + timedelta(microseconds=1)
        try:
            tick = next(self._cronsim(self.expression, just_after, reverse=True))
        except StopIteration:
            return None
        return tick.timestamp()

    def __repr__(self) -> str:
        return f"Cron({self.expression!r})"


def _datetime(moment: float) -> datetime:
    return _EPOCH + timedelta(microseconds=math.floor(moment * 1_000_000))
