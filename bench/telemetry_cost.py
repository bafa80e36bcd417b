"""What telemetry dispatch costs per event, in nanoseconds.

``measure(n)`` times ``Telemetry.emit`` called the way the runtime calls it
(instance id, workflow, step, measurements, metadata) in a few set-ups, and
returns nanoseconds per call (best of ``repeat`` runs, so scheduler noise
does not inflate it). Run it directly for a table::

    python bench/telemetry_cost.py [-n 200000]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

from hephaestus._telemetry import LogHandler, Telemetry, TelemetryEvent

CASES = {
    "baseline_loop": "an empty loop iteration: subtract it to get the cost of the call alone",
    "guarded_no_handler": "`if telemetry.enabled:` with no handler (what the hot paths do)",
    "emit_no_handler": "emit() with no handler",
    "emit_noop_handler": "emit() with one handler that does nothing",
    "emit_log_handler_filtered": "emit() to LogHandler whose logger is below the level",
    "emit_log_handler_null": "emit() to LogHandler, logger at INFO with only a NullHandler",
}


def _noop(event: TelemetryEvent) -> None:
    pass


def _null_logger(name: str, level: int) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False
    logger.setLevel(level)
    return logger


def _time_emit(telemetry: Telemetry, n: int) -> int:
    emit = telemetry.emit
    measurements = {"duration": 0.00125}
    start = time.perf_counter_ns()
    for _ in range(n):
        emit(
            "step.stop",
            instance_id="orderid::abc123",
            workflow="order",
            step="charge",
            measurements=measurements,
            metadata={"version": 1, "event": "charged", "attempt": 1},
        )
    return time.perf_counter_ns() - start


def _time_guard(telemetry: Telemetry, n: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(n):
        if telemetry.enabled:
            raise AssertionError("no handler expected")
    return time.perf_counter_ns() - start


def _time_loop(n: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(n):
        pass
    return time.perf_counter_ns() - start


def measure(n: int = 100_000, *, repeat: int = 5) -> dict[str, float]:
    """Return nanoseconds per call for each case in ``CASES`` (best of ``repeat``)."""
    filtered = _null_logger("hephaestus.bench.filtered", logging.WARNING)
    null = _null_logger("hephaestus.bench.null", logging.INFO)
    runs: dict[str, Callable[[], int]] = {
        "baseline_loop": lambda: _time_loop(n),
        "guarded_no_handler": lambda: _time_guard(Telemetry(), n),
        "emit_no_handler": lambda: _time_emit(Telemetry(), n),
        "emit_noop_handler": lambda: _time_emit(Telemetry([_noop]), n),
        "emit_log_handler_filtered": lambda: _time_emit(Telemetry([LogHandler(filtered)]), n),
        "emit_log_handler_null": lambda: _time_emit(Telemetry([LogHandler(null)]), n),
    }
    assert runs.keys() == CASES.keys()
    return {name: min(run() for _ in range(repeat)) / n for name, run in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("-n", type=int, default=200_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case (best is kept)")
    args = parser.parse_args()
    results = measure(args.n, repeat=args.repeat)
    width = max(map(len, results))
    for name, ns in results.items():
        print(f"{name:<{width}}  {ns:9.1f} ns/call   {CASES[name]}")


if __name__ == "__main__":
    main()
