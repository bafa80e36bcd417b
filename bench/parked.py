"""Scenarios 3 and 8: what a parked instance costs, how fast they resume, start cost vs population.

Each run is a fresh interpreter (:func:`in_subprocess`): it warms up on a
small batch, then starts N instances of a one-step ``WaitForEvent`` workflow
on MemoryStorage, timing every batch of starts, waits until every task is
blocked, and reads the memory delta: RSS (from /proc) in the timed runs,
tracemalloc in separate runs of their own (tracing slows everything and costs
memory itself). Then it resumes every instance, one acknowledged ``resume``
after the other, and times until all are completed.

Baseline: N bare Trio tasks, each parked on ``receive()`` of its own memory
channel (unbounded, like a runner's mailbox), woken with one ``send`` each.

The memory per parked instance includes its MemoryStorage snapshot (encoded
bytes, kept in the same process): with FileStorage that part is on disk.

The engine runs twice per size: passivated (``passivate_after=0.0``: a waiting
instance keeps only its index record) and resident (``passivate_after=None``:
its runner stays); a build without ``passivate_after`` runs only the resident
one (every engine is resident there). With ``--full`` (a tiny N with
``--smoke``), one process also starts a million waiting instances on a
passivated engine: the time it takes and the RSS it ends with.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from typing import Any

import trio
import trio.testing

import hephaestus as hx

from ._harness import Config, Row, Section, Stat, in_subprocess, ratios, rss_bytes, verdict
from ._passivation import SUPPORTED, UNSUPPORTED, engine_options, modes
from ._workflows import PARKED

SIZES = (10_000, 100_000)
MILLION = 1_000_000
BATCH = 1_000
KIB = 1024
TARGET_KIB = {"passivated": 1.0, "resident": 6.0}
"""DESIGN.md's memory targets per waiting instance, snapshot included."""


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/src/"):
        if marker in filename:
            return filename.split(marker)[-1]
    return filename


class _GcClock:
    """Adds up the time the cyclic garbage collector runs, and counts full collections."""

    def __init__(self) -> None:
        self.paused = 0.0
        self.full = 0
        self._began = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        self.paused += time.perf_counter() - self._began
        if info.get("generation") == 2:
            self.full += 1


def _memory_mark(trace: bool) -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] if trace else rss_bytes()


def _snapshot_bytes(store: hx.MemoryStorage) -> int:
    """Return the encoded snapshot bytes ``store`` holds (a bench-only look at its dict)."""
    return sum(len(blob) for blob in store._blobs.values())


async def _engine_park(
    n: int, batch: int, trace: bool, store: hx.MemoryStorage, mode: str
) -> dict[str, Any]:
    """Start ``n`` parked instances, timing each batch; return the memory they added."""
    async with hx.open_engine(workflows=[PARKED], storage=store, **engine_options(mode)) as engine:
        await trio.testing.wait_all_tasks_blocked()
        before = _memory_mark(trace)
        snapshot = tracemalloc.take_snapshot() if trace else None
        batches: list[float] = []
        gc_pauses: list[float] = []
        clock = _GcClock()
        gc.callbacks.append(clock.on_gc)
        began = time.perf_counter()
        try:
            for first in range(0, n, batch):
                mark, paused = time.perf_counter(), clock.paused
                for i in range(first, min(n, first + batch)):
                    await engine.start(PARKED, str(i))
                batches.append(time.perf_counter() - mark)
                gc_pauses.append(clock.paused - paused)
        finally:
            gc.callbacks.remove(clock.on_gc)
        await trio.testing.wait_all_tasks_blocked()  # MemoryStorage: no thread to wait for
        parked_s = time.perf_counter() - began
        for instance_id in ("park::0", f"park::{n - 1}"):
            status = (await engine.get(instance_id)).status
            if status is not hx.Status.WAITING:
                raise RuntimeError(f"{instance_id} is {status}, not waiting")
        after = _memory_mark(trace)
        top: list[str] = []
        if snapshot is not None:
            diff = tracemalloc.take_snapshot().compare_to(snapshot, "lineno")
            top = [
                f"{d.size_diff / n:,.0f} B/inst {_short(d.traceback[0].filename)}"
                f":{d.traceback[0].lineno}"
                for d in diff[:12]
            ]
    return {
        "bytes": after - before,
        "snapshot_bytes": _snapshot_bytes(store),
        "batches": batches,
        "gc_pauses": gc_pauses,
        "full_collections": clock.full,
        "parked_s": parked_s,
        "top": top,
    }


