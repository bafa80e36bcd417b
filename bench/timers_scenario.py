"""Scenario 6: instances asleep on distinct durable ``Wait`` deadlines, under virtual time.

The measurement is ``bench/timers.py`` (``measure(n, trace=...)``, its own
owner: see its docstring for the method). This module calls it in a fresh
interpreter per run, so each run's memory figures are clean: ``repeats``
runs, the first one also traced with tracemalloc. Its park rate includes one
virtual-clock autojump per start (each instance is asleep before the next
starts), so it is far below scenario 8's start rate. Baseline: the bare
parked task of scenario 3 costs about 4.5 KB (design document).
"""

from __future__ import annotations

from typing import Any

from ._harness import ROOT, Config, Row, Section, Stat, in_subprocess, verdict

SIZES = (10_000, 100_000)
KIB = 1024


def child(n: int, trace: bool) -> Any:
    """Run ``bench.timers.measure`` once in this process."""
    from . import timers

    return timers.measure(n, trace=trace)


def run(cfg: Config) -> Section:
    section = Section("Timers under virtual time (scenario 6, bench/timers.py)")
    if not (ROOT / "bench" / "timers.py").exists():
        section.notes.append(
            "SKIPPED: bench/timers.py does not exist (another engineer "
            "writes it); re-run `python -m bench --only timers_scenario` "
            "once it does"
        )
        return section
    sizes = SIZES[:1] if cfg.smoke or not cfg.full else SIZES
    if not (cfg.full or cfg.smoke):
        section.notes.append(
            f"N={SIZES[-1]:,} runs only with --full: parking is one start "
            "plus one clock autojump per instance: 2-4 min per run on the reference machine"
        )
    for size in sizes:
        n = cfg.size(size)
        results: list[dict[str, Any]] = []
        for i in range(cfg.repeats):
            cfg.log(
                f"scenario 6: bench.timers.measure({n:,}) run {i + 1}/{cfg.repeats}"
                + (" + tracemalloc" if i == 0 else "")
            )
            results.append(in_subprocess("timers_scenario:child", n=n, trace=i == 0))
        _rows(section, n, results)
    return section


def _rows(section: Section, n: int, results: list[dict[str, Any]]) -> None:
    def stat(key: str, scale: float = 1.0) -> Stat:
        return Stat.of([r[key] * scale for r in results if key in r])

    rss = stat("rss_bytes_per_instance", 1 / KIB)
    section.rows.append(
        Row(
            "6",
            f"memory per sleeping instance (RSS), N={n:,}",
            rss,
            "KiB",
            target="<= 8 KiB (as a parked one)",
            verdict=verdict(rss.median, 8.0),
        )
    )
    if any("tracemalloc_current_bytes_per_instance" in r for r in results):
        traced = stat("tracemalloc_current_bytes_per_instance", 1 / KIB)
        section.rows.append(
            Row(
                "6",
                f"memory per sleeping instance (tracemalloc), N={n:,}",
                traced,
                "KiB",
                target="<= 8 KiB (as a parked one)",
                verdict=verdict(traced.median, 8.0),
            )
        )
        section.notes.append(
            f"N={n:,}, top lines (tracemalloc): " + "; ".join(results[0].get("top_lines", [])[:8])
        )
    section.rows.append(Row("6", f"park (start + sleep), N={n:,}", stat("park_per_s"), "inst/s"))
    section.rows.append(Row("6", f"fire all, N={n:,}", stat("fires_per_s"), "fires/s"))
    error = stat("max_abs_wakeup_error_s")
    early = stat("early_fires")
    section.rows.append(
        Row(
            "6",
            f"max wake-up error (virtual s), N={n:,}",
            error,
            "s",
            target="0 early fires",
            verdict="met" if early.high == 0 else "MISSED",
        )
    )
