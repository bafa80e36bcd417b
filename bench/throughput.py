"""Scenarios 1, 2 and 9: instances/s on MemoryStorage against bare Trio, and how it scales.

Engine run: one task starts N instances one after the other (each ``start``
returns once the snapshot is stored; the runners work meanwhile), then waits
for every one of them; the figure is N / (first start -> last completion).

Bare-Trio run: N tasks in a nursery, each doing the same awaits
(``trio.lowlevel.checkpoint()``) and a dict update per step, no engine. The
overhead ratio is engine time / bare time, per alternating pair of runs, in
wall time and in CPU time (``time.process_time()`` over the same window as
the wall clock: these machines are shared, and CPU time is what the targets
are stated in).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import trio

import hephaestus as hx

from ._harness import Config, Row, Section, Stat, paired, ratios, verdict
from ._workflows import FANOUT, LINEAR

SIZES = (1_000, 10_000, 100_000)


async def engine_run(
    n: int,
    workflow: hx.Workflow,
    telemetry: Sequence[Callable[[hx.TelemetryEvent], object]] = (),
    cpu: list[float] | None = None,
) -> float:
    """Start ``n`` instances of ``workflow``, wait for all; return the seconds it took.

    ``cpu``, when given, gets the CPU seconds of the same window appended.
    """
    async with hx.open_engine(
        workflows=[workflow], storage=hx.MemoryStorage(), telemetry=telemetry
    ) as engine:
        began, cpu_began = time.perf_counter(), time.process_time()
        ids = [await engine.start(workflow, str(i)) for i in range(n)]
        for instance_id in ids:
            await engine.wait(instance_id)
        elapsed = time.perf_counter() - began
        if cpu is not None:
            cpu.append(time.process_time() - cpu_began)
        for instance_id in (ids[0], ids[-1]):
            status = (await engine.get(instance_id)).status
            if status is not hx.Status.COMPLETED:
                raise RuntimeError(f"{instance_id} ended {status}, not completed")
    return elapsed


async def bare_linear(n: int, cpu: list[float] | None = None) -> float:
    """N bare tasks, each: three checkpoints, each followed by a dict update.

    Returns the wall seconds; ``cpu``, when given, gets the CPU seconds appended.
    """
    done: dict[int, dict[str, str]] = {}

    async def one(i: int) -> None:
        state: dict[str, str] = {}
        for key in ("a", "b", "c"):
            await trio.lowlevel.checkpoint()
            state[key] = "ok"
        done[i] = state

    began, cpu_began = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    elapsed = time.perf_counter() - began
    if cpu is not None:
        cpu.append(time.process_time() - cpu_began)
    assert len(done) == n
    return elapsed


async def bare_fanout(n: int, cpu: list[float] | None = None) -> float:
    """N bare tasks, each: a checkpoint, three child tasks with one each, then a last one.

    Returns the wall seconds; ``cpu``, when given, gets the CPU seconds appended.
    """
    done: dict[int, dict[str, str]] = {}

    async def branch(state: dict[str, str], key: str) -> None:
        await trio.lowlevel.checkpoint()
        state[key] = "ok"

    async def one(i: int) -> None:
        state: dict[str, str] = {}
        await trio.lowlevel.checkpoint()
        state["a"] = "ok"
        async with trio.open_nursery() as nursery:
            for key in ("b", "c", "d"):
                nursery.start_soon(branch, state, key)
        await trio.lowlevel.checkpoint()
        state["e"] = "ok"
        done[i] = state

    began, cpu_began = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    elapsed = time.perf_counter() - began
    if cpu is not None:
        cpu.append(time.process_time() - cpu_began)
    assert len(done) == n
    return elapsed


def _pair(
    cfg: Config,
    n: int,
    workflow: hx.Workflow,
    bare: Callable[[int, list[float] | None], Awaitable[float]],
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Alternate bare and engine runs; return their wall seconds and CPU seconds, by name."""
    warm = cfg.size(1_000) if n > 10_000 else n  # a 100k warm-up teaches nothing a 1k one does not
    cpu: dict[str, list[float]] = {"bare": [], "engine": []}
    wall = paired(
        {
            "bare": lambda: trio.run(bare, n, cpu["bare"]),
            "engine": lambda: trio.run(engine_run, n, workflow, (), cpu["engine"]),
        },
        cfg,
        warmups={
            "bare": lambda: trio.run(bare, warm, None),
            "engine": lambda: trio.run(engine_run, warm, workflow),
        },
    )
    return wall, cpu


def run(cfg: Config) -> Section:
    section = Section("Throughput on MemoryStorage (scenarios 1, 2, 9)")
    per_instance: dict[tuple[str, str], dict[int, Stat]] = {}
    for number, label, workflow, bare in (
        ("1", "linear 3-step", LINEAR, bare_linear),
        ("2", "fan-out 3 / fan-in", FANOUT, bare_fanout),
    ):
        for size in SIZES:
            if number == "2" and size == SIZES[-1] and not (cfg.full or cfg.smoke):
                section.notes.append(
                    f"fan-out at N={size:,} runs only with --full (one pair "
                    "of runs takes 1-2.5 min on the reference machine)"
                )
                continue
            n = cfg.size(size)
            cfg.log(f"scenario {number}: {label}, N={n:,}")
            times, cpu = _pair(cfg, n, workflow, bare)
            overhead = ratios(times["engine"], times["bare"])
            section.rows.append(
                Row(
                    number,
                    f"{label}, N={n:,}",
                    Stat.of([n / t for t in times["engine"]]),
                    "inst/s",
                    baseline=Stat.of([n / t for t in times["bare"]]),
                    ratio=overhead,
                    ratio_label="engine / bare wall time",
                    target="(wall time; the target is CPU time)",
                )
            )
            cpu_overhead = ratios(cpu["engine"], cpu["bare"])
            section.rows.append(
                Row(
                    number,
                    f"{label}, N={n:,}, CPU time",
                    Stat.of([n / t for t in cpu["engine"]]),
                    "inst/CPU-s",
                    baseline=Stat.of([n / t for t in cpu["bare"]]),
                    ratio=cpu_overhead,
                    ratio_label="engine / bare CPU time",
                    target="<= 6x CPU (goal 4x)" if number == "1" else "<= 6x CPU (as 1)",
                    verdict=verdict(cpu_overhead.median, 6.0, 4.0 if number == "1" else None),
                )
            )
            per_instance.setdefault((number, "engine"), {})[size] = Stat.of(
                [t / n * 1e6 for t in times["engine"]]
            )
            per_instance.setdefault((number, "bare"), {})[size] = Stat.of(
                [t / n * 1e6 for t in times["bare"]]
            )
    for (number, who), costs in per_instance.items():
        first = costs[SIZES[0]]
        for size in SIZES[1:]:
            if size not in costs:
                continue
            cost = costs[size]
            growth = cost.median / first.median
            section.rows.append(
                Row(
                    "9",
                    f"{'linear' if number == '1' else 'fan-out'} {who}: per-instance cost, "
                    f"N={cfg.size(size):,} vs {cfg.size(SIZES[0]):,}",
                    cost,
                    "us/inst",
                    baseline=first,
                    ratio=Stat.derived(growth),
                    ratio_label="cost(N) / cost(1k)",
                    target="flat (<= 1.5x, my noise margin)" if who == "engine" else "(reference)",
                    verdict=verdict(growth, 1.5) if who == "engine" else "",
                )
            )
    return section
