"""Scenario 5 on FileStorage and SQLiteStorage: recovery, from ``open_engine`` to all runners live.

(MemoryStorage recovery is measured in ``parked``, on the instances it parks.)

In a fresh interpreter per (storage, N): park N instances of a one-step
``WaitForEvent`` workflow (a store is filled with ``durable=False``, which
changes nothing on disk but the fsyncs), close the
engine, then open a new engine on the same store ``1 + repeats`` times, each
in its own ``trio.run``, the first as the warm-up. The figure is the time
from entering ``open_engine`` to the moment every task is blocked, checked by
counting one ``runner.init`` telemetry event per stored instance. Recoveries
therefore read from a warm page cache (dropping it needs root).
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
from ._workflows import PARKED
from .durable import file_storage_missing

SIZES = (10_000, 100_000)
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


async def _recover(store: hx.Storage, n: int) -> float:
    live = {"runners": 0}

    def count(event: hx.TelemetryEvent) -> None:
        if event.name == "runner.init":
            live["runners"] += 1

    began = time.perf_counter()
    async with hx.open_engine(workflows=[PARKED], storage=store, telemetry=count):
        await trio.testing.wait_all_tasks_blocked()
        elapsed = time.perf_counter() - began
    if live["runners"] != n:
        raise RuntimeError(f"{live['runners']} runners came back, not {n}")
    return elapsed


def child(kind: str, n: int, repeats: int, warmup: bool, tmp_dir: str) -> dict[str, Any]:
    """Fill a store with ``n`` parked instances, then time ``repeats`` recoveries of it."""
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
        times = []
        for i in range(repeats + (1 if warmup else 0)):
            settle()
            elapsed = trio.run(_recover, store(True), n)
            if i > 0 or not warmup:
                times.append(elapsed)
        return {"times": times, "filled_s": filled_s}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(cfg: Config) -> Section:
    section = Section("Recovery from FileStorage and SQLiteStorage (scenario 5)")
    missing = file_storage_missing(cfg.tmp_dir)
    if missing:
        section.notes.append(f"SKIPPED FileStorage recovery: {missing}")
        return section
    if not (cfg.full or cfg.smoke):
        section.notes.append(
            f"N={SIZES[-1]:,} runs only with --full (filling a FileStorage store alone "
            "takes minutes on this disk)"
        )
    for kind, label in (("file", "FileStorage(durable=True)"), ("sqlite", "SQLiteStorage")):
        _recovery_rows(cfg, section, kind, label)
    return section


def _recovery_rows(cfg: Config, section: Section, kind: str, label: str) -> None:
    seconds: dict[int, Stat] = {}
    for size in SIZES[:1] if cfg.smoke or not cfg.full else SIZES:
        n = cfg.size(size)
        cfg.log(f"scenario 5: {label}, N={n:,} (fill, then 1 + {cfg.repeats} recoveries)")
        result = in_subprocess(
            "recovery:child",
            kind=kind,
            n=n,
            repeats=cfg.repeats,
            warmup=not cfg.smoke,
            tmp_dir=cfg.tmp_dir,
        )
        stat = seconds[size] = Stat.of(result["times"])
        first = seconds.get(SIZES[0])
        growth = (
            None
            if first is None or size == SIZES[0]
            else Stat.derived((stat.median / n) / (first.median / cfg.size(SIZES[0])))
        )
        section.rows.append(
            Row(
                "5",
                f"recover {n:,} parked instances, {label}",
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
