"""Scenario 6: 100k instances sleeping on distinct deadlines under virtual time.

The measurement itself is ``bench/timers.py`` (its own owner); this module
runs its ``measure(...)`` in a fresh interpreter, so its memory figures are
clean, and turns what it returns into table rows. Without that file the
scenario is skipped with a note.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

from ._harness import ROOT, Config, Row, Section, Stat, in_subprocess

N = 100_000
SIZE_NAMES = ("n", "count", "instances", "timers", "size")


def _size_kwargs(measure: Any, n: int) -> dict[str, Any]:
    parameters = inspect.signature(measure).parameters
    for name in SIZE_NAMES:
        if name in parameters:
            return {name: n}
    positional = [p for p in parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return {positional[0].name: n} if positional else {}


def child(n: int, repeats: int) -> Any:
    """Call ``bench.timers.measure`` with ``n`` timers (and ``repeat`` if it takes one)."""
    from . import timers

    kwargs = _size_kwargs(timers.measure, n)
    parameters = inspect.signature(timers.measure).parameters
    for name in ("repeat", "repeats"):
        if name in parameters:
            kwargs[name] = repeats
    return timers.measure(**kwargs)


def _rows(result: Any, prefix: str = "") -> list[Row]:
    rows: list[Row] = []
    if isinstance(result, dict):
        for key, value in result.items():
            label = f"{prefix}{key}"
            if isinstance(value, int | float):  # bool included
                rows.append(Row("6", label, Stat.one(float(value)), ""))
            elif isinstance(value, list) and value and all(
                    isinstance(v, int | float) for v in value):
                rows.append(Row("6", label, Stat.of([float(v) for v in value]), ""))
            elif isinstance(value, dict):
                rows.extend(_rows(value, f"{label}: "))
    return rows


def run(cfg: Config) -> Section:
    section = Section("Timers under virtual time (scenario 6, bench/timers.py)")
    if not (ROOT / "bench" / "timers.py").exists() or importlib.util.find_spec(
            "bench.timers") is None:
        section.notes.append("SKIPPED: bench/timers.py does not exist yet (another engineer "
                             "writes it); re-run `python -m bench --only timers_scenario` "
                             "once it does")
        return section
    n = cfg.size(N)
    cfg.log(f"scenario 6: bench.timers.measure with {n:,} timers, in a subprocess")
    result = in_subprocess("timers_scenario:child", n=n, repeats=cfg.repeats)
    section.rows = _rows(result)
    if not section.rows:
        section.notes.append(f"bench/timers.py returned {result!r}")
    section.notes.append(f"figures as returned by bench.timers.measure with {n:,} timers "
                         "(names and units are its own)")
    return section
