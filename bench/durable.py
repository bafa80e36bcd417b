"""Scenario 4: FileStorage and SQLiteStorage 3-step workflows/s against the raw-disk limit.

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

SQLiteStorage (group commit: one transaction, one WAL fdatasync, per batch of
concurrent puts) runs in the same alternation. Its raw-disk limit is what a
group commit can reach at best: snapshot-sized records appended to one file
from one thread, one fdatasync per ``inflight`` records. Its commits per
workflow are counted by the store (``SQLiteStorage.commits``: each is one WAL
fdatasync; checkpoints add two fsyncs per ~1000 WAL pages). Syscalls per
workflow are counted exactly, in separate untimed runs, with ``strace -f -c -e
trace=fsync,fdatasync`` when strace is installed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import trio

import hephaestus as hx

from ._harness import ROOT, Config, Row, Section, Stat, paired, ratios
from ._workflows import LINEAR

INFLIGHT = (1, 10, 100)
TOTAL = {True: {1: 40, 10: 200, 100: 500}, False: {1: 300, 10: 600, 100: 1_000}}
SQLITE_TOTAL = {True: {1: 200, 10: 1_000, 100: 2_000}, False: {1: 600, 10: 1_500, 100: 2_500}}
"""SQLiteStorage is faster: more workflows, so a run lasts long enough to measure."""
SYNC_TOTAL = 300
"""Workflows per strace-counted run."""


def make_storage(kind: str, path: str, durable: bool) -> hx.FileStorage | hx.SQLiteStorage:
    """A FileStorage in directory ``path``, or an SQLiteStorage in ``path/state.sqlite``."""
    if kind == "sqlite":
        return hx.SQLiteStorage(os.path.join(path, "state.sqlite"), durable=durable)
    return hx.FileStorage(path, durable=durable)


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


async def engine_run(
    path: str,
    durable: bool,
    total: int,
    inflight: int,
    kind: str = "files",
    stats: dict[str, int] | None = None,
) -> float:
    """Run ``total`` linear instances, ``inflight`` at a time; return the seconds it took.

    ``kind`` is "files" or "sqlite"; ``stats["commits"]`` gets SQLiteStorage's
    commit count when ``stats`` is given.
    """
    counter = itertools.count()
    store = make_storage(kind, path, durable)
    async with hx.open_engine(workflows=[LINEAR], storage=store) as engine:

        async def worker() -> None:
            while (i := next(counter)) < total:
                instance_id = await engine.start(LINEAR, f"d{i}")
                final = await engine.wait(instance_id)
                if final.status is not hx.Status.COMPLETED:
                    raise RuntimeError(f"{instance_id} ended {final.status}")

        began = time.perf_counter()
        commits = getattr(store, "commits", 0)
        async with trio.open_nursery() as nursery:
            for _ in range(inflight):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - began
        if stats is not None:
            stats["commits"] = getattr(store, "commits", 0) - commits
    return elapsed


def raw_append(path: str, writes: int, group: int, *, size: int, durable: bool) -> float:
    """Append ``writes`` records of ``size`` bytes to one file, one fdatasync per ``group``."""
    os.makedirs(path, exist_ok=True)
    payload = os.urandom(size)
    fd = os.open(os.path.join(path, "journal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        began = time.perf_counter()
        for i in range(writes):
            os.write(fd, payload)
            if durable and (i + 1) % group == 0:
                os.fdatasync(fd)
        if durable:
            os.fdatasync(fd)
        return time.perf_counter() - began
    finally:
        os.close(fd)


def sync_child(kind: str, path: str, total: int, inflight: int) -> None:
    """Run one durable engine run (what ``count_syncs`` traces)."""
    trio.run(engine_run, path, True, total, inflight, kind)


def count_syncs(cfg: Config, kind: str, total: int, inflight: int) -> int | None:
    """Count fsync + fdatasync calls of a durable run with strace; None without strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    root = _fresh(cfg, f"sync-{kind}")
    out = os.path.join(root, "strace.txt")
    code = (
        "import bench.durable as d; "
        f"d.sync_child({kind!r}, {os.path.join(root, 'store')!r}, {total}, {inflight})"
    )
    python = [sys.executable, "-c", code]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        done = subprocess.run(
            [strace, "-f", "-qq", "-c", "-o", out, "-e", "trace=fsync,fdatasync", *python],
            env=env,
            capture_output=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            cfg.log(f"strace run failed: {done.stderr.decode()[-300:]}")
            return None
        with open(out, encoding="utf-8") as file:
            return _strace_calls(file.read())
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _strace_calls(summary: str) -> int:
    """Sum the ``calls`` column of fsync and fdatasync in an ``strace -c`` summary."""
    calls = 0
    for line in summary.splitlines():
        words = line.split()
        if words and words[-1] in ("fsync", "fdatasync"):
            calls += int(words[3])
    return calls


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
    sqlite_total: int = 0,
    sqlite_writes: int = 0,
    sqlite_usage: list[tuple[int, int]] | None = None,
    commits: list[int] | None = None,
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

    def sqlite() -> float:
        stats: dict[str, int] = {}

        def one(p: str) -> float:
            return trio.run(engine_run, p, durable, sqlite_total, inflight, "sqlite", stats)

        elapsed = _in_fresh_dir(cfg, "sqlite", one, sqlite_usage)
        if commits is not None:
            commits.append(stats.get("commits", 0))
        return elapsed

    def append() -> float:
        return _in_fresh_dir(
            cfg,
            "append",
            lambda p: raw_append(p, sqlite_writes, inflight, size=size, durable=durable),
        )

    if not engine:
        return {"raw": raw}
    cases = {"raw": raw, "engine": file}
    if sqlite_total:
        cases["sqlite"] = sqlite
        if durable:
            cases["append"] = append
    return cases


def run(cfg: Config) -> Section:
    section = Section("FileStorage and SQLiteStorage vs the raw-disk limit (scenario 4)")
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
        f"a linear 3-step instance stores {puts:g} snapshots; the raw loops "
        f"write {size} B per record (FileStorage's bytes on disk per finished instance, or "
        "600 B when FileStorage is missing)"
    )
    rewrites = max(1, round(puts))
    for durable in (True, False):
        for inflight in INFLIGHT:
            total = cfg.size(TOTAL[durable][inflight]) if cfg.smoke else TOTAL[durable][inflight]
            total = max(total, inflight)
            sqlite_total = max(cfg.size(SQLITE_TOTAL[durable][inflight]), inflight)
            writes = int(total * puts)
            cfg.log(f"scenario 4: durable={durable} in flight={inflight} total={total}")
            usage: list[tuple[int, int]] = []
            sqlite_usage: list[tuple[int, int]] = []
            commits: list[int] = []
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
                sqlite_total=sqlite_total,
                sqlite_writes=int(sqlite_total * puts),
                sqlite_usage=sqlite_usage,
                commits=commits,
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
            _sqlite_rows(section, times, mode, inflight, sqlite_total, puts, commits)
            if usage and inflight == INFLIGHT[-1]:
                for label, used, n in (
                    ("FileStorage", usage, total),
                    ("SQLiteStorage", sqlite_usage, sqlite_total),
                ):
                    if not used:
                        continue
                    section.rows.append(
                        Row(
                            "4",
                            f"{label} bytes on disk per finished instance ({mode})",
                            Stat.of([u[0] / n for u in used]),
                            "B",
                            baseline=Stat.of([u[1] / n for u in used]),
                            ratio_label="",
                            target="baseline column: allocated (st_blocks)",
                        )
                    )
    if not missing:
        _sync_rows(cfg, section)
    _put_rows(cfg, section)
    return section