async def _engine_recover_and_resume(n: int, store: hx.Storage, mode: str) -> dict[str, Any]:
    """Recover the parked instances from ``store``, then resume every one of them."""
    began = time.perf_counter()
    async with hx.open_engine(workflows=[PARKED], storage=store, **engine_options(mode)) as engine:
        await trio.testing.wait_all_tasks_blocked()  # recovery is done (runners or index only)
        recovered_s = time.perf_counter() - began
        ids = [f"park::{i}" for i in range(n)]
        began = time.perf_counter()
        for instance_id in ids:
            await engine.resume(instance_id, "go")  # acknowledged once applied and stored
        acked_s = time.perf_counter() - began
        for instance_id in ids:
            await engine.wait(instance_id)
        resumed_s = time.perf_counter() - began
        status = (await engine.get(ids[-1])).status
        if status is not hx.Status.COMPLETED:
            raise RuntimeError(f"{ids[-1]} is {status} after resume, not completed")
    return {"recovered_s": recovered_s, "acked_s": acked_s, "resumed_s": resumed_s}


def _engine_cycle(n: int, batch: int, trace: bool, mode: str) -> dict[str, Any]:
    store = hx.MemoryStorage()
    result = trio.run(_engine_park, n, batch, trace, store, mode)
    if not trace:
        result.update(trio.run(_engine_recover_and_resume, n, store, mode))
    return result


async def _bare_parked(n: int, trace: bool) -> dict[str, Any]:
    done: list[str] = []

    async def parked(receive: trio.MemoryReceiveChannel[str]) -> None:
        async with receive:
            done.append(await receive.receive())

    async with trio.open_nursery() as nursery:
        await trio.testing.wait_all_tasks_blocked()
        before = _memory_mark(trace)
        senders: list[trio.MemorySendChannel[str]] = []
        for _ in range(n):
            send, receive = trio.open_memory_channel[str](float("inf"))
            senders.append(send)
            nursery.start_soon(parked, receive)
        await trio.testing.wait_all_tasks_blocked()
        after = _memory_mark(trace)
        began = time.perf_counter()
        for send in senders:
            await send.send("go")
        acked_s = time.perf_counter() - began
    resumed_s = time.perf_counter() - began
    assert len(done) == n
    return {"bytes": after - before, "acked_s": acked_s, "resumed_s": resumed_s}


