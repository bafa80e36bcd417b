"""The write token: callers apply their own requests, and a runner never holds it over step code."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx
from hephaestus._runtime._registry import Token

from .helpers import Recorder, clock


def gated_then_event(gate: trio.Event, seen: list[str]) -> hx.Workflow:
    """work (an async step that waits for ``gate``) -> approval (waits for "go") -> Done."""

    @hx.step(events=("ok",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        seen.append("work begins")
        await gate.wait()
        seen.append("work returns")
        return hx.Emit("ok", {})

    approval = hx.WaitForEvent("go", key="approval")
    return hx.Workflow(
        "gated",
        start=work,
        transitions={(work, "ok"): approval, (approval, "go"): hx.Done},
        unique=hx.Unique("g"),
    )


async def test_a_request_is_written_by_the_callers_own_task(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = trio.Event()
    wf = gated_then_event(gate, [])
    storage = hx.MemoryStorage()
    real_put = storage.put
    writers: list[tuple[int, trio.lowlevel.Task]] = []

    async def put(instance: hx.Instance, *, expected_revision: int | None = None) -> None:
        writers.append((instance.revision, trio.lowlevel.current_task()))
        await real_put(instance, expected_revision=expected_revision)

    monkeypatch.setattr(storage, "put", put)
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert list((await engine.get(iid)).waiting) == ["approval"]
        before = len(writers)
        await engine.resume(iid, "go")
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert [task for _, task in writers[before:]] == [trio.lowlevel.current_task()]


async def test_a_resume_while_a_step_runs_is_acknowledged_before_the_step_returns(
    autojump_clock: Any,
) -> None:
    gate = trio.Event()
    seen: list[str] = []
    wf = gated_then_event(gate, seen)
    recorder = Recorder()
    async with hx.open_engine(workflows=[wf], clock=clock(), telemetry=recorder) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["work begins"]
        await engine.resume(iid, "go", {"by": "ann"})
        seen.append("resume acknowledged")
        queued = await engine.get(iid)
        assert [e.event for e in queued.inbox] == ["go"]  # persisted, in the inbox
        gate.set()
        final = await engine.wait(iid)
    assert seen == ["work begins", "resume acknowledged", "work returns"]
    assert final.status is hx.Status.COMPLETED
    assert final.results["approval"] == {"by": "ann"}


async def test_a_caller_cancelled_during_its_write_leaves_the_request_applied(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = trio.Event()
    wf = gated_then_event(gate, [])
    storage = hx.MemoryStorage()
    real_put = storage.put
    slow = {"on": False}

    async def put(instance: hx.Instance, *, expected_revision: int | None = None) -> None:
        if slow["on"]:
            await trio.sleep(5)
        await real_put(instance, expected_revision=expected_revision)

    monkeypatch.setattr(storage, "put", put)
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder
    ) as engine:
        iid = await engine.start(wf, "a")
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        slow["on"] = True
        with trio.move_on_after(1) as scope:
            await engine.resume(iid, "go")
        assert scope.cancelled_caught
        slow["on"] = False
        final = await engine.wait(iid)  # the write landed: the engine goes on from it
    assert final.status is hx.Status.COMPLETED
    assert recorder.named("storage.error") == []  # no write of ours taken for a replacement


async def test_token_waiters_wake_on_release_and_on_poke() -> None:
    token = Token()
    order: list[str] = []

    async def waiter(name: str) -> None:
        await token.acquire()
        order.append(name)
        token.release()

    async def poked() -> None:
        await token.changed()
        order.append("poked")

    assert token.try_acquire()
    assert not token.try_acquire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "w1")
        nursery.start_soon(poked)
        await trio.testing.wait_all_tasks_blocked()
        token.poke()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["poked"]  # the holder still holds it
        token.release()
    assert order == ["poked", "w1"]
    assert not token.held
