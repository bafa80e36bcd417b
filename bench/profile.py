"""Profile scenario 1 (linear 3-step, MemoryStorage) and print the hot spots.

``python -m bench.profile [-n 10000] [--top 25]``: cProfile over one
``trio.run`` of N instances after a warm-up, sorted by own time and by
cumulative time. cProfile inflates tiny functions; use the ranking, not the
absolute times. ``--pyinstrument`` uses pyinstrument instead when installed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from collections.abc import Sequence

import trio

from ._workflows import FANOUT, LINEAR
from .throughput import engine_run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-n", type=int, default=10_000, help="instances (default 10000)")
    parser.add_argument("--top", type=int, default=25, help="rows per listing")
    parser.add_argument("--fanout", action="store_true", help="profile scenario 2 instead")
    parser.add_argument(
        "--pyinstrument",
        action="store_true",
        help="sample with pyinstrument (pip install pyinstrument)",
    )
    args = parser.parse_args(argv)
    workflow = FANOUT if args.fanout else LINEAR
    trio.run(engine_run, 1_000, workflow)  # warm-up
    if args.pyinstrument:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
        trio.run(engine_run, args.n, workflow)
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        return 0
    profile = cProfile.Profile()
    profile.enable()
    trio.run(engine_run, args.n, workflow)
    profile.disable()
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats(key).print_stats(args.top)
        print(f"==== by {key} ====")
        print(out.getvalue().split("\n\n", 2)[-1] if "ncalls" in out.getvalue() else out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
