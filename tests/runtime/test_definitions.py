"""Changed definitions (DESIGN.md "Definitions"): instances that do not fit are left alone."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx

from .helpers import Recorder, clock


def held(work_key: str, *, version: int = 1) -> hx.Workflow:
    """prepare -> <work_key> (10 s) -> approve (WaitForEvent "go") -> Done."""

    @hx.step(events=("ok",))
    async def prepare(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    async def work(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(10)
        return "ok"

    labour = hx.step(work, events=("ok",), key=work_key)
    approve = hx.WaitForEvent("go", key="approve")
    return hx.Workflow(
        "held",
        start=prepare,
        transitions={(prepare, "ok"): labour, (labour, "ok"): approve, (approve, "go"): hx.Done},
        unique=hx.Unique("held"),
        version=version,
    )


async def _stored_mid_step(storage: hx.MemoryStorage) -> list[str]:
    """Two instances of held v1: one running "work", one suspended in "approve"."""
    old = held("work")
    async with hx.open_engine(workflows=[old], storage=storage, clock=clock()) as engine:
        running = await engine.start(old, "running")
        await trio.sleep(20)
        waiting = await engine.get(await engine.start(old, "waiting"))
        await trio.sleep(5)  # "running" waits in approve now; "waiting" is in work
        assert (await engine.get(running)).waiting == {"approve": ("go",)}
        assert (await engine.get(waiting.id)).active == ("work",)
    return [running, waiting.id]


async def test_a_renamed_step_leaves_instances_untouched_and_reported(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    storage = hx.MemoryStorage()
    ids = await _stored_mid_step(storage)
    async with storage:
        before = {iid: await storage.get(iid) for iid in ids}
    recorder = Recorder()
    renamed = held("labour")  # same name and version, step "work" renamed
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    async with hx.open_engine(
        workflows=[renamed], storage=storage, clock=clock(), telemetry=recorder
    ) as engine:
        await trio.sleep(60)
        for iid in ids:
            with pytest.raises(hx.DefinitionChanged) as info:
                await engine.resume(iid, "go")
            message = str(info.value)
            assert "step 'work'" in message
            assert "Register the old definition under its version (1)" in message
            assert "new one under a new version (version=2)" in message
            with pytest.raises(hx.DefinitionChanged):
                await engine.cancel(iid)
            with pytest.raises(hx.DefinitionChanged):
                await engine.schedule_resume(iid, "approve", 1.0)
            with pytest.raises(hx.DefinitionChanged), trio.fail_after(3600):
                await engine.wait(iid)
            assert isinstance(info.value, hx.EventRejected)
    assert recorder.count("runner.crash") == 0
    skips = recorder.named("runner.skip")
    assert sorted(e.instance_id for e in skips if e.instance_id) == sorted(ids)
    assert all(e.metadata["reason"] == "definition changed" for e in skips)
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == len(ids)  # one line per instance
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records)
    async with storage:
        assert {iid: await storage.get(iid) for iid in ids} == before  # untouched

    # Registered as the message says, both finish on the old definition.
    async with hx.open_engine(
        workflows=[held("work"), held("labour", version=2)], storage=storage, clock=clock()
    ) as engine:
        await trio.sleep(60)
        for iid in ids:
            await engine.resume(iid, "go")
            assert (await engine.wait(iid)).status is hx.Status.COMPLETED


async def test_a_fitting_change_runs_on(autojump_clock: Any) -> None:
    """An edit that names nothing the stored state lacks (a new event) is no problem."""
    storage = hx.MemoryStorage()
    ids = await _stored_mid_step(storage)

    @hx.step(events=("ok",))
    async def prepare(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    @hx.step(events=("ok", "skip"))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    approve = hx.WaitForEvent("go", key="approve")
    wider = hx.Workflow(
        "held",
        start=prepare,
        transitions={
            (prepare, "ok"): work,
            (work, "ok"): approve,
            (work, "skip"): hx.Done,
            (approve, "go"): hx.Done,
        },
        unique=hx.Unique("held"),
    )
    async with hx.open_engine(workflows=[wider], storage=storage, clock=clock()) as engine:
        await trio.testing.wait_all_tasks_blocked()
        for iid in ids:
            await engine.resume(iid, "go")
            final = await engine.wait(iid)
            assert final.status is hx.Status.COMPLETED
            assert final.graph == wider.fingerprint
