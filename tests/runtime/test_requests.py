"""Requests that race with storage failures and with the engine closing."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx

from .helpers import Recorder, clock, event_workflow, fan_expected, fan_workflow
from .test_crash_isolation import InjectedFaultError, break_put


async def test_start_whose_put_fails_raises_and_holds_nothing(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = fan_workflow()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        break_put(monkeypatch, storage, "fan::a", 1)
        with pytest.raises(InjectedFaultError):
            await engine.start(wf, "a", {"n": 1})
        assert await storage.get("fan::a") is None
        with pytest.raises(hx.InstanceNotFound):
            await engine.get("fan::a")
        iid = await engine.start(wf, "a", {"n": 1})
        assert (await engine.wait(iid)).status is hx.Status.COMPLETED


async def test_unacknowledged_resume_gets_the_error_and_can_be_sent_again(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = event_workflow()
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder
    ) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        break_put(monkeypatch, storage, iid, 1)
        with pytest.raises(InjectedFaultError):
            await engine.resume(iid, "go", {"by": "first try"})
        await trio.testing.wait_all_tasks_blocked()
        after_crash = await engine.get(iid)
        assert after_crash.status is hx.Status.WAITING  # the event was not taken
        await engine.resume(iid, "go", {"by": "second try"})
        final = await engine.wait(iid)
    assert final.results["approve"] == {"by": "second try"}
    # A storage fault fails the request that caused it; the runner is not crashed.
    assert recorder.count("runner.crash", iid) == 0
    assert recorder.count("storage.error", iid) == 1


async def test_requests_queued_behind_a_crash_are_served_by_the_restarted_runner(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    two = hx.WaitForEvent("go", key="two")
    one = hx.WaitForEvent("go", key="one")
    wf = hx.Workflow(
        "q", start=one, transitions={(one, "go"): two, (two, "go"): hx.Done}, unique=hx.Unique("q")
    )
    storage = hx.MemoryStorage()
    outcomes: dict[str, object] = {}
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        break_put(monkeypatch, storage, iid, 1)

        async def send(name: str, payload: dict[str, Any]) -> None:
            try:
                await engine.resume(iid, "go", payload)
            except Exception as exc:
                outcomes[name] = type(exc).__name__
            else:
                outcomes[name] = "ok"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, "first", {"n": 1})
            await trio.testing.wait_all_tasks_blocked(cushion=0)
            nursery.start_soon(send, "second", {"n": 2})
        assert outcomes["first"] == "InjectedFaultError"
        assert outcomes["second"] == "ok"
        assert (await engine.get(iid)).results == {"one": {"n": 2}}
        await engine.resume(iid, "go", {"n": 3})
        final = await engine.wait(iid)
    assert final.results == {"one": {"n": 2}, "two": {"n": 3}}


async def test_requests_pending_when_the_engine_closes_get_engine_closed(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = event_workflow()
    storage = hx.MemoryStorage()
    real_put = storage.put
    slow = {"on": False}

    async def put(instance: hx.Instance, *, expected_revision: int | None = None) -> None:
        if slow["on"]:
            await trio.sleep(100)  # a storage that hangs
        await real_put(instance, expected_revision=expected_revision)

    monkeypatch.setattr(storage, "put", put)
    outcomes: list[str] = []
    with trio.fail_after(1000):
        async with (
            trio.open_nursery() as outside,
            hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine,
        ):
            iid = await engine.start(wf, "a")
            await trio.testing.wait_all_tasks_blocked()
            slow["on"] = True

            async def request(name: str) -> None:
                try:
                    if name == "cancel":
                        await engine.cancel(iid)
                    else:
                        await engine.resume(iid, "go", {"by": name})
                except hx.EngineClosed:
                    outcomes.append(f"{name}: closed")

            for name in ("first", "second", "cancel"):
                outside.start_soon(request, name)
            await trio.sleep(10)  # the first is stuck in put; the others are queued
    assert sorted(outcomes) == ["cancel: closed", "first: closed", "second: closed"]
    async with storage:
        stored = await storage.get(iid)
    assert stored is not None
    assert stored.status is hx.Status.WAITING  # nothing was acknowledged, nothing applied


async def test_start_cancelled_after_its_write_still_runs_the_instance(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database-like storage: the write lands, then the acknowledgement takes a while.
    # A caller cancelled while waiting for it must not leave a stored instance that
    # nobody runs and whose id stays blocked.
    wf = fan_workflow(delay=1.0)
    storage = hx.MemoryStorage()
    real_put = storage.put

    async def put(instance: hx.Instance, *, expected_revision: int | None = None) -> None:
        await real_put(instance, expected_revision=expected_revision)
        await trio.sleep(1)  # waiting for the acknowledgement

    monkeypatch.setattr(storage, "put", put)
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        with trio.move_on_after(0.5):
            await engine.start(wf, "a", {"n": 3})
        stored = await storage.get("fan::a")
        assert stored is not None  # it was written: this engine must run it to the end
        final = await engine.wait("fan::a")
        assert final.status is hx.Status.COMPLETED
        assert final.results == fan_expected(3)
        again = await engine.start(wf, "a", {"n": 4})  # and the id is free again
        assert (await engine.wait(again)).results == fan_expected(4)
