"""PostgresStorage: durable 3-step workflows/s, 1 and 3 engines, against DBOS on the same server.

``python -m bench --only postgres`` (a group of ``python -m bench``) writes
this table into docs/benchmarks.md; ``python -m bench.postgres`` prints it,
and ``python -m bench.peers --only postgres`` (``nox -s bench_peers``) runs it
beside the SQLite peers. The DBOS side runs where ``dbos`` is importable (the
bench_peers session, or any environment with it); elsewhere the table has our
sides only and says so.

The server is ``HEPHAESTUS_PG_DSN`` or a throwaway cluster with PostgreSQL's
durable defaults (``fsync=on``, ``synchronous_commit=on``: every commit waits
for its WAL flush), on a unix socket; each run gets a new database. Sides,
alternating ``repeats`` times, each in fresh interpreters after a 20-workflow
warm-up:

- ``dbos``: DBOS with that database as its system database, ``inflight``
  threads (1: one caller waiting for each workflow), its defaults otherwise;
- ``pg``: one engine on ``PostgresStorage``, ``inflight`` tasks;
- ``pg3``: three engine processes on one database, each starting and waiting
  for a third of the workflows with a third of the tasks (at least one), all
  released at once; the figure is all workflows over first start to last end.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib import metadata

import trio

import hephaestus as hx
from hephaestus.testing import _pg_cluster

from ._harness import Config, Row, Section, Stat, in_subprocess, ratios, verdict
from ._report import render_text
from ._workflows import LINEAR

WARMUP = 20
SIDES = ("dbos", "pg", "pg3")
TARGET = 3.0
"""Ours / DBOS at 10 in flight (issue #14)."""
TITLE = "Peers on PostgreSQL: DBOS vs PostgresStorage with 1 and 3 engines"
_databases = itertools.count()


async def engine_run(
    dsn: str, total: int, inflight: int, *, prefix: str = "d", start_at: float | None = None
) -> tuple[float, float]:
    """Run ``total`` linear instances on PostgresStorage, ``inflight`` at a time.

    Returns (first start, last end) as ``time.time()``; with ``start_at`` the
    workers wait until then (so several processes begin together).
    """
    counter = itertools.count()
    store = hx.PostgresStorage(dsn)
    async with hx.open_engine(workflows=[LINEAR], storage=store) as engine:
        for i in range(WARMUP):
            await engine.wait(await engine.start(LINEAR, f"{prefix}w{i}"))

        async def worker() -> None:
            while (i := next(counter)) < total:
                instance_id = await engine.start(LINEAR, f"{prefix}{i}")
                final = await engine.wait(instance_id)
                if final.status is not hx.Status.COMPLETED:
                    raise RuntimeError(f"{instance_id} ended {final.status}")

        if start_at is not None:
            await trio.sleep(max(0.0, start_at - time.time()))
        began = time.time()
        async with trio.open_nursery() as nursery:
            for _ in range(inflight):
                nursery.start_soon(worker)
        return began, time.time()


def pg_child(dsn: str, total: int, inflight: int, prefix: str, start_at: float) -> list[float]:
    """One engine process of a run (``in_subprocess`` target)."""
    began, ended = trio.run(
        partial(engine_run, prefix=prefix, start_at=start_at), dsn, total, inflight
    )
    return [began, ended]


def dbos_run(dsn: str, n: int, inflight: int) -> float:
    """Run ``WARMUP`` then ``n`` DBOS 3-step workflows on ``dsn``; seconds for the ``n``."""
    from .peers import dbos_three_steps

    return dbos_three_steps(dsn, n, inflight)


def side(which: str, admin_dsn: str, n: int, inflight: int) -> float:
    """One measured run of ``which`` on a new database; returns seconds for ``n`` workflows."""
    name = f"hx_bench_{os.getpid()}_{next(_databases)}"
    dsn = _pg_cluster.create_database(admin_dsn, name)
    try:
        if which == "dbos":
            seconds: float = in_subprocess("postgres:dbos_run", dsn=dsn, n=n, inflight=inflight)
            return seconds
        engines = 3 if which == "pg3" else 1
        start_at = time.time() + 3.0 + engines  # after every child has warmed up
        shares = [n // engines + (1 if k < n % engines else 0) for k in range(engines)]
        tasks = [max(1, math.ceil(inflight / engines))] * engines
        with ThreadPoolExecutor(max_workers=engines) as pool:
            spans = list(
                pool.map(
                    lambda k: in_subprocess(
                        "postgres:pg_child",
                        dsn=dsn,
                        total=shares[k],
                        inflight=tasks[k],
                        prefix=f"e{k}-",
                        start_at=start_at,
                    ),
                    range(engines),
                )
            )
        return float(max(end for _, end in spans) - min(begin for begin, _ in spans))
    finally:
        _pg_cluster.drop_database(admin_dsn, name)


def compare(
    cfg: Config, admin_dsn: str, n: int, inflights: Sequence[int], sides: Sequence[str] = SIDES
) -> Section:
    """The PostgreSQL peers table: ours with 1 and 3 engines against DBOS, per in-flight count."""
    section = Section(TITLE)
    for inflight in inflights:
        times: dict[str, list[float]] = {which: [] for which in sides}
        for i in range(cfg.repeats):
            for which in sides:
                cfg.log(f"postgres: {which}, N={n:,}, {inflight} in flight, run {i + 1}")
                times[which].append(side(which, admin_dsn, n, inflight))
        dbos = Stat.of([n / t for t in times["dbos"]]) if "dbos" in times else None
        for which, label in (("pg", "1 engine"), ("pg3", "3 engines")):
            if which not in times:
                continue
            speedup = ratios(times["dbos"], times[which]) if dbos is not None else None
            section.rows.append(
                Row(
                    "peer-pg",
                    f"PostgresStorage, {label}, durable 3-step, N={n:,}, {inflight} in flight",
                    Stat.of([n / t for t in times[which]]),
                    "wf/s",
                    baseline=dbos,
                    ratio=speedup,
                    ratio_label="ours wf/s / DBOS wf/s (baseline: DBOS on the same server)",
                    target=f">= {TARGET:g}x DBOS" if inflight == 10 else "",
                    verdict=(
                        verdict(speedup.median, TARGET, lower=False)
                        if speedup is not None and inflight == 10
                        else ""
                    ),
                )
            )
    section.notes.append(
        f"PostgreSQL {_server_version(admin_dsn)} with fsync=on and synchronous_commit=on on "
        "a unix socket, a new database per run; each side in fresh processes after "
        f"{WARMUP} warm-up workflows; sides alternate"
        + (f"; dbos {metadata.version('dbos')}" if "dbos" in sides else "")
        + ". 3 engines: each runs a third of N with a third of the tasks (at least 1)."
    )
    return section


def _server_version(admin_dsn: str) -> str:
    import psycopg

    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


def has_dbos() -> bool:
    """Whether this interpreter (and so its bench children) can run the DBOS side."""
    return importlib.util.find_spec("dbos") is not None


def run(cfg: Config) -> Section:
    """The ``postgres`` group of ``python -m bench``: the table above, written into the report."""
    n = 40 if cfg.smoke else 500
    inflights = [10] if cfg.smoke else [1, 10, 100]
    sides = SIDES if has_dbos() else tuple(s for s in SIDES if s != "dbos")
    with _pg_cluster.server(durable=True) as admin:
        if admin is None:
            return Section(
                TITLE,
                notes=["SKIPPED: no PostgreSQL (set HEPHAESTUS_PG_DSN or install its binaries)"],
            )
        section = compare(cfg, admin, n, inflights, sides)
    if "dbos" not in sides:
        section.notes.append(
            "DBOS is not installed in this environment, so there is no baseline and no verdict: "
            "run `nox -s bench_peers -- --only postgres` or install `dbos`"
        )
    return section


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.postgres", description=__doc__)
    parser.add_argument("-n", type=int, default=1_000)
    parser.add_argument("--inflight", default="1,10,100")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sides", default=",".join(SIDES))
    args = parser.parse_args(argv)
    cfg = Config(repeats=args.repeats)
    with _pg_cluster.server(durable=True) as admin:
        if admin is None:
            print("no PostgreSQL: set HEPHAESTUS_PG_DSN or install it", file=sys.stderr)
            return 1
        began = time.perf_counter()
        section = compare(
            cfg, admin, args.n, [int(x) for x in args.inflight.split(",")], args.sides.split(",")
        )
        section.seconds = time.perf_counter() - began
    print(render_text([section], cfg, section.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
