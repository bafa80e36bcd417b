"""The engine's boundary: caller values are checked and copied in, snapshots copied out.

Every value a caller passes is type-checked and encoded the way it will be
stored before anything is acknowledged; a bad one raises an ``hx`` error and
changes nothing (same stored snapshot, same revision). Values passed in are
deep copies, and an Instance handed out is the caller's to mutate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx

from .helpers import clock, event_workflow, fan_workflow

Call = Callable[[hx.Engine, str], Awaitable[object]]

BAD_CALLS: dict[str, tuple[Call, type[Exception], str]] = {
    "resume dedupe_key int": (
        lambda e, i: e.resume(i, "go", dedupe_key=123),  # type: ignore[arg-type]
        hx.InvalidResult,
        "dedupe_key must be a str or None",
    ),
    "resume dedupe_key surrogate": (
        lambda e, i: e.resume(i, "go", dedupe_key="\ud800"),
        hx.InvalidResult,
        "dedupe_key holds a str that is not valid Unicode",
    ),
    "resume payload value surrogate": (
        lambda e, i: e.resume(i, "go", {"by": "x\ud800"}),
        hx.InvalidResult,
        "payload holds a str that is not valid Unicode",
    ),
    "resume payload key surrogate": (
        lambda e, i: e.resume(i, "go", {"by": {"\udc80": 1}}),
        hx.InvalidResult,
        "payload holds",
    ),
    "resume step surrogate": (
        lambda e, i: e.resume(i, "go", step="approve\ud800"),
        hx.InvalidResult,
        "step holds",
    ),
    "resume step int": (
        lambda e, i: e.resume(i, "go", step=3),  # type: ignore[arg-type]
        hx.InvalidResult,
        "step must be a str or None",
    ),
    "resume event surrogate": (
        lambda e, i: e.resume(i, "go\ud800"),
        hx.InvalidResult,
        "event holds",
    ),
    "resume event int": (
        lambda e, i: e.resume(i, 7),  # type: ignore[arg-type]
        hx.InvalidResult,
        "event must be a str",
    ),
    "resume id list": (
        lambda e, i: e.resume([i], "go"),  # type: ignore[arg-type]
        hx.InvalidResult,
        "instance_id must be a str",
    ),
    "cancel reason int": (
        lambda e, i: e.cancel(i, reason=123),  # type: ignore[arg-type]
        hx.InvalidResult,
        "reason must be a str or None",
    ),
    "cancel reason surrogate": (
        lambda e, i: e.cancel(i, reason="\ud800"),
        hx.InvalidResult,
        "reason holds",
    ),
    "schedule_resume step list": (
        lambda e, i: e.schedule_resume(i, ["approve"], 5),  # type: ignore[arg-type]
        hx.InvalidResult,
        "step must be a str",
    ),
    "schedule_resume step surrogate": (
        lambda e, i: e.schedule_resume(i, "\ud800", 5),
        hx.InvalidResult,
        "step holds",
    ),
    "cancel_timer id int": (
        lambda e, i: e.cancel_timer(i, 1),  # type: ignore[arg-type]
        hx.InvalidResult,
        "timer_id must be a str",
    ),
    "get id int": (
        lambda e, i: e.get(1),  # type: ignore[arg-type]
        hx.InvalidResult,
        "instance_id must be a str",
    ),
    "wait id surrogate": (
        lambda e, i: e.wait(i + "\ud800"),
        hx.InvalidResult,
        "instance_id holds",
    ),
    "start initial surrogate": (
        lambda e, i: e.start("ev", "other", {"note": "\ud800"}),
        hx.InvalidResult,
        "initial holds",
    ),
    "start initial nested key surrogate": (
        lambda e, i: e.start("ev", "other", {"a": [{"\ud800": 1}]}),
        hx.InvalidResult,
        "initial holds",
    ),
    "start metadata surrogate": (
        lambda e, i: e.start("ev", "other", metadata={"\ud800": "x"}),
        hx.InvalidResult,
        "metadata holds",
    ),
    "start business value surrogate": (
        lambda e, i: e.start("ev", "ab\ud800"),
        hx.InvalidBusinessKey,
        "business value",
    ),
    "start workflow list": (
        lambda e, i: e.start(["ev"], "other"),  # type: ignore[arg-type]
        hx.InvalidResult,
        "workflow",
    ),
    "start version str": (
        lambda e, i: e.start("ev", "other", version="1"),  # type: ignore[arg-type]
        hx.InvalidResult,
        "version must be an int",
    ),
    "list workflow int": (
        lambda e, i: e.list(workflow=3),  # type: ignore[arg-type]
        hx.InvalidResult,
        "workflow",
    ),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
async def test_bad_caller_value_is_refused_and_changes_nothing(
    autojump_clock: Any, name: str
) -> None:
    call, error, message = BAD_CALLS[name]
    wf = event_workflow()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        before = await storage.query()
        assert [i.status for i in before] == [hx.Status.WAITING]
        with pytest.raises(error, match=message):
            await call(engine, iid)
        assert await storage.query() == before  # same snapshots, same revisions
        assert await engine.get(iid) == before[0]
        # The engine still serves the instance: a good request goes through.
        await engine.resume(iid, "go", {"by": "ops"}, dedupe_key="k1")
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.revision == before[0].revision + 2  # the resume, then finish
    # Everything acknowledged decodes again: a new engine reads the store as it is.
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        assert await engine.get(iid) == final


async def test_step_result_with_a_lone_surrogate_fails_the_attempt_as_invalid_result(
    autojump_clock: Any,
) -> None:
    from .helpers import Recorder, single_step_workflow

    async def bad(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("ok", {"name": "\udcff"})

    wf = single_step_workflow(bad)
    recorder = Recorder()
    async with hx.open_engine(workflows=[wf], clock=clock(), telemetry=recorder) as engine:
        final = await engine.wait(await engine.start(wf, "a"))
    assert final.status is hx.Status.FAILED
    assert final.error is not None
    assert final.error.type == "InvalidResult"
    assert "not valid Unicode" in final.error.message
    assert recorder.count("runner.crash") == 0


# --- copies in --------------------------------------------------------------------------------


def echo_workflow() -> hx.Workflow:
    """show (records what it saw) -> approve (WaitForEvent "go") -> tell -> Done."""

    @hx.step(events=("ok",))
    async def show(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("ok", {"initial": dict(ctx.initial)})

    approve = hx.WaitForEvent("go", key="approve")

    @hx.step(events=("ok",))
    async def tell(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("ok", {"saw": dict(ctx.results["approve"])})

    return hx.Workflow(
        "echo",
        start=show,
        transitions={(show, "ok"): approve, (approve, "go"): tell, (tell, "ok"): hx.Done},
        unique=hx.Unique("echo"),
    )


async def test_initial_metadata_and_payload_are_copied_deeply_at_the_call(
    autojump_clock: Any,
) -> None:
    wf = echo_workflow()
    initial: dict[str, Any] = {"order": {"items": [1, 2]}}
    metadata: dict[str, Any] = {"tags": ["a"]}
    payload: dict[str, Any] = {"by": {"names": ["ops"]}}
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a", initial, metadata=metadata)
        initial["order"]["items"].append(3)  # changed before the step reads it
        metadata["tags"].append("b")
        await trio.testing.wait_all_tasks_blocked()
        await engine.resume(iid, "go", payload)
        payload["by"]["names"].append("intruder")
        final = await engine.wait(iid)
        assert await storage.get(iid) == final
    assert final.initial == {"order": {"items": [1, 2]}}
    assert final.metadata == {"tags": ["a"]}
    assert final.results["show"] == {"initial": {"order": {"items": [1, 2]}}}
    assert final.results["approve"] == {"by": {"names": ["ops"]}}
    assert final.results["tell"] == {"saw": {"by": {"names": ["ops"]}}}


# --- copies out -------------------------------------------------------------------------------


def mutate(instance: hx.Instance) -> None:
    """Change every dict and list a caller can reach in ``instance``."""
    instance.initial["order"]["items"].append("x")
    instance.initial["new"] = True
    instance.metadata["tags"].append("x")
    for results in instance.results.values():
        results["mutated"] = True
    instance.results["ghost"] = {"v": 1}
    instance.waiting.clear()
    instance.attempts.clear()
    instance.fired.clear()
    for queued in instance.inbox:
        if queued.payload is not None:
            queued.payload["mutated"] = True


async def test_mutating_instances_from_get_wait_and_list_reaches_nothing(
    autojump_clock: Any,
) -> None:
    wf = echo_workflow()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a", {"order": {"items": [1, 2]}}, metadata={"tags": ["a"]})
        await trio.testing.wait_all_tasks_blocked()
        stored = await storage.get(iid)
        assert stored is not None
        for handed_out in [await engine.get(iid), *(await engine.list())]:
            mutate(handed_out)
        assert await storage.get(iid) == stored
        assert await engine.get(iid) == stored
        async with trio.open_nursery() as nursery:
            finals: list[hx.Instance] = []

            async def waiter() -> None:
                final = await engine.wait(iid)
                finals.append(final)
                mutate(final)

            for _ in range(3):
                nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            await engine.resume(iid, "go", {"by": "ops"})
        after = await engine.wait(iid)
        assert await storage.get(iid) == after
    assert after.initial == {"order": {"items": [1, 2]}}
    assert after.metadata == {"tags": ["a"]}
    assert after.results == {
        "show": {"initial": {"order": {"items": [1, 2]}}},
        "approve": {"by": "ops"},
        "tell": {"saw": {"by": "ops"}},
    }
    assert len({id(f) for f in finals}) == 3  # each waiter got its own


async def test_mutating_a_resident_instance_does_not_reach_the_next_step(
    autojump_clock: Any,
) -> None:
    wf = fan_workflow(delay=1.0)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a", {"n": 5})
        await trio.sleep(1.5)  # split done, left and right running
        seen = await engine.get(iid)
        assert seen.results == {"split": {"n": 5}}
        seen.results["split"]["n"] = 1000
        seen.initial["n"] = 1000
        final = await engine.wait(iid)
    assert final.initial == {"n": 5}
    assert final.results["join"] == {"sum": 16}
