"""Scenario 6: n instances asleep on distinct durable ``Wait`` deadlines, under virtual time.

``measure(n)`` runs one workflow, a single ``hx.Wait(HORIZON)`` step, on
``MemoryStorage`` with ``hx.testing.VirtualClock()`` under
``trio.testing.MockClock(autojump_threshold=0)``. Instance ``i`` starts at
virtual second ``i * SPACING`` (the ``trio.sleep`` between starts autojumps only
once every task is blocked, so each instance has suspended, and its timer is
persisted and armed, before the clock moves): n distinct deadlines
``i * SPACING + HORIZON``, all pending at once. Then it reports:

- memory per sleeping instance: RSS delta (``/proc/self/status``) in the timed
  run; tracemalloc current and peak delta in a second run of its own (tracing
  slows everything and costs memory itself), with the source lines that hold
  the most;
- wall time (and CPU time: the machine may be shared) to park them all and to
  fire them all (from the moment all are asleep to the last instance
  completed), and fires per second;
- wake-up accuracy: ``max |fired - deadline|`` over all instances, in virtual
  seconds, from the persisted deadline and the history stamp of the
  ``"timeout"`` event (both read from the engine's clock), and how many fired
  early (must be 0).

The memory includes each instance's encoded snapshot in MemoryStorage (with
FileStorage that part is on disk), its runner task and mailbox, its registry
entry, and the timer task with its cancel scope.

Run: ``python -m bench.timers [N] [--no-trace]`` (default 100,000) prints the
figures as JSON; ``python -m bench --only timers_scenario`` runs it inside the suite.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import tracemalloc
from typing import Any

import trio
import trio.testing

import hephaestus as hx

SPACING = 0.1  # virtual seconds between two starts (not a binary fraction: deadlines round)
HORIZON = 30 * 86_400.0  # every Wait lasts 30 virtual days: far beyond the last start
KIB = 1024

NAP = hx.Wait(HORIZON, key="nap")
SLEEPERS = hx.Workflow(
    "sleepers", start=NAP, transitions={(NAP, "timeout"): hx.Done}, unique=hx.Unique("sleeper")
)


def rss_bytes() -> int:
    """Return this process's resident set size, from /proc/self/status."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KIB
    raise RuntimeError("no VmRSS line in /proc/self/status")


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker)[-1]
    return filename


def tracemalloc_by_file(diff: list[tracemalloc.StatisticDiff]) -> list[tuple[str, int]]:
    """Sum a line-level snapshot diff per source file, largest first."""
    totals: dict[str, int] = {}
    for stat in diff:
        name = _short(stat.traceback[0].filename)
        totals[name] = totals.get(name, 0) + stat.size_diff
    return sorted(totals.items(), key=lambda item: -item[1])


def _log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] timers: {message}", file=sys.stderr, flush=True)


async def _park_and_fire(n: int, trace: bool) -> dict[str, Any]:
    clock = hx.testing.VirtualClock()
    storage = hx.MemoryStorage()
    out: dict[str, Any] = {}
    async with hx.open_engine(workflows=[SLEEPERS], storage=storage, clock=clock) as engine:
        # warm up: one instance through its whole life, so lazy imports and caches are paid
        await engine.wait(await engine.start(SLEEPERS, "warmup"))
        await storage.delete("sleeper::warmup")
        gc.collect()
        if trace:
            tracemalloc.start()
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            snapshot = tracemalloc.take_snapshot()
        else:
            before = rss_bytes()
        began, cpu = time.perf_counter(), time.process_time()
        t0 = trio.current_time()
        ids = []
        for i in range(n):
            ids.append(await engine.start(SLEEPERS, str(i)))
            await trio.sleep(SPACING)  # autojumps once the new instance is asleep
        parked_s, parked_cpu = time.perf_counter() - began, time.process_time() - cpu
        gc.collect()
        if trace:
            current, peak = tracemalloc.get_traced_memory()
            diff = tracemalloc.take_snapshot().compare_to(snapshot, "lineno")
            tracemalloc.stop()
            out["tracemalloc_current_bytes_per_instance"] = (current - before) / n
            out["tracemalloc_peak_bytes_per_instance"] = (peak - before) / n
            out["top_lines"] = [
                f"{d.size_diff / n:,.0f} B/inst {_short(d.traceback[0].filename)}"
                f":{d.traceback[0].lineno}"
                for d in diff[:12]
            ]
            by_file = tracemalloc_by_file(diff)
            out["top_files"] = [f"{size / n:,.0f} B/inst {name}" for name, size in by_file[:8]]
        else:
            out["rss_bytes_per_instance"] = (rss_bytes() - before) / n
        deadlines: dict[str, float] = {}
        for instance in await storage.query(status=hx.Status.WAITING):
            (timer,) = instance.timers
            deadlines[instance.id] = timer.deadline
        if len(deadlines) != n or len(set(deadlines.values())) != n:
            raise RuntimeError(
                f"expected {n} sleepers on distinct deadlines, got "
                f"{len(deadlines)} on {len(set(deadlines.values()))}"
            )
        if trace:
            return out  # the traced run only measures memory
        parked_virtual = trio.current_time() - t0
        began, cpu = time.perf_counter(), time.process_time()
        await engine.wait(ids[-1])  # the latest deadline: every other one fired before it
        fire_s, fire_cpu = time.perf_counter() - began, time.process_time() - cpu
        errors = []
        for instance in await storage.query(workflow=SLEEPERS.name):
            if instance.status is not hx.Status.COMPLETED:
                raise RuntimeError(f"{instance.id} is {instance.status}, not completed")
            (entry,) = instance.history
            errors.append(entry.at - deadlines[instance.id])
    out.update(
        n=n,
        park_wall_s=parked_s,
        park_per_s=n / parked_s,
        park_cpu_s=parked_cpu,
        parked_virtual_s=parked_virtual,
        fire_wall_s=fire_s,
        fires_per_s=n / fire_s,
        fire_cpu_s=fire_cpu,
        max_abs_wakeup_error_s=max(abs(e) for e in errors),
        mean_wakeup_error_s=sum(errors) / len(errors),
        early_fires=sum(e < 0 for e in errors),
        distinct_deadlines=len(set(deadlines.values())),
    )
    return out


def measure(n: int = 100_000, *, trace: bool = True) -> dict[str, Any]:
    """Park ``n`` instances on distinct Wait deadlines, fire them all; return the figures.

    Args:
        n: how many instances sleep at once.
        trace: also run a second, tracemalloc-traced parking (memory only).

    Returns:
        A JSON-serialisable dict: memory per sleeping instance (``rss_bytes_per_instance``,
        ``tracemalloc_current_bytes_per_instance``, ``tracemalloc_peak_bytes_per_instance``,
        ``top_lines``), wall times (``park_wall_s``, ``fire_wall_s``) and rates, and
        wake-up accuracy (``max_abs_wakeup_error_s``, ``early_fires``) in virtual seconds.
    """
    _log(f"parking {n:,} instances (RSS run)")
    result = trio.run(_park_and_fire, n, False, clock=trio.testing.MockClock(autojump_threshold=0))
    gc.collect()
    if trace:
        _log(f"parking {n:,} instances (tracemalloc run)")
        result.update(
            trio.run(_park_and_fire, n, True, clock=trio.testing.MockClock(autojump_threshold=0))
        )
    return result


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--no-trace"]
    size = int(args[0].replace("_", "")) if args else 100_000
    print(json.dumps(measure(size, trace="--no-trace" not in sys.argv), indent=2))
