"""Child process for the FileStorage crash tests: ``python _storage_child.py MODE STORE [SEED]``.

Modes:

- ``storm``: open the store, print ``ready``, then write snapshots of 30
  instances from 10 concurrent tasks forever (compare-and-set on the revision,
  payloads from 100 bytes to 40 KB), printing ``ack <id> <revision>`` after
  each put returns. The parent SIGKILLs it.
- ``hold``: open the store, print ``locked``, and wait to be killed.
- ``efbig``: limit this process's file size (RLIMIT_FSIZE) to 8 KiB, store a
  small snapshot, then try a 64 KB one; print ``efbig <errno>`` or ``no-error``.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import sys

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hephaestus import FileStorage
from storage._fs_samples import make_instance

IDS = [f"orderid::storm-{n:02}" for n in range(30)]


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


async def storm(path: str, seed: int) -> None:
    rng = random.Random(seed)
    async with FileStorage(path) as store:
        revisions = {}
        for iid in IDS:
            got = await store.get(iid)
            revisions[iid] = 0 if got is None else got.revision
        say("ready")

        async def writer(ids: list[str]) -> None:
            while True:
                iid = rng.choice(ids)
                revision = revisions[iid] + 1
                pad = "x" * rng.choice((100, 1000, 5000, 40_000))
                instance = make_instance(iid, revision=revision, metadata={"pad": pad})
                await store.put(instance, expected_revision=revisions[iid])
                revisions[iid] = revision
                say(f"ack {iid} {revision}")

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(writer, IDS[n::10])


async def hold(path: str) -> None:
    async with FileStorage(path):
        say("locked")
        await trio.sleep_forever()


async def efbig(path: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
    async with FileStorage(path) as store:
        await store.put(make_instance(revision=1))
        try:
            await store.put(make_instance(revision=2, metadata={"pad": "x" * 65536}))
        except OSError as exc:
            say(f"efbig {exc.errno}")
        else:
            say("no-error")


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "storm":
        trio.run(storm, path, int(sys.argv[3]))
    elif mode == "hold":
        trio.run(hold, path)
    elif mode == "efbig":
        trio.run(efbig, path)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
