"""Child of the SQLite disk-full test: ``python _sqlite_full_child.py DB``.

Fills ``SQLiteStorage(DB)`` until ``RLIMIT_FSIZE`` (set a little above the
files' current sizes, SIGXFSZ ignored, so writes past it fail with EFBIG or
come up short) makes a put fail. Prints ``ack ID REV`` for every acknowledged
put, ``error ERRNO MESSAGE`` for the failure, then lifts the limit and prints
``healed`` if the same store takes a write again, or ``refused`` and then
``reopened`` if it has to be reopened first.
"""

from __future__ import annotations

import os
import resource
import signal
import sys

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hephaestus as hx
from storage._fs_samples import make_instance


def say(line: str) -> None:
    os.write(1, (line.replace("\n", " ") + "\n").encode())


def largest(path: str) -> int:
    """The size of the database or its WAL, whichever is larger."""
    return max(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


async def main(path: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    pad = {"pad": "x" * 8_000}
    async with hx.SQLiteStorage(path) as store:
        for n in range(20):
            await store.put(make_instance(f"orderid::f{n}", metadata=pad))
            say(f"ack orderid::f{n} 1")
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (largest(path) + 100_000, hard))
        for n in range(10_000):
            iid = f"orderid::f{n % 20}"
            try:
                await store.put(make_instance(iid, revision=2 + n, metadata=pad))
            except OSError as exc:
                say(f"error {exc.errno} {exc}")
                break
            say(f"ack {iid} {2 + n}")
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        try:
            await store.put(make_instance("orderid::after", metadata=pad))
        except OSError as exc:
            say(f"refused {exc}")
        else:
            say("healed")
            return
    async with hx.SQLiteStorage(path) as store:
        await store.put(make_instance("orderid::after", metadata=pad))
        say("reopened")


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
