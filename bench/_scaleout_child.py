"""One engine process of a scale-out run: ``python -m bench._scaleout_child DSN NAME TTL``.

Opens an engine on ``PostgresStorage(DSN, lease_ttl=TTL)`` with the
``SCALE`` workflow, prints ``ready ENGINE_ID`` (its lease's engine id),
then obeys one command per stdin line and answers each on stdout:

- ``start N`` -> ``ok start N`` (also for ``AlreadyRunning``: a retried start);
- ``resume N`` -> ``ok resume N``, or ``err resume N Type`` (``resume`` with
  ``dedupe_key="go-N"``, so a resume retried on another engine is applied once);
- ``dump N`` -> ``ok dump N (STATE, REVISION)`` or ``ok dump N None``: what its
  registry holds of the instance (for a driver saying why a run is stuck).

Telemetry ``engine.takeover``, ``engine.claim`` and ``runner.drop`` are printed as ``tele NAME ID
TIME``. Every step body inserts a side-effect row (``hx_side_effects``: id,
step, attempt, engine, time) before it works, so a driver counts step runs,
including those of an engine that was killed before it stored the result.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any

import trio

import hephaestus as hx

SIDE_EFFECTS = (
    "CREATE TABLE IF NOT EXISTS hx_side_effects (instance_id text NOT NULL, step text NOT NULL, "
    "attempt integer NOT NULL, engine text NOT NULL, at double precision NOT NULL)"
)
STEP_SECONDS = 0.02
"""Each step body works this long (in a worker thread), so steps are in flight at a kill."""
NAP_SECONDS = 0.3
"""The durable timer of every instance."""

_local = threading.local()
_engine_name = "?"
_dsn = ""


def _record(ctx: hx.StepContext) -> None:
    """Insert this step run's side-effect row (blocking; a connection per worker thread)."""
    import psycopg

    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = psycopg.connect(_dsn, autocommit=True)
    conn.execute(
        "INSERT INTO hx_side_effects (instance_id, step, attempt, engine, at) "
        "VALUES (%s, %s, %s, %s, %s)",
        (ctx.instance_id, ctx.step, ctx.attempt, _engine_name, time.time()),
    )


@hx.step(events=("ok",))
def begin(ctx: hx.StepContext) -> hx.StepResult:
    _record(ctx)
    time.sleep(STEP_SECONDS)
    return hx.Emit("ok", {"by": _engine_name})


@hx.step(events=("ok",))
def finish(ctx: hx.StepContext) -> hx.StepResult:
    _record(ctx)
    time.sleep(STEP_SECONDS)
    return hx.Emit("ok", {"by": _engine_name})


WAIT_GO = hx.WaitForEvent("go", key="wait_go")
NAP = hx.Wait(NAP_SECONDS, key="nap")

SCALE = hx.Workflow(
    "scale",
    start=begin,
    transitions={
        (begin, "ok"): WAIT_GO,
        (WAIT_GO, "go"): NAP,
        (NAP, "timeout"): finish,
        (finish, "ok"): hx.Done,
    },
    unique=hx.Unique("sc"),
)


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def telemetry(event: hx.TelemetryEvent) -> None:
    if event.name in ("engine.takeover", "engine.claim", "runner.drop"):
        say(f"tele {event.name} {event.instance_id or '-'} {time.time():.6f}")


async def obey(engine: hx.Engine, line: str) -> None:
    verb, _, number = line.partition(" ")
    n = int(number)
    if verb == "dump":  # what this engine holds of the instance (a driver's diagnosis)
        entry = engine._registry.get(f"sc::{n}")
        held = None if entry is None else (entry.state.name, entry.instance.revision)
        say(f"ok dump {n} {held}")
        return
    try:
        if verb == "start":
            with contextlib.suppress(hx.AlreadyRunning):  # a start retried elsewhere
                await engine.start(SCALE, str(n))
        else:
            await engine.resume(f"sc::{n}", "go", {"n": n}, dedupe_key=f"go-{n}")
    except (hx.HephaestusError, OSError) as exc:  # OSError: a storage fault, worth a retry
        say(f"err {verb} {n} {type(exc).__name__}")
        return
    say(f"ok {verb} {n}")


async def main(dsn: str, name: str, ttl: float) -> None:
    global _engine_name, _dsn
    _engine_name, _dsn = name, dsn
    storage = hx.PostgresStorage(dsn, lease_ttl=ttl)
    options: dict[str, Any] = {"telemetry": [telemetry]}
    async with hx.open_engine(workflows=[SCALE], storage=storage, **options) as engine:
        shared = engine.shared
        say(f"ready {name if shared is None else shared.engine_id}")
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        async with trio.open_nursery() as nursery:
            while chunk := await stdin.receive_some():
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        nursery.start_soon(obey, engine, line.decode().strip())
        # stdin closed: the driver is done with us; leave without releasing anything odd
        say("bye")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]))
