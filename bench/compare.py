"""``python -m bench.compare BASE``: scenario 1 of this tree against another revision, one run.

A change to the runtime or the core must say what it did to speed, as a ratio
against the code before it, measured in the same run on the same (shared,
noisy) machine. This runs the linear 3-step workflow of scenario 1
(``--fanout``: the fan-out of scenario 2) on MemoryStorage in fresh
interpreters, alternating: this tree, then ``BASE`` (a
git revision checked out into a temporary worktree, or a directory holding a
``src/`` tree). Every run also times bare Trio doing the same awaits in the
same interpreter, so each tree gets its engine/bare overhead as well. Wall
time and CPU time (``time.process_time``) are both reported: on a shared box
the CPU figure is the steadier one.

It prints, per tree, the median and min-max of instances/s and of the
overhead (engine / bare, wall and CPU), then this tree / BASE.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ._harness import ROOT, Stat, fmt, fmt_range

_CHILD = r"""
import json, sys, time
import trio
import hephaestus as hx
from bench._workflows import FANOUT, LINEAR
from bench.throughput import bare_fanout, bare_linear

N = int(sys.argv[1])
WORKFLOW, BARE = (FANOUT, bare_fanout) if sys.argv[2] == "fanout" else (LINEAR, bare_linear)

async def engine(n):
    async with hx.open_engine(workflows=[WORKFLOW], storage=hx.MemoryStorage()) as eng:
        ids = [await eng.start(WORKFLOW, str(i)) for i in range(n)]
        for instance_id in ids:
            await eng.wait(instance_id)

def timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    trio.run(fn, *args)
    return time.perf_counter() - wall, time.process_time() - cpu

timed(engine, min(N, 1000))
timed(BARE, min(N, 1000))
engine_wall, engine_cpu = timed(engine, N)
bare_wall, bare_cpu = timed(BARE, N)
print(json.dumps({"engine_wall": engine_wall, "engine_cpu": engine_cpu,
                  "bare_wall": bare_wall, "bare_cpu": bare_cpu}))
"""


def _one_run(src: Path, n: int, scenario: str = "linear") -> dict[str, float]:
    """Run scenario 1 (or 2, ``"fanout"``) once in a fresh interpreter importing ``src``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n), scenario],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def _base_src(base: str, scratch: Path) -> Path:
    """Return the ``src`` directory of ``base``: a directory, or a git revision checked out."""
    if Path(base, "src", "hephaestus").is_dir():
        return Path(base, "src").resolve()
    tree = scratch / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), base], check=True
    )
    return tree / "src"


def _summary(label: str, runs: Sequence[dict[str, float]], n: int) -> dict[str, Stat]:
    stats = {
        "rate": Stat.of([n / r["engine_wall"] for r in runs]),
        "wall": Stat.of([r["engine_wall"] / r["bare_wall"] for r in runs]),
        "cpu": Stat.of([r["engine_cpu"] / r["bare_cpu"] for r in runs]),
        "engine_cpu": Stat.of([r["engine_cpu"] for r in runs]),
    }
    print(
        f"{label:>6}: {fmt(stats['rate'].median)} inst/s ({fmt_range(stats['rate'])}); "
        f"engine/bare wall {fmt(stats['wall'].median)}x ({fmt_range(stats['wall'])}), "
        f"CPU {fmt(stats['cpu'].median)}x ({fmt_range(stats['cpu'])})"
    )
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("base", help="a git revision (e.g. main~3) or a directory with src/")
    parser.add_argument("-n", type=int, default=10_000, help="instances per run (default 10,000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per tree (default 5)")
    parser.add_argument(
        "--fanout", action="store_true", help="scenario 2 (fan-out 3 / fan-in) instead of 1"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hx-compare-") as scratch:
        base_src = _base_src(args.base, Path(scratch))
        trees = {"this": ROOT / "src", "base": base_src}
        runs: dict[str, list[dict[str, float]]] = {"this": [], "base": []}
        try:
            for i in range(args.repeats):
                for label, src in trees.items():
                    print(f"  run {i + 1}/{args.repeats}: {label}", file=sys.stderr, flush=True)
                    runs[label].append(_one_run(src, args.n, "fanout" if args.fanout else "linear"))
        finally:
            if base_src != Path(args.base, "src").resolve():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_src.parent)],
                    check=False,
                )
    scenario = "2, fan-out 3 / fan-in" if args.fanout else "1, linear 3-step"
    print(f"scenario {scenario} on MemoryStorage, N={args.n:,}, {args.repeats} runs each")
    this = _summary("this", runs["this"], args.n)
    base = _summary("base", runs["base"], args.n)
    print(
        f"this / base: throughput {fmt(this['rate'].median / base['rate'].median)}x, "
        f"engine CPU time {fmt(this['engine_cpu'].median / base['engine_cpu'].median)}x "
        "(ratios of medians)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
