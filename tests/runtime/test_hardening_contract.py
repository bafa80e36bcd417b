"""API.md contract points through the engine: results entries, dedupe keys, ctx.metadata."""

from __future__ import annotations

from typing import Any

import pytest
import trio.testing

import hephaestus as hx

from .helpers import clock, event_workflow


async def test_a_join_after_an_exclusive_split_sees_which_branch_ran(autojump_clock: Any) -> None:
    @hx.step(events=("left", "right"))
    async def split(ctx: hx.StepContext) -> hx.StepResult:
        return str(ctx.initial["side"])

    @hx.step(events=("ok",))
    async def left(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    @hx.step(events=("ok",))
    async def right(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("ok")

    @hx.step(events=("ok",))
    async def join(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("ok", {"came_from": "left" if "left" in ctx.results else "right"})

    wf = hx.Workflow(
        "excl",
        start=split,
        transitions={
            (split, "left"): left,
            (split, "right"): right,
            (left, "ok"): join,
            (right, "ok"): join,
            (join, "ok"): hx.Done,
        },
        unique=hx.Unique("excl"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        for side in ("left", "right"):
            final = await engine.wait(await engine.start(wf, side, {"side": side}))
            assert final.results["join"] == {"came_from": side}
            assert final.results[side] == {}


async def test_a_webhook_retried_after_completion_gets_no_error(autojump_clock: Any) -> None:
    wf = event_workflow()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        await engine.resume(iid, "go", {"by": "alice"}, dedupe_key="hook-1")
        final = await engine.wait(iid)
        assert final.status is hx.Status.COMPLETED
        await engine.resume(iid, "go", {"by": "alice"}, dedupe_key="hook-1")  # the retry
        with pytest.raises(hx.EventRejected, match="completed"):
            await engine.resume(iid, "go", dedupe_key="hook-2")
        assert (await engine.get(iid)).revision == final.revision
    # An engine that does not run the workflow any more answers the same way.
    async with hx.open_engine(workflows=[], storage=storage, clock=clock()) as engine:
        await engine.resume(iid, "go", dedupe_key="hook-1")
        with pytest.raises(hx.EventRejected, match="completed"):
            await engine.resume(iid, "go", dedupe_key="hook-2")
        assert await engine.cancel_timer(iid, "t1") is False


async def test_steps_see_the_instance_metadata(autojump_clock: Any) -> None:
    seen: list[dict[str, Any]] = []

    @hx.step(events=("ok",))
    async def first(ctx: hx.StepContext) -> hx.StepResult:
        seen.append(dict(ctx.metadata))
        return hx.Emit("ok", None, {"stage": "first"})

    @hx.step(events=("ok",))
    async def second(ctx: hx.StepContext) -> hx.StepResult:
        seen.append(dict(ctx.metadata))
        with pytest.raises(TypeError):
            ctx.metadata["tenant"] = "other"  # type: ignore[index]
        return "ok"

    wf = hx.Workflow(
        "meta",
        start=first,
        transitions={(first, "ok"): second, (second, "ok"): hx.Done},
        unique=hx.Unique("meta"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        final = await engine.wait(await engine.start(wf, "a", metadata={"tenant": "t1"}))
    assert final.status is hx.Status.COMPLETED
    assert seen == [{"tenant": "t1"}, {"tenant": "t1", "stage": "first"}]
