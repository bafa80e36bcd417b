"""A step's context shows the snapshot its attempt started from, however late it reads it.

The engine copies ``initial``, ``results``, ``metadata`` and ``config`` only
when a step first reads one of them; what it copies is the snapshot the
attempt started from, never a later one.
"""

from __future__ import annotations

from typing import Any

import trio

import hephaestus as hx

from .helpers import clock


async def test_a_late_read_sees_the_snapshot_the_attempt_started_from(
    autojump_clock: Any,
) -> None:
    seen: dict[str, Any] = {}

    @hx.step(events=("ok",))
    async def begin(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("ok", {"n": 1})

    @hx.step(events=("ok",))
    async def slow(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(10)  # quick ends and stores its results meanwhile
        seen["results"] = {k: dict(v) for k, v in ctx.results.items()}
        seen["initial"] = dict(ctx.initial)
        seen["metadata"] = dict(ctx.metadata)
        return "ok"

    @hx.step(events=("ok",))
    async def quick(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("ok", {"quick": True}, metadata={"by": "quick"})

    @hx.step(events=("ok",))
    async def join(ctx: hx.StepContext) -> hx.StepResult:
        seen["join"] = sorted(ctx.results)
        return "ok"

    wf = hx.Workflow(
        "late",
        start=begin,
        transitions={
            (begin, "ok"): [slow, quick],
            (slow, "ok"): join,
            (quick, "ok"): join,
            (join, "ok"): hx.Done,
        },
        unique=hx.Unique("late"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        instance_id = await engine.start(wf, "a", {"order": [1, 2]}, metadata={"m": 0})
        final = await engine.wait(instance_id)
    assert final.status is hx.Status.COMPLETED
    assert final.results["quick"] == {"quick": True}
    assert final.metadata == {"m": 0, "by": "quick"}
    # slow read after quick ended: it still sees what stood when its attempt began.
    assert seen["results"] == {"begin": {"n": 1}}
    assert seen["initial"] == {"order": [1, 2]}
    assert seen["metadata"] == {"m": 0}
    assert seen["join"] == ["begin", "quick", "slow"]


async def test_mutating_what_a_step_read_changes_nothing_stored(autojump_clock: Any) -> None:
    @hx.step(events=("ok",))
    async def meddle(ctx: hx.StepContext) -> hx.StepResult:
        ctx.initial["order"].append(3)  # a copy: the instance keeps [1, 2]
        ctx.results["first"]["n"].append(9)
        return "ok"

    @hx.step(events=("ok",))
    async def first(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("ok", {"n": [1]})

    wf = hx.Workflow(
        "meddle",
        start=first,
        transitions={(first, "ok"): meddle, (meddle, "ok"): hx.Done},
        unique=hx.Unique("med"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        final = await engine.wait(await engine.start(wf, "a", {"order": [1, 2]}))
    assert final.status is hx.Status.COMPLETED
    assert final.initial == {"order": [1, 2]}
    assert final.results["first"] == {"n": [1]}


def test_a_context_built_by_hand_reads_what_it_was_given() -> None:
    ctx = hx.StepContext(
        instance_id="x::1",
        workflow="x",
        version=1,
        initial={"a": 1},
        results={"s": {"r": 2}},
        config=None,
        attempt=1,
        step="t",
    )
    assert dict(ctx.initial) == {"a": 1}
    assert {k: dict(v) for k, v in ctx.results.items()} == {"s": {"r": 2}}
    assert dict(ctx.metadata) == {}
    assert ctx.config is None
