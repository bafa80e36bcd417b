"""Child of the engine-level kill -9 test: ``python _engine_child.py KIND STORE COUNT``.

Opens an engine on ``FileStorage(STORE)`` or ``SQLiteStorage(STORE)`` (KIND is
``files`` or ``sqlite``), recovering what earlier, killed children left,
prints ``ready``, then drives instances 0..COUNT-1 (start,
then resume; ``ack ...`` lines once each returns) from 20 tasks, waits for
them all, prints ``all done`` and waits to be killed.
"""

from __future__ import annotations

import os
import sys

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hephaestus as hx
from storage._kill9_workflow import KILL9, drive, instance_id


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


async def main(kind: str, path: str, count: int) -> None:
    storage = hx.SQLiteStorage(path) if kind == "sqlite" else hx.FileStorage(path)
    async with hx.open_engine(workflows=[KILL9], storage=storage) as engine:
        say("ready")
        limiter = trio.CapacityLimiter(20)

        async def one(n: int) -> None:
            async with limiter:
                await drive(engine, n, say)

        async with trio.open_nursery() as nursery:
            for n in range(count):
                nursery.start_soon(one, n)
        for n in range(count):
            await engine.wait(instance_id(n))
        say("all done")
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
