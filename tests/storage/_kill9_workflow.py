"""The workflow and the driver shared by the engine-level kill -9 test and its child.

Each instance ``k::i<n>`` fans out from ``a`` to a ``WaitForEvent`` and to
``c``, and joins both in ``d``; its results depend only on ``n`` and the
resume payload, so a crash-free run's results are known in advance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.lowlevel

import hephaestus as hx


@hx.step(events=("ok",))
async def a(ctx: hx.StepContext) -> hx.StepResult:
    return hx.Emit("ok", {"x": 2 * ctx.initial["n"]})


@hx.step(events=("ok",))
async def c(ctx: hx.StepContext) -> hx.StepResult:
    await trio.lowlevel.checkpoint()
    return hx.Emit("ok", {"y": ctx.initial["n"] + 1})


wait = hx.WaitForEvent("go", key="wait")


@hx.step(events=("done",))
async def d(ctx: hx.StepContext) -> hx.StepResult:
    r = ctx.results
    return hx.Emit("done", {"total": r["a"]["x"] + r["c"]["y"] + r["wait"]["v"]})


KILL9 = hx.Workflow(
    "kill9",
    start=a,
    transitions={
        (a, "ok"): [wait, c],
        (wait, "go"): d,
        (c, "ok"): d,
        (d, "done"): hx.Done,
    },
    unique=hx.Unique("k"),
)


def instance_id(n: int) -> str:
    return f"k::i{n}"


def expected_results(n: int) -> dict[str, Any]:
    """The results a crash-free run gives instance ``n``."""
    return {"a": {"x": 2 * n}, "c": {"y": n + 1}, "wait": {"v": n}, "d": {"total": 4 * n + 1}}


async def drive(engine: hx.Engine, n: int, say: Callable[[str], None]) -> None:
    """Start instance ``n`` and send its event, unless that already happened; report acks."""
    iid = instance_id(n)
    try:
        instance = await engine.get(iid)
    except hx.InstanceNotFound:
        await engine.start(KILL9, f"i{n}", {"n": n})
        say(f"ack start {iid}")
        instance = await engine.get(iid)
    if f"go-{n}" in instance.dedupe_keys or instance.status.is_terminal:
        return
    try:
        await engine.resume(iid, "go", {"v": n}, dedupe_key=f"go-{n}")
    except hx.EventRejected:
        if not (await engine.get(iid)).status.is_terminal:
            raise
        return
    say(f"ack resume {iid}")