def _sqlite_rows(
    section: Section,
    times: dict[str, list[float]],
    mode: str,
    inflight: int,
    total: int,
    puts: float,
    commits: list[int],
) -> None:
    """Add SQLiteStorage's wf/s against the append+fdatasync limit, and its commits/wf."""
    if "sqlite" not in times:
        return
    writes = total * puts
    wf = Stat.of([total / t for t in times["sqlite"]])
    case = f"SQLiteStorage({mode}) 3-step, {inflight} in flight"
    if mode != "durable":  # without fdatasync the append loop measures only the page cache
        section.rows.append(Row("4", case, wf, "wf/s"))
        return
    append = Stat.of([writes / t for t in times["append"]])
    section.rows.append(
        Row(
            "4",
            case,
            wf,
            "wf/s",
            baseline=append.map(lambda r: r / puts),
            ratio=ratios(times["append"], times["sqlite"]),
            ratio_label="SQLite rows: engine snapshot writes/s / raw appends/s with one "
            "fdatasync per in-flight group (baseline column: that limit in wf/s)",
            target="as close to 1 as possible",
        )
    )
    if commits and mode == "durable":
        section.rows.append(
            Row(
                "4",
                f"SQLiteStorage commits (WAL fdatasyncs) per workflow, {inflight} in flight",
                Stat.of([c / total for c in commits]),
                "/wf",
                target=f"{puts:g} without group commit",
            )
        )


def _sync_rows(cfg: Config, section: Section) -> None:
    """Add fsync + fdatasync calls per workflow, counted with strace (durable only)."""
    levels = INFLIGHT[:1] if cfg.smoke else INFLIGHT
    total = cfg.size(SYNC_TOTAL) if cfg.smoke else SYNC_TOTAL
    for inflight in levels:
        for kind, label in (("files", "FileStorage"), ("sqlite", "SQLiteStorage")):
            cfg.log(f"scenario 4: counting fsyncs, {label}, {inflight} in flight, N={total}")
            calls = count_syncs(cfg, kind, max(total, inflight), inflight)
            if calls is None:
                section.notes.append("fsyncs per workflow: SKIPPED (no strace here)")
                return
            section.rows.append(
                Row(
                    "4",
                    f"{label} fsync+fdatasync calls per workflow, {inflight} in flight",
                    Stat.one(calls / max(total, inflight)),
                    "/wf",
                    target="counted by strace -f -c, one untimed run incl. open and close",
                )
            )


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
