"""Scenario 5: recovery of stored waiting instances, from ``open_engine`` to a serving engine.

On MemoryStorage at 100,000 (DESIGN.md: under 2 s), on FileStorage and
SQLiteStorage at 10,000 (and 100,000 with ``--full``). Each engine recovers
passivated (``passivate_after=0.0``: an index record per waiting instance) and
resident (``passivate_after=None``: a runner each); a build without
``passivate_after`` recovers resident only. (``parked`` also times
MemoryStorage recovery at 10k, on the instances it parks.)

In a fresh interpreter per (storage, N): park N instances of a one-step
``WaitForEvent`` workflow (a store is filled with ``durable=False``, which
changes nothing on disk but the fsyncs), close the
engine, then open a new engine on the same store ``1 + repeats`` times per
mode, each in its own ``trio.run``, the first as the warm-up. Two figures:
from entering ``open_engine`` until it has answered a request (``get`` of the
last instance, which must be waiting), and until every task is blocked (all
recovery work done); a resident engine must have sent one ``runner.init``
telemetry event per stored instance. Recoveries read from a warm page cache
(dropping it needs root).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from typing import Any

import trio
import trio.testing

import hephaestus as hx

from ._harness import Config, Row, Section, Stat, in_subprocess, settle, verdict
from ._passivation import SUPPORTED, UNSUPPORTED, engine_options, modes
from ._workflows import PARKED
from .durable import file_storage_missing

SIZES = (10_000, 100_000)
MEMORY_SIZE = 100_000
SERVING_TARGET_S = 2.0
"""DESIGN.md: 100,000 stored waiting instances to a serving engine in under 2 s."""
FILLERS = 50


async def _populate(store: hx.Storage, n: int) -> None:
    counter = itertools.count()
    suspended = {"count": 0}
    all_parked = trio.Event()

    def count(event: hx.TelemetryEvent) -> None:  # step.suspend comes once it is stored
        if event.name == "step.suspend":
            suspended["count"] += 1
            if suspended["count"] == n:
                all_parked.set()

    async with hx.open_engine(workflows=[PARKED], storage=store, telemetry=count) as engine:

        async def filler() -> None:
            while (i := next(counter)) < n:
                await engine.start(PARKED, str(i))

        async with trio.open_nursery() as nursery:
            for _ in range(FILLERS):
                nursery.start_soon(filler)
        await all_parked.wait()
        status = (await engine.get(f"park::{n - 1}")).status
        if status is not hx.Status.WAITING:
            raise RuntimeError(f"park::{n - 1} is {status}, not waiting")


async def _recover(store: hx.Storage, n: int, mode: str) -> tuple[float, float]:
    """Open an engine on ``store``; return the seconds until it served a request, until settled."""
    live = {"runners": 0}

    def count(event: hx.TelemetryEvent) -> None:
        if event.name == "runner.init":
            live["runners"] += 1

    began = time.perf_counter()
    async with hx.open_engine(
        workflows=[PARKED], storage=store, telemetry=count, **engine_options(mode)
    ) as engine:
        status = (await engine.get(f"park::{n - 1}")).status
        served = time.perf_counter() - began
        await trio.testing.wait_all_tasks_blocked()
        settled = time.perf_counter() - began
    if status is not hx.Status.WAITING:
        raise RuntimeError(f"park::{n - 1} came back {status}, not waiting")
    if mode == "resident" and live["runners"] != n:
        raise RuntimeError(f"{live['runners']} runners came back, not {n}")
    return served, settled


def child(kind: str, n: int, repeats: int, warmup: bool, tmp_dir: str) -> dict[str, Any]:
    """Fill a store with ``n`` parked instances, then time ``repeats`` recoveries per mode."""
    root = tempfile.mkdtemp(prefix="hx-bench-recovery-", dir=tmp_dir)
    try:
        path = os.path.join(root, "store")
        memory = hx.MemoryStorage()

        def store(durable: bool) -> hx.Storage:
            if kind == "sqlite":
                return hx.SQLiteStorage(path + ".sqlite", durable=durable)
            return memory if kind == "memory" else hx.FileStorage(path, durable=durable)

        began = time.perf_counter()
        trio.run(_populate, store(False), n)
        filled_s = time.perf_counter() - began
        served: dict[str, list[float]] = {}
        settled: dict[str, list[float]] = {}
        for mode in modes():
            for i in range(repeats + (1 if warmup else 0)):
                settle()
                to_serve, to_settle = trio.run(_recover, store(True), n, mode)
                if i > 0 or not warmup:
                    served.setdefault(mode, []).append(to_serve)
                    settled.setdefault(mode, []).append(to_settle)
        return {"served": served, "settled": settled, "filled_s": filled_s}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(cfg: Config) -> Section:
    section = Section("Recovery from MemoryStorage, FileStorage and SQLiteStorage (scenario 5)")
    _recovery_rows(cfg, section, "memory", "MemoryStorage", (MEMORY_SIZE,))
    if not SUPPORTED:
        section.rows.append(
            Row(
                "5",
                f"recover {cfg.size(MEMORY_SIZE):,} waiting instances, passivated {UNSUPPORTED}",
                None,
                "",
                target=f"< {SERVING_TARGET_S:g} s to a serving engine",
            )
        )
    missing = file_storage_missing(cfg.tmp_dir)
    if missing:
        section.notes.append(f"SKIPPED FileStorage recovery: {missing}")
        return section
    if not (cfg.full or cfg.smoke):
        section.notes.append(
            f"N={SIZES[-1]:,} runs only with --full (filling a FileStorage store alone "
            "takes minutes on this disk)"
        )
    sizes = SIZES[:1] if cfg.smoke or not cfg.full else SIZES
    for kind, label in (("file", "FileStorage(durable=True)"), ("sqlite", "SQLiteStorage")):
        _recovery_rows(cfg, section, kind, label, sizes)
    return section


def _recovery_rows(
    cfg: Config, section: Section, kind: str, label: str, sizes: tuple[int, ...]
) -> None:
    settled: dict[tuple[str, int], Stat] = {}
    for size in sizes:
        n = cfg.size(size)
        cfg.log(
            f"scenario 5: {label}, N={n:,} (fill, then 1 + {cfg.repeats} recoveries "
            f"per mode: {', '.join(modes())})"
        )
        result = in_subprocess(
            "recovery:child",
            kind=kind,
            n=n,
            repeats=cfg.repeats,
            warmup=not cfg.smoke,
            tmp_dir=cfg.tmp_dir,
        )
        for mode in modes():
            served = Stat.of(result["served"][mode])
            at_target_size = size == MEMORY_SIZE
            section.rows.append(
                Row(
                    "5",
                    f"recover {n:,} waiting instances, {label}, {mode}: until it serves",
                    served,
                    "s",
                    target=f"< {SERVING_TARGET_S:g} s" if at_target_size else "",
                    verdict=verdict(served.median, SERVING_TARGET_S) if at_target_size else "",
                )
            )
            stat = settled[(mode, size)] = Stat.of(result["settled"][mode])
            first = settled.get((mode, sizes[0]))
            growth = (
                None
                if first is None or size == sizes[0]
                else Stat.derived((stat.median / n) / (first.median / cfg.size(sizes[0])))
            )
            section.rows.append(
                Row(
                    "5",
                    f"recover {n:,} waiting instances, {label}, {mode}: until settled",
                    stat,
                    "s",
                    ratio=growth,
                    ratio_label="per-instance recovery time at 100k / at 10k" if growth else "",
                    target="linear (<= 1.5x per instance)"
                    if growth
                    else f"= {n / stat.median:,.0f} instances/s",
                    verdict=verdict(growth.median, 1.5) if growth else "",
                )
            )
        section.notes.append(
            f"{label}: filling {n:,} parked instances took {result['filled_s']:.1f} s"
        )
