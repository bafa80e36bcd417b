"""Peer comparison: the same durable 3-step workflow on DBOS (SQLite) and on ours, alternately.

``python -m bench.peers`` (``nox -s bench_peers``: a virtualenv of its own
with ``dbos`` installed). DBOS runs with its SQLite system database
(``system_database_url="sqlite:///..."``, its defaults otherwise); ours runs
on ``SQLiteStorage(durable=True)`` and on ``FileStorage(durable=True)``; all
in a fresh directory under the same temp dir (same disk), each run in a fresh
interpreter after a 20-workflow warm-up, DBOS, SQLiteStorage and FileStorage
alternating ``repeats`` times. The workflow: three steps that each return a
value, run to completion, ``inflight`` at a time (1, 10 and 100 by default;
1 is a caller that waits for each workflow).

The result replaces the peers block of docs/benchmarks.md (``python -m bench``
keeps that block when it rewrites the file).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import trio

from . import postgres
from ._harness import ROOT, Config, Row, Section, Stat, in_subprocess, ratios, verdict
from ._report import machine, render_text, write_report

PEERS_BEGIN = "<!-- peers:begin -->"
PEERS_END = "<!-- peers:end -->"
WARMUP = 20

_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def _keeps_signature(decorator: Any) -> Callable[[_Fn], _Fn]:
    """Type one of DBOS's decorators: it returns the function with the same signature.

    dbos is installed only in the bench_peers session, so the typecheck session
    sees ``DBOS`` as ``Any`` (pyproject.toml's mypy override); this is the one
    place that says what its decorators do.
    """
    return cast("Callable[[_Fn], _Fn]", decorator)


def dbos_three_steps(system_database_url: str, n: int, inflight: int) -> float:
    """Run ``WARMUP`` then ``n`` DBOS 3-step workflows on that system database.

    Returns the seconds for the ``n``; ``inflight`` of them at a time (threads,
    DBOS's own concurrency model). Every peer table drives DBOS through this.
    """
    from dbos import DBOS

    DBOS(config={"name": "hxbench", "system_database_url": system_database_url})

    @_keeps_signature(DBOS.step())
    def step_a(i: int) -> str:
        return "ok"

    @_keeps_signature(DBOS.step())
    def step_b(i: int) -> str:
        return "ok"

    @_keeps_signature(DBOS.step())
    def step_c(i: int) -> str:
        return "ok"

    @_keeps_signature(DBOS.workflow())
    def three_steps(i: int) -> str:
        return step_a(i) + step_b(i) + step_c(i)

    DBOS.launch()
    try:
        for i in range(WARMUP):
            three_steps(-1 - i)
        began = time.perf_counter()
        if inflight == 1:
            for i in range(n):
                three_steps(i)
        else:
            with ThreadPoolExecutor(max_workers=inflight) as pool:
                results = list(pool.map(three_steps, range(n)))
            assert results == ["okokok"] * n
        return time.perf_counter() - began
    finally:
        DBOS.destroy()


def _dbos_run(path: str, n: int, inflight: int) -> float:
    """DBOS on SQLite in ``path``: :func:`dbos_three_steps`."""
    return dbos_three_steps(f"sqlite:///{path}/dbos.sqlite", n, inflight)


def _ours_run(path: str, n: int, inflight: int, kind: str = "files") -> float:
    from .durable import engine_run

    trio.run(engine_run, os.path.join(path, "warm"), True, WARMUP, 1, kind)
    return trio.run(engine_run, os.path.join(path, "store"), True, n, inflight, kind)


SIDES = ("dbos", "sqlite", "ours")
"""DBOS on SQLite, ours on SQLiteStorage, ours on FileStorage ("ours": its old name)."""
TARGETS = {1: 7.0}
"""SQLiteStorage / DBOS targets by in-flight count (10x elsewhere; the goal is 10x at 1 too)."""


def side(which: str, n: int, inflight: int, tmp_dir: str) -> float:
    """One measured run of ``which`` (one of ``SIDES``) in a fresh directory."""
    path = tempfile.mkdtemp(prefix=f"hx-peers-{which}-", dir=tmp_dir)
    try:
        if which == "dbos":
            return _dbos_run(path, n, inflight)
        return _ours_run(path, n, inflight, "sqlite" if which == "sqlite" else "files")
    finally:
        shutil.rmtree(path, ignore_errors=True)


def compare(cfg: Config, n: int, inflights: Sequence[int]) -> Section:
    section = Section(
        "Peers: DBOS on SQLite vs SQLiteStorage and FileStorage (durable=True), same disk"
    )
    for inflight in inflights:
        times: dict[str, list[float]] = {which: [] for which in SIDES}
        for i in range(cfg.repeats):
            for which in SIDES:
                cfg.log(f"peers: {which}, N={n:,}, {inflight} in flight, run {i + 1}/{cfg.repeats}")
                times[which].append(
                    in_subprocess(
                        "peers:side", which=which, n=n, inflight=inflight, tmp_dir=cfg.tmp_dir
                    )
                )
        dbos = Stat.of([n / t for t in times["dbos"]])
        for which, label in (("sqlite", "SQLiteStorage"), ("ours", "FileStorage")):
            speedup = ratios(times["dbos"], times[which])
            target = TARGETS.get(inflight, 10.0) if which == "sqlite" else 10.0
            section.rows.append(
                Row(
                    "peer",
                    f"{label} durable 3-step, N={n:,}, {inflight} in flight",
                    Stat.of([n / t for t in times[which]]),
                    "wf/s",
                    baseline=dbos,
                    ratio=speedup,
                    ratio_label="ours wf/s / DBOS wf/s (baseline: DBOS)",
                    target=f">= {target:g}x DBOS" + (" (goal 10x)" if target < 10 else ""),
                    verdict=verdict(speedup.median, target, 10.0, lower=False),
                )
            )
    from importlib import metadata

    section.notes.append(
        f"dbos {metadata.version('dbos')}, SQLite "
        f"{__import__('sqlite3').sqlite_version}; each run a fresh process "
        f"and directory after {WARMUP} warm-up workflows; DBOS, SQLiteStorage and "
        "FileStorage alternate"
    )
    return section


def write_block(
    report: Path, section: Section, cfg: Config, command: str, extra: Sequence[Section] = ()
) -> None:
    """Put the peers table (and the ``extra`` ones) into ``report`` between the peers markers."""
    from ._report import markdown_section

    info = machine()
    tables = [markdown_section(s, level=2) for s in (section, *extra)]
    block = "\n".join(
        [
            PEERS_BEGIN,
            "\n\n".join(tables),
            "",
            f"_Command: `{command}` (or `nox -s bench_peers`); {time.strftime('%Y-%m-%d %H:%M')} "
            f"UTC; {cfg.repeats} runs per side; Python {info['python']}, trio {info['trio']}, "
            f"commit `{info['commit']}`._",
            PEERS_END,
        ]
    )
    text = report.read_text(encoding="utf-8") if report.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(PEERS_BEGIN) + ".*?" + re.escape(PEERS_END), re.DOTALL)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else (text.rstrip("\n") + "\n\n" + block + "\n")
    )
    report.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-n", type=int, default=1_000, help="workflows per run (default 1000)")
    parser.add_argument(
        "--inflight",
        default="1,10,100",
        help="comma-separated concurrency levels (default 1,10,100)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs per side (default 5)")
    parser.add_argument("--tmp-dir", default=tempfile.gettempdir())
    parser.add_argument("--no-write", action="store_true", help="do not touch the report")
    parser.add_argument(
        "--only",
        choices=("all", "sqlite", "postgres"),
        default="all",
        help="DBOS on SQLite, DBOS on PostgreSQL (bench.postgres), or both (default)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    try:
        import dbos  # noqa: F401 - only checking that it is there
    except ImportError as exc:
        print(
            f"bench.peers needs dbos in this environment (pip install dbos): {exc}", file=sys.stderr
        )
        return 1
    cfg = Config(repeats=args.repeats, tmp_dir=args.tmp_dir)
    inflights = [int(x) for x in args.inflight.split(",")]
    sections: list[Section] = []
    if args.only in ("all", "sqlite"):
        began = time.perf_counter()
        sections.append(compare(cfg, args.n, inflights))
        sections[-1].seconds = time.perf_counter() - began
    if args.only in ("all", "postgres"):
        from hephaestus.testing import _pg_cluster

        with _pg_cluster.server(durable=True) as admin:
            if admin is None:
                print("bench.peers: no PostgreSQL here, its table is skipped", file=sys.stderr)
            else:
                began = time.perf_counter()
                sections.append(postgres.compare(cfg, admin, args.n, inflights))
                sections[-1].seconds = time.perf_counter() - began
    total = sum(s.seconds for s in sections)
    print(render_text(sections, cfg, total))
    if not args.no_write and sections:
        command = " ".join(["python -m bench.peers", *(sys.argv[1:] if argv is None else argv)])
        write_results(args.output, sections, cfg, command)
        cfg.log(f"wrote {args.output}")
    return 0


def write_results(report: Path, sections: Sequence[Section], cfg: Config, command: str) -> None:
    """Put the SQLite peers table in the peers block, the PostgreSQL one in its own section.

    The PostgreSQL table is the ``postgres`` group's section of the report
    (what ``python -m bench --only postgres`` writes), so neither run
    replaces the other's table.
    """
    ours = [s for s in sections if s.title != postgres.TITLE]
    if ours:
        write_block(report, ours[0], cfg, command, extra=ours[1:])
    pg = [s for s in sections if s.title == postgres.TITLE]
    if pg:
        write_report(report, pg, cfg, pg[0].seconds, command, only=True)


if __name__ == "__main__":
    sys.exit(main())