def child(kind: str, n: int, warm: int, trace: bool, mode: str = "resident") -> dict[str, Any]:
    """One measured run in this (fresh) process; ``kind`` is ``engine`` or ``bare``.

    ``mode`` (``passivated`` or ``resident``) is the engine's; bare ignores it.
    """
    if trace:
        tracemalloc.start(1)
    if kind == "engine":
        _engine_cycle(warm, BATCH, False, mode)
        gc.collect()
        return _engine_cycle(n, min(BATCH, max(1, n // 10)), trace, mode)
    trio.run(_bare_parked, warm, False)
    gc.collect()
    return trio.run(_bare_parked, n, trace)


async def _engine_start_many(n: int, mode: str) -> dict[str, Any]:
    store = hx.MemoryStorage()
    before = _memory_mark(False)
    async with hx.open_engine(workflows=[PARKED], storage=store, **engine_options(mode)) as engine:
        began, cpu_began = time.perf_counter(), time.process_time()
        for i in range(n):
            await engine.start(PARKED, str(i))
        await trio.testing.wait_all_tasks_blocked()
        started_s, cpu_s = time.perf_counter() - began, time.process_time() - cpu_began
        status = (await engine.get(f"park::{n - 1}")).status
        if status is not hx.Status.WAITING:
            raise RuntimeError(f"park::{n - 1} is {status}, not waiting")
        after = _memory_mark(False)
    return {
        "started_s": started_s,
        "cpu_s": cpu_s,
        "rss": after,
        "added": after - before,
        "snapshot_bytes": _snapshot_bytes(store),
    }


def many(n: int, mode: str) -> dict[str, Any]:
    """Start ``n`` waiting instances in this (fresh) process; return the time and the RSS."""
    return trio.run(_engine_start_many, n, mode)


def run(cfg: Config) -> Section:
    section = Section("Parked instances: memory, recovery, resumes, start cost (scenarios 3, 5, 8)")
    warm = cfg.size(1_000)
    engine_modes = modes()
    kinds = ["bare", *(f"engine:{mode}" for mode in engine_modes)]
    recovered: dict[tuple[str, int], Stat] = {}
    for size in SIZES[:1] if cfg.smoke else SIZES:
        n = cfg.size(size)
        trace_runs = 1 if cfg.smoke else min(cfg.repeats, 3) if size < 100_000 or cfg.full else 0
        runs: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        for trace, count in ((False, cfg.repeats), (True, trace_runs)):
            for i in range(count):
                for kind in kinds:
                    who, _, mode = kind.partition(":")
                    cfg.log(
                        f"scenario 3: {kind} N={n:,} {'tracemalloc' if trace else 'RSS'} "
                        f"run {i + 1}/{count}"
                    )
                    runs.setdefault((kind, trace), []).append(
                        in_subprocess(
                            "parked:child",
                            kind=who,
                            n=n,
                            warm=warm,
                            trace=trace,
                            mode=mode or "resident",
                        )
                    )
        _memory_rows(section, runs, n)
        bare_runs = runs[("bare", False)]
        for mode in engine_modes:
            engine_runs = runs[(f"engine:{mode}", False)]
            _recovery_and_resume_rows(section, cfg, recovered, engine_runs, bare_runs, size, mode)
        if not SUPPORTED:
            for case in ("memory per parked instance", "resume all, one caller, until completed"):
                section.rows.append(
                    Row("3", f"{case}, passivated, N={n:,} {UNSUPPORTED}", None, "")
                )
        _start_rows(section, runs[(f"engine:{engine_modes[0]}", False)], n)
    _many_rows(cfg, section)
    section.notes.append(
        "each run is a fresh interpreter: warm-up cycle at 1k, then park N (timed in batches "
        "of 1,000 starts: scenario 8), read the memory, close the engine, recover the N "
        "from the same MemoryStorage (scenario 5), resume all (scenario 3); the start rows "
        f"(scenario 8) come from the {engine_modes[0]} engine"
    )
    if not cfg.full and not cfg.smoke:
        section.notes.append(
            "tracemalloc at N=100,000 runs only with --full (memory is "
            "deterministic: the 10k tracemalloc runs and the 100k RSS runs "
            "cover it)"
        )
    return section


def _recovery_and_resume_rows(
    section: Section,
    cfg: Config,
    recovered: dict[tuple[str, int], Stat],
    engine_runs: list[dict[str, Any]],
    bare_runs: list[dict[str, Any]],
    size: int,
    mode: str,
) -> None:
    n = cfg.size(size)
    recovered[(mode, size)] = stat = Stat.of([r["recovered_s"] for r in engine_runs])
    first = recovered.get((mode, SIZES[0]))
    growth = (
        None
        if first is None or size == SIZES[0]
        else Stat.derived((stat.median / n) / (first.median / cfg.size(SIZES[0])))
    )
    section.rows.append(
        Row(
            "5",
            f"recover {n:,} parked instances, MemoryStorage, {mode}",
            stat,
            "s",
            ratio=growth,
            ratio_label="recovery: per-instance time at 100k / at 10k",
            target="linear (<= 1.5x per instance)"
            if growth
            else f"= {n / stat.median:,.0f} instances/s",
            verdict=verdict(growth.median, 1.5) if growth else "",
        )
    )
    section.rows.append(
        Row(
            "3",
            f"resume all, one caller, until completed, {mode}, N={n:,}",
            Stat.of([n / r["resumed_s"] for r in engine_runs]),
            "resumes/s",
            baseline=Stat.of([n / r["resumed_s"] for r in bare_runs]),
            ratio=ratios(
                [r["resumed_s"] for r in engine_runs], [r["resumed_s"] for r in bare_runs]
            ),
            ratio_label="resume: engine time / bare time (per run pair)",
            target="(Elixir: 16-18k/s)",
        )
    )
    acked = Stat.of([n / r["acked_s"] for r in engine_runs])
    section.rows.append(
        Row("3", f"resume all, acknowledged only, {mode}, N={n:,}", acked, "resumes/s")
    )


def _many_rows(cfg: Config, section: Section) -> None:
    """One million waiting instances in one process (``--full``; a tiny N in ``--smoke``)."""
    if not (cfg.full or cfg.smoke):
        section.notes.append(f"{MILLION:,} waiting instances in one process run only with --full")
        return
    n = cfg.size(MILLION)
    if not SUPPORTED:
        section.rows.append(
            Row("3", f"start {n:,} waiting instances, passivated {UNSUPPORTED}", None, "")
        )
        return
    cfg.log(f"scenario 3: start {n:,} waiting instances on a passivated engine, one process")
    result = in_subprocess("parked:many", timeout=3 * 3600.0, n=n, mode="passivated")
    section.rows.append(
        Row(
            "3",
            f"start {n:,} waiting instances, passivated, one process",
            Stat.one(result["started_s"]),
            "s",
            target=f"= {n / result['started_s']:,.0f} starts/s, {result['cpu_s']:.1f} CPU-s",
        )
    )
    section.rows.append(
        Row(
            "3",
            f"RSS with {n:,} waiting instances, passivated",
            Stat.one(result["rss"] / KIB / KIB),
            "MiB",
            target=f"{result['added'] / n:,.0f} B/inst added "
            f"({result['snapshot_bytes'] / n:,.0f} B/inst snapshot)",
        )
    )


def _memory_rows(
    section: Section, runs: dict[tuple[str, bool], list[dict[str, Any]]], n: int
) -> None:
    for kind, mode in ((f"engine:{m}", m) for m in TARGET_KIB):
        for trace, label in ((False, "RSS"), (True, "tracemalloc")):
            if not runs.get((kind, trace)):
                continue
            engine = Stat.of([r["bytes"] / n / KIB for r in runs[(kind, trace)]])
            bare = Stat.of([r["bytes"] / n / KIB for r in runs[("bare", trace)]])
            section.rows.append(
                Row(
                    "3",
                    f"memory per parked instance, {mode} ({label}), N={n:,}",
                    engine,
                    "KiB",
                    baseline=bare,
                    ratio=ratios(
                        [r["bytes"] for r in runs[(kind, trace)]],
                        [r["bytes"] for r in runs[("bare", trace)]],
                    ),
                    ratio_label="memory: engine / bare (per run pair)",
                    target=f"< {TARGET_KIB[mode]:g} KiB, snapshot included",
                    verdict=verdict(engine.median, TARGET_KIB[mode]),
                )
            )
            if not trace:
                section.rows.append(
                    Row(
                        "3",
                        f"of which MemoryStorage snapshot bytes, {mode}, N={n:,}",
                        Stat.of([r["snapshot_bytes"] / n for r in runs[(kind, trace)]]),
                        "B",
                    )
                )
            if trace and runs[(kind, True)][0]["top"]:
                section.notes.append(
                    f"top allocation sites of {n:,} parked instances, {mode} (tracemalloc, "
                    "first run; includes the MemoryStorage snapshot): "
                    + "; ".join(runs[(kind, True)][0]["top"][:10])
                )


def _start_rows(section: Section, engine_runs: list[dict[str, Any]], n: int) -> None:
    batches = [r["batches"] for r in engine_runs]
    pauses = [r["gc_pauses"] for r in engine_runs]
    count = len(batches[0])
    per_batch = n // count
    first = Stat.of([per_batch / b[0] for b in batches])
    first_net = Stat.of([per_batch / (b[0] - g[0]) for b, g in zip(batches, pauses, strict=True)])
    for position in sorted({0, count // 10, count // 2, count - 1}):
        span = f"{position * per_batch + 1:,}-{(position + 1) * per_batch:,} of {n:,}"
        slowdown = Stat.of([b[position] / b[0] for b in batches])
        section.rows.append(
            Row(
                "8",
                f"start (unique check), instances {span}",
                Stat.of([per_batch / b[position] for b in batches]),
                "starts/s",
                baseline=first,
                ratio=slowdown,
                ratio_label="start: batch time / first batch time",
                target="flat (<= 1.5x, my noise margin)",
                verdict=verdict(slowdown.median, 1.5),
            )
        )
        net = [
            (b[position] - g[position], b[0] - g[0]) for b, g in zip(batches, pauses, strict=True)
        ]
        net_slowdown = Stat.of([a / z for a, z in net])
        section.rows.append(
            Row(
                "8",
                f"same, minus cyclic-GC pauses, instances {span}",
                Stat.of([per_batch / a for a, _ in net]),
                "starts/s",
                baseline=first_net,
                ratio=net_slowdown,
                target="flat (<= 1.5x, my noise margin)",
                verdict=verdict(net_slowdown.median, 1.5),
            )
        )
    collections = Stat.of([r["full_collections"] for r in engine_runs])
    paused = Stat.of([sum(g) for g in pauses])
    section.notes.append(
        f"N={n:,}: parking ran {collections.median:g} full (generation 2) garbage collections "
        f"and {paused.median:.2f} s of GC pauses in all (medians); a full collection walks "
        "every live object, so the batch it lands in is slower: they come at geometric "
        "intervals (amortised linear), which is why one batch can stand out"
    )
