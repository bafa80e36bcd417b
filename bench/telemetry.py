"""Scenario 7: what telemetry costs a whole workflow, and one ``emit`` call.

Scenario 1 (linear 3-step, MemoryStorage, N = 5k) with no handler, one
handler that does nothing, and ``hx.LogHandler`` on a logger at INFO whose
only handler is a ``logging.NullHandler`` (records are built, nothing is
written). The three run alternately; the ratio is time / time without a
handler. Per-call costs come from ``bench/telemetry_cost.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

import hephaestus as hx

from ._harness import Config, Row, Section, Stat, paired, ratios
from ._workflows import LINEAR
from .throughput import engine_run

N = 5_000


def _noop(event: hx.TelemetryEvent) -> None:
    pass


def _null_logger() -> logging.Logger:
    logger = logging.getLogger("hephaestus.bench.null")
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def run(cfg: Config) -> Section:
    section = Section("Telemetry cost (scenario 7)")
    n = cfg.size(N)
    handlers: dict[str, list[Callable[[hx.TelemetryEvent], object]]] = {
        "no handler": [],
        "one no-op handler": [_noop],
        "LogHandler -> NullHandler": [hx.LogHandler(_null_logger())],
    }
    cfg.log(f"scenario 7: linear 3-step N={n:,} x {len(handlers)} telemetry set-ups")

    def case(chosen: list[Callable[[hx.TelemetryEvent], object]]) -> Callable[[], float]:
        return lambda: trio.run(engine_run, n, LINEAR, chosen)

    times = paired({name: case(chosen) for name, chosen in handlers.items()}, cfg)
    bare = times["no handler"]
    for name, values in times.items():
        ratio = ratios(values, bare)
        section.rows.append(
            Row(
                "7",
                f"linear 3-step, N={n:,}, {name}",
                Stat.of([n / t for t in values]),
                "inst/s",
                baseline=Stat.of([n / t for t in bare]),
                ratio=ratio,
                ratio_label="time / time with no handler",
                target="" if name == "no handler" else "none set (reported)",
            )
        )
    try:
        from . import telemetry_cost
    except ImportError as exc:
        section.notes.append(f"SKIPPED per-call costs: bench/telemetry_cost.py missing ({exc})")
        return section
    calls = 2_000 if cfg.smoke else 200_000
    cfg.log(f"scenario 7: telemetry_cost.measure({calls:,})")
    costs = telemetry_cost.measure(calls, repeat=cfg.repeats)
    loop = costs.get("baseline_loop", 0.0)
    for name, ns in costs.items():
        if name == "baseline_loop":
            continue
        section.rows.append(
            Row(
                "7",
                f"per call: {name}",
                Stat(ns, ns, ns, cfg.repeats),
                "ns",
                baseline=Stat(loop, loop, loop, cfg.repeats),
                target=telemetry_cost.CASES.get(name, ""),
            )
        )
    section.notes.append(
        f"per-call rows: bench/telemetry_cost.measure({calls:,}, "
        f"repeat={cfg.repeats}), best of the runs; baseline = an empty loop "
        "iteration"
    )
    return section
