"""``python -m bench``: run every scenario, print the table, write docs/benchmarks.md.

Options: ``--smoke`` (tiny N, one run: checks that the suite still works, the
figures mean nothing), ``--no-write`` (do not touch docs/benchmarks.md),
``--only GROUP[,GROUP]`` (see ``--list``; the report keeps the other groups'
sections from the run that wrote it, marked so), ``--repeats N``.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from ._harness import ROOT, Config, Section
from ._report import render_text, write_report

GROUPS: dict[str, str] = {
    "throughput": "scenarios 1, 2, 9: linear and fan-out instances/s vs bare Trio, scaling",
    "parked": "scenarios 3, 5, 8: memory per parked instance (passivated, resident), recovery "
    "from MemoryStorage, resumes/s, start cost vs population, 1M waiting (--full)",
    "durable": "scenario 4: FileStorage and SQLiteStorage workflows/s vs the raw-disk limit, "
    "fsyncs and bytes per workflow",
    "recovery": "scenario 5: open_engine to a serving engine, from MemoryStorage (100k), "
    "FileStorage and SQLite",
    "timers_scenario": "scenario 6: timers on distinct deadlines, virtual time (bench/timers.py)",
    "telemetry": "scenario 7: scenario 1 with no handler, a no-op handler, LogHandler",
    "postgres": "PostgresStorage workflows/s, 1 and 3 engines, against DBOS on the same "
    "PostgreSQL (DBOS where it is installed: nox -s bench_peers)",
    "scaleout": "PostgreSQL, 3 engine processes: takeover time after SIGKILL, by lease TTL",
}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny N and one run each: a seconds-long check that nothing rotted",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="also the slowest 100k cases (fan-out, tracemalloc, FileStorage "
        "recovery) and a million waiting instances in one process: about 30 min more",
    )
    parser.add_argument("--no-write", action="store_true", help="do not write the report file")
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "docs" / "benchmarks.md",
        help="where the report goes (default: docs/benchmarks.md)",
    )
    parser.add_argument("--only", default="", help="comma-separated groups to run (see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenario groups and exit")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="measured runs per figure after the warm-up (default 5; 1 in smoke)",
    )
    parser.add_argument(
        "--tmp-dir",
        default=None,
        help="directory for FileStorage stores (default: the system temp dir)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected scenario groups; return the process exit status."""
    args = parse(argv)
    if args.list:
        for name, what in GROUPS.items():
            print(f"{name:<16} {what}")
        return 0
    selected = [g for g in args.only.split(",") if g] or list(GROUPS)
    unknown = [g for g in selected if g not in GROUPS]
    if unknown:
        print(
            f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}",
            file=sys.stderr,
        )
        return 1
    repeats = args.repeats if args.repeats is not None else (1 if args.smoke else 5)
    cfg = Config(
        smoke=args.smoke,
        full=args.full,
        repeats=repeats,
        verbose=not args.quiet,
        **({"tmp_dir": args.tmp_dir} if args.tmp_dir else {}),
    )
    began = time.perf_counter()
    sections: list[Section] = []
    failed = False
    for name in selected:
        cfg.log(f"== {name}: {GROUPS[name]}")
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            group_run = getattr(module, "run_group", None) or module.run
            section: Section = group_run(cfg)
            section.method = section.method or (module.__doc__ or "").partition("\n\n")[2]
        except Exception:
            failed = True
            section = Section(
                f"{name} (FAILED)",
                notes=["the scenario raised; traceback:\n" + traceback.format_exc()],
            )
            traceback.print_exc()
        section.seconds = time.perf_counter() - started
        sections.append(section)
    elapsed = time.perf_counter() - began
    command = " ".join(
        ["python -m bench", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]
    )
    print(render_text(sections, cfg, elapsed))
    if not args.no_write:
        write_report(args.output, sections, cfg, elapsed, command, only=bool(args.only))
        cfg.log(f"wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
