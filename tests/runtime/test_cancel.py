"""Cancelling an instance: step code sees trio.Cancelled, and nothing else runs for it."""

from __future__ import annotations

import threading
from typing import Any

import trio
import trio.testing

import hephaestus as hx

from .helpers import Recorder, clock


async def test_cancel_while_steps_are_mid_await(autojump_clock: Any) -> None:
    log: list[str] = []
    started = {"left": trio.Event(), "right": trio.Event()}

    @hx.step(events=("ok",))
    async def begin(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    def branch(key: str) -> hx.Step:
        async def body(ctx: hx.StepContext) -> hx.StepResult:
            started[key].set()
            try:
                await trio.sleep(1000)
                log.append(f"{key} woke up")
            except trio.Cancelled:
                log.append(f"{key} cancelled")
                raise
            finally:
                log.append(f"{key} finally")
            return "ok"

        return hx.step(body, events=("ok",), key=key)

    left, right = branch("left"), branch("right")

    @hx.step(events=("ok",))
    async def join(ctx: hx.StepContext) -> hx.StepResult:
        log.append("join ran")
        return "ok"

    wf = hx.Workflow(
        "cx",
        start=begin,
        transitions={
            (begin, "ok"): [left, right],
            (left, "ok"): join,
            (right, "ok"): join,
            (join, "ok"): hx.Done,
        },
        unique=hx.Unique("cx"),
    )
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder
    ) as engine:
        iid = await engine.start(wf, "a")
        await started["left"].wait()
        await started["right"].wait()
        await trio.sleep(10)
        await engine.cancel(iid, "user asked")
        stored = await storage.get(iid)  # persisted before cancel returned
        assert stored is not None
        assert stored.status is hx.Status.CANCELLED
        assert stored.cancel_reason == "user asked"
        assert stored.active == ()
        final = await engine.wait(iid)
        assert final.status is hx.Status.CANCELLED
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(log) == ["left cancelled", "left finally", "right cancelled", "right finally"]
        step_starts = recorder.count("step.start", iid)
        transitions = recorder.count("workflow.transition", iid)
        await trio.sleep(5000)  # long past the steps' sleep: nothing more happens
        assert recorder.count("step.start", iid) == step_starts
        assert recorder.count("workflow.transition", iid) == transitions
        assert await storage.get(iid) == stored
        assert iid not in engine._registry
    assert "join ran" not in log
    assert [h.step for h in final.history] == ["begin"]
    assert recorder.count("workflow.cancel", iid) == 1
    assert recorder.count("workflow.stop", iid) == 0


async def test_cancel_drops_timers(autojump_clock: Any) -> None:
    waiter = hx.Wait(60, key="pause")

    @hx.step(events=("ok",))
    async def after(ctx: hx.StepContext) -> hx.StepResult:
        raise AssertionError("must not run after cancel")  # pragma: no cover

    wf = hx.Workflow(
        "tm",
        start=waiter,
        transitions={(waiter, "timeout"): after, (after, "ok"): hx.Done},
        unique=hx.Unique("tm"),
    )
    recorder = Recorder()
    async with hx.open_engine(workflows=[wf], clock=clock(), telemetry=recorder) as engine:
        iid = await engine.start(wf, "a")
        await trio.sleep(10)
        assert len((await engine.get(iid)).timers) == 1
        await engine.cancel(iid)
        assert (await engine.get(iid)).timers == ()
        await trio.sleep(100)
        assert recorder.count("timer.fire", iid) == 0
        assert (await engine.wait(iid)).status is hx.Status.CANCELLED


async def test_cancel_during_thread_step_ignores_its_late_result(autojump_clock: Any) -> None:
    release = threading.Event()
    finished = threading.Event()
    entered = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def blocking(ctx: hx.StepContext) -> hx.StepResult:
        token.run_sync_soon(entered.set)
        release.wait(30)
        finished.set()
        return hx.Emit("ok", {"late": True})

    work = hx.step(blocking, events=("ok",), key="work")
    wf = hx.Workflow("th", start=work, transitions={(work, "ok"): hx.Done}, unique=hx.Unique("th"))
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await entered.wait()
        await engine.cancel(iid)
        release.set()
        await trio.to_thread.run_sync(finished.wait, 30)
        await trio.testing.wait_all_tasks_blocked()
        final = await engine.get(iid)
    assert final.status is hx.Status.CANCELLED
    assert final.results == {}


async def test_cancel_one_instance_leaves_others_running(autojump_clock: Any) -> None:
    @hx.step(events=("ok",))
    async def slow(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(100)
        return hx.Emit("ok", {"i": ctx.initial["i"]})

    wf = hx.Workflow(
        "many", start=slow, transitions={(slow, "ok"): hx.Done}, unique=hx.Unique("many")
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        ids = [await engine.start(wf, f"i{i}", {"i": i}) for i in range(10)]
        await trio.sleep(50)
        for iid in ids[::2]:
            await engine.cancel(iid)
        for i, iid in enumerate(ids):
            final = await engine.wait(iid)
            if i % 2:
                assert final.status is hx.Status.COMPLETED
                assert final.results == {"slow": {"i": i}}
            else:
                assert final.status is hx.Status.CANCELLED


async def test_step_cancelling_its_own_instance(autojump_clock: Any) -> None:
    engines: list[hx.Engine] = []
    log: list[str] = []

    @hx.step(events=("ok",))
    async def quit_early(ctx: hx.StepContext) -> hx.StepResult:
        try:
            await engines[0].cancel(ctx.instance_id, "changed my mind")
            log.append("returned")  # pragma: no cover - the cancel reaches this step too
        except trio.Cancelled:
            log.append("cancelled")
            raise
        return "ok"  # pragma: no cover

    wf = hx.Workflow(
        "selfc",
        start=quit_early,
        transitions={(quit_early, "ok"): hx.Done},
        unique=hx.Unique("selfc"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        engines.append(engine)
        with trio.fail_after(60):
            final = await engine.wait(await engine.start(wf, "a"))
    assert final.status is hx.Status.CANCELLED
    assert final.cancel_reason == "changed my mind"
    assert log == ["cancelled"]
