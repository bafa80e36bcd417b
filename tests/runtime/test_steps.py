"""Running step code: threads for plain functions, result validation, long steps, timeouts."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio

import hephaestus as hx

from .helpers import Recorder, clock, single_step_workflow


async def test_sync_step_runs_in_a_worker_thread(autojump_clock: Any) -> None:
    threads: list[threading.Thread] = []

    @hx.step(events=("ok",))
    def first(ctx: hx.StepContext) -> hx.StepResult:
        threads.append(threading.current_thread())
        return hx.Emit("ok", {"double": ctx.initial["n"] * 2}, metadata={"by": "thread"})

    @hx.step(events=("ok",))
    def second(ctx: hx.StepContext) -> hx.StepResult:
        threads.append(threading.current_thread())
        return hx.Emit("ok", {"plus": ctx.results["first"]["double"] + 1})

    wf = hx.Workflow(
        "sync",
        start=first,
        transitions={(first, "ok"): second, (second, "ok"): hx.Done},
        unique=hx.Unique("sync"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        final = await engine.wait(await engine.start(wf, "a", {"n": 20}))
    assert final.status is hx.Status.COMPLETED
    assert final.results == {"first": {"double": 40}, "second": {"plus": 41}}
    assert final.metadata == {"by": "thread"}
    assert len(threads) == 2
    assert all(t is not threading.main_thread() for t in threads)


async def test_sync_step_blocking_does_not_stall_other_instances(autojump_clock: Any) -> None:
    release = threading.Event()
    order: list[str] = []

    def blocker(ctx: hx.StepContext) -> hx.StepResult:
        release.wait(10)
        order.append("blocker")
        return "ok"

    async def quick(ctx: hx.StepContext) -> hx.StepResult:
        order.append("quick")
        release.set()
        return "ok"

    slow_wf = single_step_workflow(blocker, name="slow", key="slow")
    quick_wf = single_step_workflow(quick, name="quick", key="quick")
    async with hx.open_engine(workflows=[slow_wf, quick_wf], clock=clock()) as engine:
        slow = await engine.start(slow_wf, "a")
        fast = await engine.start(quick_wf, "a")
        assert (await engine.wait(fast)).status is hx.Status.COMPLETED
        assert (await engine.wait(slow)).status is hx.Status.COMPLETED
    assert order == ["quick", "blocker"]


@pytest.mark.parametrize("is_async", [True, False])
async def test_undeclared_event_fails_the_instance(autojump_clock: Any, is_async: bool) -> None:
    def body(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("surprise", {"x": 1})

    async def abody(ctx: hx.StepContext) -> hx.StepResult:
        return "surprise"

    wf = single_step_workflow(abody if is_async else body)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        final = await engine.wait(await engine.start(wf, "a"))
    assert final.status is hx.Status.FAILED
    assert final.error is not None
    assert final.error.type == "UndeclaredEvent"
    assert final.error.step == "work"
    assert "surprise" in final.error.message
    assert "'ok'" in final.error.message
    assert final.results == {}
    assert final.completed == ()


@pytest.mark.parametrize(
    ("emit", "what"),
    [
        (hx.Emit("ok", {"x": object()}), "results"),
        (hx.Emit("ok", {1: "int key"}), "results"),  # type: ignore[dict-item]
        (hx.Emit("ok", ["a list"]), "results"),  # type: ignore[arg-type]
        (hx.Emit("ok", {"x": 1}, metadata={"m": object()}), "metadata"),
        (hx.Emit("ok", None, metadata={2: "x"}), "metadata"),  # type: ignore[dict-item]
    ],
)
async def test_non_serialisable_emit_fails_attempt_naming_step(
    autojump_clock: Any, emit: hx.Emit, what: str
) -> None:
    async def body(ctx: hx.StepContext) -> hx.StepResult:
        return emit

    wf = single_step_workflow(body, retry=hx.Retry(max_attempts=2, initial=1.0))
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        final = await engine.wait(await engine.start(wf, "a"))
    assert final.status is hx.Status.FAILED
    assert final.error is not None
    assert final.error.type == "InvalidResult"
    assert final.error.step == "work"
    assert final.error.attempts == 2
    assert "'work'" in final.error.message
    assert what in final.error.message
    assert final.results == {}
    assert final.metadata == {}
    assert [h.error for h in final.history] == ["InvalidResult", "InvalidResult"]


@pytest.mark.parametrize("returned", [None, 42, {"event": "ok"}, hx.Done])
async def test_step_returning_nonsense_fails(autojump_clock: Any, returned: Any) -> None:
    async def body(ctx: hx.StepContext) -> Any:
        return returned

    wf = single_step_workflow(body)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        final = await engine.wait(await engine.start(wf, "a"))
    assert final.status is hx.Status.FAILED
    assert final.error is not None
    assert final.error.type == "InvalidResult"
    assert "'work'" in final.error.message


async def test_step_longer_than_five_seconds_completes_once(autojump_clock: Any) -> None:
    calls: list[int] = []

    async def slow(ctx: hx.StepContext) -> hx.StepResult:
        calls.append(ctx.attempt)
        await trio.sleep(60)
        return hx.Emit("ok", {"slept": 60})

    recorder = Recorder()
    wf = single_step_workflow(slow)
    async with hx.open_engine(workflows=[wf], clock=clock(), telemetry=recorder) as engine:
        t0 = trio.current_time()
        final = await engine.wait(await engine.start(wf, "a"))
        assert trio.current_time() - t0 == pytest.approx(60)
    assert final.status is hx.Status.COMPLETED
    assert final.results == {"work": {"slept": 60}}
    assert calls == [1]
    assert len(final.history) == 1
    assert final.history[0].attempt == 1
    assert recorder.count("runner.crash") == 0
    assert recorder.count("step.start") == 1


async def test_step_timeout_fails_attempt_with_step_timeout(autojump_clock: Any) -> None:
    observed: list[str] = []

    async def slow(ctx: hx.StepContext) -> hx.StepResult:
        try:
            await trio.sleep(60)
        except trio.Cancelled:
            observed.append("cancelled")
            raise
        return "ok"  # pragma: no cover

    wf = single_step_workflow(slow, timeout=5)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        t0 = trio.current_time()
        final = await engine.wait(await engine.start(wf, "a"))
        assert trio.current_time() - t0 == pytest.approx(5)
    assert final.status is hx.Status.FAILED
    assert final.error is not None
    assert final.error.type == "StepTimeout"
    assert observed == ["cancelled"]


async def test_step_exception_with_retry_then_success(autojump_clock: Any) -> None:
    attempts: list[int] = []

    async def flaky(ctx: hx.StepContext) -> hx.StepResult:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"try {ctx.attempt}")
        return hx.Emit("ok", {"attempt": ctx.attempt})

    wf = single_step_workflow(flaky, retry=hx.Retry(max_attempts=3, initial=2.0))
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        t0 = trio.current_time()
        final = await engine.wait(await engine.start(wf, "a"))
        assert trio.current_time() - t0 == pytest.approx(2.0 + 4.0)
    assert final.status is hx.Status.COMPLETED
    assert attempts == [1, 2, 3]
    assert final.results == {"work": {"attempt": 3}}
    assert [(h.attempt, h.error) for h in final.history] == [
        (1, "ConnectionError"),
        (2, "ConnectionError"),
        (3, None),
    ]


async def test_step_context_is_what_the_api_promises(autojump_clock: Any) -> None:
    seen: list[hx.StepContext] = []

    @hx.step(events=("ok",))
    async def first(ctx: hx.StepContext) -> hx.StepResult:
        seen.append(ctx)
        return hx.Emit("ok", {"a": 1})

    @hx.step(events=("ok",))
    async def second(ctx: hx.StepContext) -> hx.StepResult:
        seen.append(ctx)
        return "ok"

    wf = hx.Workflow(
        "ctx",
        start=first,
        transitions={
            (first, "ok"): hx.Target(second, {"mode": "fast"}),
            (second, "ok"): hx.Done,
        },
        unique=hx.Unique("ctx"),
        version=3,
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a", {"k": "v"})
        await engine.wait(iid)
    one, two = seen
    assert (one.instance_id, one.workflow, one.version, one.step, one.attempt) == (
        iid,
        "ctx",
        3,
        "first",
        1,
    )
    assert dict(one.initial) == {"k": "v"}
    assert dict(one.results) == {}
    assert one.config is None
    assert two.step == "second"
    assert dict(two.config or {}) == {"mode": "fast"}
    assert {k: dict(v) for k, v in two.results.items()} == {"first": {"a": 1}}
