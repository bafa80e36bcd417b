"""What every scenario shares: run configuration, repetition, statistics, rows, subprocesses.

A scenario module exposes ``run(cfg) -> Section``. It measures with
:func:`repeat` or :func:`paired` (a warm-up, then ``cfg.repeats`` runs, each
calling a function that does its own ``trio.run``), and hands back
:class:`Row` objects holding median and min-max. Memory-heavy measurements go
through :func:`in_subprocess`, so that the RSS they read belongs to them alone.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Config:
    """How big and how often: one object, handed to every scenario."""

    smoke: bool = False
    full: bool = False
    repeats: int = 5
    tmp_dir: str = tempfile.gettempdir()
    verbose: bool = True

    def size(self, n: int) -> int:
        """Return ``n`` for a real run, a tiny stand-in for ``--smoke``."""
        return max(5, n // 500) if self.smoke else n

    def log(self, message: str) -> None:
        """Report progress on stderr (the table goes to stdout)."""
        if self.verbose:
            print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Stat:
    """Median and range of one figure over the measured runs."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        if not values:
            raise ValueError("no values to summarise")
        return cls(statistics.median(values), min(values), max(values), len(values))

    @classmethod
    def one(cls, value: float) -> Stat:
        return cls(value, value, value, 1)

    @classmethod
    def derived(cls, value: float) -> Stat:
        """A figure computed from other medians (it has no range of its own)."""
        return cls(value, value, value, 0)

    def map(self, fn: Callable[[float], float]) -> Stat:
        """Apply a monotonic ``fn`` (e.g. seconds -> rate), keeping low <= high."""
        a, b = fn(self.low), fn(self.high)
        return Stat(fn(self.median), min(a, b), max(a, b), self.runs)


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    case: str
    value: Stat | None
    """None: not measured (the case says why)."""
    unit: str
    baseline: Stat | None = None
    ratio: Stat | None = None
    ratio_label: str = ""
    target: str = ""
    verdict: str = ""


@dataclass
class Section:
    """What one scenario group produced: rows, skip notes, free-form notes."""

    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    method: str = ""


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Stat:
    """Return the per-run ratios of two paired series as a :class:`Stat` (NaN over a zero).

    A zero denominator happens: an RSS delta of a few small tasks can stay
    inside pages already mapped.
    """
    return Stat.of(
        [a / b if b else math.nan for a, b in zip(numerators, denominators, strict=True)]
    )


def verdict(value: float, target: float, goal: float | None = None, *, lower: bool = True) -> str:
    """Say whether ``value`` meets ``target`` (and ``goal``); lower is better unless told."""

    def ok(limit: float) -> bool:
        return value <= limit if lower else value >= limit

    if goal is not None and ok(goal):
        return "goal met"
    return "met" if ok(target) else "MISSED"


def settle() -> None:
    """Collect garbage so that one run's leftovers do not land in the next."""
    gc.collect()


def repeat(
    run: Callable[[], float], cfg: Config, *, warmup: Callable[[], object] | None = None
) -> list[float]:
    """Warm up once (``warmup`` or ``run``), then return ``cfg.repeats`` results of ``run``."""
    if not cfg.smoke:
        settle()
        (warmup or run)()
    values = []
    for _ in range(cfg.repeats):
        settle()
        values.append(run())
    return values


def paired(
    runs: dict[str, Callable[[], float]],
    cfg: Config,
    *,
    warmups: dict[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Warm up each case, then run the cases alternately ``cfg.repeats`` times.

    Alternating puts a baseline and the engine under the same noise, so the
    per-run ratio is steadier than a ratio of separately taken medians.
    """
    if not cfg.smoke:
        for name, run in runs.items():
            settle()
            ((warmups or {}).get(name) or run)()
    values: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(cfg.repeats):
        for name, run in runs.items():
            settle()
            values[name].append(run())
    return values


def rss_bytes() -> int:
    """Return this process's resident set size, from /proc/self/status."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


def in_subprocess(target: str, *, timeout: float = 1800.0, **kwargs: Any) -> Any:
    """Call ``bench.<module>:<function>(**kwargs)`` in a fresh interpreter; return its result.

    The result must be JSON-serialisable. The child's stderr passes through,
    so its progress lines show; a child that fails raises ``RuntimeError``
    with the end of its output.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "bench._child", target],
        input=json.dumps(kwargs),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
        check=False,
    )
    if proc.stderr:
        sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(
            f"bench child {target} exited with {proc.returncode}: "
            f"{proc.stderr.strip().splitlines()[-1:]!r}"
        )
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"bench child {target} printed no result")
    return json.loads(lines[-1])


def fmt(value: float) -> str:
    """Format a figure with about three significant digits."""
    magnitude = abs(value)
    if magnitude >= 100_000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt_stat(stat: Stat | None, unit: str = "") -> str:
    if stat is None:
        return ""
    suffix = f" {unit}" if unit else ""
    return f"{fmt(stat.median)}{suffix}"


def fmt_range(stat: Stat | None) -> str:
    if stat is None:
        return ""
    if stat.runs == 0:
        return "(of medians)"
    if stat.runs == 1 or stat.low == stat.high:
        return "(1 run)" if stat.runs == 1 else ""
    return f"{fmt(stat.low)}-{fmt(stat.high)}"
