"""Scenario 4: FileStorage 3-step workflows/s against the raw-disk limit of the same disk.

Engine run: ``inflight`` worker tasks each start a linear 3-step instance and
wait for it, until ``total`` instances are done, on a fresh store. Every
instance stores ``puts`` snapshots (counted once through telemetry: the
start plus one per state change), so the engine's snapshot writes/s are
workflows/s x ``puts``.

Raw-disk run (the physical limit, alternating with the engine runs, in the
same directory tree): as many writes as the engine made, each a temp-file
write of a snapshot-sized payload + fsync + rename over + fsync of the
directory, from ``inflight`` threads; each file is rewritten ``puts`` times,
as an instance's snapshot is. For ``durable=False`` the raw loop skips both
fsyncs. Ratio: engine snapshot writes/s / raw writes/s.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import trio

import hephaestus as hx

from ._harness import Config, Row, Section, Stat, paired, ratios
from ._workflows import LINEAR

INFLIGHT = (1, 10, 100)
TOTAL = {True: {1: 40, 10: 200, 100: 500}, False: {1: 300, 10: 600, 100: 1_000}}


def file_storage_missing(tmp_dir: str) -> str | None:
    """Return why FileStorage cannot be benchmarked here, or None when it can."""
    path = tempfile.mkdtemp(prefix="hx-bench-probe-", dir=tmp_dir)
    try:
        hx.FileStorage(os.path.join(path, "store"), durable=True)
    except NotImplementedError as exc:
        return f"hx.FileStorage is not implemented yet ({exc})"
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return None


def puts_per_instance() -> float:
    """Count the snapshots one linear instance stores (start + every state change)."""
    counts = {"puts": 0}

    def count(event: hx.TelemetryEvent) -> None:
        if event.name in ("workflow.start", "workflow.transition"):
            counts["puts"] += 1

    async def main() -> None:
        async with hx.open_engine(workflows=[LINEAR], telemetry=count) as engine:
            ids = [await engine.start(LINEAR, f"p{i}") for i in range(10)]
            for instance_id in ids:
                await engine.wait(instance_id)

    trio.run(main)
    return counts["puts"] / 10


def disk_usage(path: str) -> tuple[int, int]:
    """Return (sum of file sizes, allocated bytes) under ``path``."""
    size = blocks = 0
    for folder, _, files in os.walk(path):
        for name in files:
            stat = os.stat(os.path.join(folder, name))
            size += stat.st_size
            blocks += stat.st_blocks * 512
    return size, blocks


async def engine_run(path: str, durable: bool, total: int, inflight: int) -> float:
    """Run ``total`` linear instances, ``inflight`` at a time; return the seconds it took."""
    counter = itertools.count()
    async with hx.open_engine(
        workflows=[LINEAR], storage=hx.FileStorage(path, durable=durable)
    ) as engine:

        async def worker() -> None:
            while (i := next(counter)) < total:
                instance_id = await engine.start(LINEAR, f"d{i}")
                final = await engine.wait(instance_id)
                if final.status is not hx.Status.COMPLETED:
                    raise RuntimeError(f"{instance_id} ended {final.status}")

        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(inflight):
                nursery.start_soon(worker)
        return time.perf_counter() - began


def raw_writes(
    path: str, writes: int, inflight: int, *, size: int, rewrites: int, durable: bool
) -> float:
    """Do ``writes`` atomic file replacements from ``inflight`` threads; return the seconds."""
    os.makedirs(path, exist_ok=True)
    payload = os.urandom(size)
    dir_fd = os.open(path, os.O_RDONLY)

    def writer(worker: int, count: int) -> None:
        for i in range(count):
            final = os.path.join(path, f"w{worker}-{i // rewrites}.snap")
            temp = final + ".tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, payload)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, final)
            if durable:
                os.fsync(dir_fd)

    shares = [writes // inflight + (1 if k < writes % inflight else 0) for k in range(inflight)]
    try:
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=inflight) as pool:
            for done in [pool.submit(writer, k, share) for k, share in enumerate(shares)]:
                done.result()
        return time.perf_counter() - began
    finally:
        os.close(dir_fd)


def _fresh(cfg: Config, label: str) -> str:
    return tempfile.mkdtemp(prefix=f"hx-bench-{label}-", dir=cfg.tmp_dir)


def _in_fresh_dir(
    cfg: Config, label: str, fn: Callable[[str], float], usage: list[tuple[int, int]] | None = None
) -> float:
    root = _fresh(cfg, label)
    try:
        elapsed = fn(os.path.join(root, "store"))
        if usage is not None:
            usage.append(disk_usage(os.path.join(root, "store")))
        return elapsed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _cases(
    cfg: Config,
    *,
    durable: bool,
    inflight: int,
    total: int,
    writes: int,
    size: int,
    rewrites: int,
    usage: list[tuple[int, int]],
    engine: bool,
) -> dict[str, Callable[[], float]]:
    def raw() -> float:
        return _in_fresh_dir(
            cfg,
            "raw",
            lambda p: raw_writes(
                p, writes, inflight, size=size, rewrites=rewrites, durable=durable
            ),
        )

    def file() -> float:
        return _in_fresh_dir(
            cfg, "file", lambda p: trio.run(engine_run, p, durable, total, inflight), usage
        )

    return {"raw": raw, "engine": file} if engine else {"raw": raw}


def run(cfg: Config) -> Section:
    section = Section("FileStorage vs the raw-disk limit (scenario 4)")
    missing = file_storage_missing(cfg.tmp_dir)
    puts = puts_per_instance()
    size = 600
    if missing:
        section.notes.append(
            f"SKIPPED the engine side: {missing}; only the raw-disk limit was measured"
        )
    else:
        sized: list[tuple[int, int]] = []
        _in_fresh_dir(cfg, "size", lambda p: trio.run(engine_run, p, False, 20, 1), sized)
        size = max(64, sized[0][0] // 20)
    section.notes.append(
        f"a linear 3-step instance stores {puts:g} snapshots; the raw loop "
        f"writes {size} B per file (bytes on disk per finished instance, or "
        "600 B when FileStorage is missing)"
    )
    rewrites = max(1, round(puts))
    for durable in (True, False):
        for inflight in INFLIGHT:
            total = cfg.size(TOTAL[durable][inflight]) if cfg.smoke else TOTAL[durable][inflight]
            total = max(total, inflight)
            writes = int(total * puts)
            cfg.log(f"scenario 4: durable={durable} in flight={inflight} total={total}")
            usage: list[tuple[int, int]] = []
            runs = _cases(
                cfg,
                durable=durable,
                inflight=inflight,
                total=total,
                writes=writes,
                size=size,
                rewrites=rewrites,
                usage=usage,
                engine=not missing,
            )
            times = paired(runs, cfg)
            raw = Stat.of([writes / t for t in times["raw"]])
            mode = "durable" if durable else "durable=False"
            if missing:
                section.rows.append(
                    Row("4", f"raw disk limit ({mode}), {inflight} in flight", raw, "writes/s")
                )
                continue
            wf = Stat.of([total / t for t in times["engine"]])
            limit = ratios(times["raw"], times["engine"])  # engine writes/s / raw writes/s
            section.rows.append(
                Row(
                    "4",
                    f"FileStorage({mode}) 3-step, {inflight} in flight",
                    wf,
                    "wf/s",
                    baseline=raw.map(lambda r: r / puts),
                    ratio=limit,
                    ratio_label="engine snapshot writes/s / raw writes/s "
                    "(baseline column: the raw limit in wf/s)",
                    target="as close to 1 as possible",
                )
            )
            if usage and inflight == INFLIGHT[-1]:
                section.rows.append(
                    Row(
                        "4",
                        f"bytes on disk per finished instance ({mode})",
                        Stat.of([u[0] / total for u in usage]),
                        "B",
                        baseline=Stat.of([u[1] / total for u in usage]),
                        ratio_label="",
                        target="baseline column: allocated (st_blocks)",
                    )
                )
    _put_rows(cfg, section)
    return section


def _put_rows(cfg: Config, section: Section) -> None:
    """Add ``bench/file_storage.py``'s puts/s against the raw protocol (its owner's measure)."""
    try:
        from . import file_storage
    except ImportError as exc:
        section.notes.append(
            f"SKIPPED FileStorage.put vs raw: bench/file_storage.py is missing or broken ({exc})"
        )
        return
    n = 40 if cfg.smoke else 1_000
    concurrency = (1, 10) if cfg.smoke else INFLIGHT
    cfg.log(f"scenario 4: bench.file_storage.measure(n={n}, repeats={cfg.repeats})")
    result = file_storage.measure(cfg.tmp_dir, n, concurrency, cfg.repeats)
    runs = result.get("repeats", cfg.repeats)
    for key, label in (("durable", "durable"), ("non_durable", "durable=False")):
        for c, stored in result["file_storage"][key].items():
            raw, ratio = result["raw"][key][c], result["ratio"][key][c]
            section.rows.append(
                Row(
                    "4",
                    f"FileStorage.put ({label}), {c} concurrent",
                    Stat(stored, stored, stored, runs),
                    "puts/s",
                    baseline=Stat(raw, raw, raw, runs),
                    ratio=Stat(ratio, ratio, ratio, runs),
                    ratio_label="put rows: FileStorage puts/s / raw protocol writes/s "
                    "(bench/file_storage.py)",
                    target="~1 (> 1: group commit)",
                )
            )
    section.notes.append(
        f"put rows: bench.file_storage.measure(n={n}, durable runs n/4, repeats={runs}), "
        f"payload {result.get('payload_bytes')} B; medians of alternating runs (it reports "
        "no range)"
    )
