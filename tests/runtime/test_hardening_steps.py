"""Bad step output and BaseException from steps are step failures, never runner crashes."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import hephaestus as hx

from .helpers import Recorder, clock


def _one_step(name: str, body: Any, *, events: tuple[str, ...] = ("ok", "timeout")) -> hx.Workflow:
    only = hx.step(body, events=events, key="only")
    return hx.Workflow(
        name,
        start=only,
        transitions={(only, e): hx.Done for e in events},
        unique=hx.Unique(name),
    )


@pytest.mark.parametrize("bad", ["5", float("nan"), float("inf"), -1.0])
async def test_a_bad_suspend_timeout_fails_the_instance_and_reopening_is_quiet(
    autojump_clock: Any, bad: object
) -> None:
    async def only(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Suspend(timeout=bad)  # type: ignore[arg-type]

    wf = _one_step("held", only)
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder
    ) as engine:
        iid = await engine.start(wf, "a")
        with trio.fail_after(3600):  # a NaN deadline used to never fire
            final = await engine.wait(iid)
    assert final.status is hx.Status.FAILED
    assert final.error is not None
    assert final.error.step == "only"
    assert final.error.type == "InvalidResult"
    assert "step 'only'" in final.error.message
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder
    ) as engine:
        assert (await engine.wait(iid)).status is hx.Status.FAILED
    assert recorder.count("runner.crash") == 0


async def test_a_bad_suspend_timeout_is_retried_like_any_failure(autojump_clock: Any) -> None:
    async def only(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Suspend(timeout="5") if ctx.attempt == 1 else "ok"  # type: ignore[arg-type]

    body = hx.step(only, events=("ok",), key="only", retry=hx.Retry(initial=1.0))
    wf = hx.Workflow("held", start=body, transitions={(body, "ok"): hx.Done}, unique=hx.Unique("h"))
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        final = await engine.wait(await engine.start(wf, "a"))
    assert final.status is hx.Status.COMPLETED
    assert [(h.attempt, h.error) for h in final.history] == [(1, "InvalidResult"), (2, None)]


SHARED: dict[str, Any] = {}


async def test_results_a_step_returns_are_copied_at_return(autojump_clock: Any) -> None:
    @hx.step(events=("ok",))
    async def first(ctx: hx.StepContext) -> hx.StepResult:
        SHARED.clear()
        SHARED["items"] = [1]
        return hx.Emit("ok", SHARED, {"m": SHARED["items"]})

    @hx.step(events=("go",))
    async def second(ctx: hx.StepContext) -> hx.StepResult:
        SHARED["items"].append(2)  # the first step's dict, mutated after it returned
        SHARED["late"] = True
        return hx.Suspend()

    wf = hx.Workflow(
        "copy",
        start=first,
        transitions={(first, "ok"): second, (second, "go"): hx.Done},
        unique=hx.Unique("copy"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.sleep(1)
        got = await engine.get(iid)
        assert got.waiting == {"second": ("go",)}
        assert got.results["first"] == {"items": [1]}
        assert got.metadata == {"m": [1]}


class Boom(BaseException):
    pass


async def test_a_base_exception_from_a_step_is_a_step_failure(autojump_clock: Any) -> None:
    async def explode(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(1)
        raise Boom("not an Exception")

    def explode_in_thread(ctx: hx.StepContext) -> hx.StepResult:
        raise Boom("from a thread")

    async def fine(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(5)
        return "ok"

    bad = _one_step("bad", explode)
    threaded = _one_step("threaded", explode_in_thread)
    good = _one_step("good", fine)
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[bad, threaded, good], clock=clock(), telemetry=recorder
    ) as engine:
        ok = await engine.start(good, "a")
        failed = [await engine.start(bad, "a"), await engine.start(threaded, "a")]
        for iid in failed:
            final = await engine.wait(iid)
            assert final.status is hx.Status.FAILED
            assert final.error is not None
            assert (final.error.step, final.error.type) == ("only", "Boom")
        assert (await engine.wait(ok)).status is hx.Status.COMPLETED
    assert recorder.count("runner.crash") == 0


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
async def test_interpreter_exits_stop_the_engine_but_reopening_recovers(
    autojump_clock: Any, stop: type[BaseException]
) -> None:
    raised: list[int] = []

    async def only(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(1)
        if not raised:
            raised.append(ctx.attempt)
            raise stop()
        return hx.Emit("ok", {"attempt": ctx.attempt})

    wf = _one_step("stopper", only)
    storage = hx.MemoryStorage()
    iid = "stopper::a"

    async def run_until_stopped() -> None:
        async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
            assert await engine.start(wf, "a") == iid
            await engine.wait(iid)

    with pytest.raises(BaseException) as info:  # noqa: PT011 - the exact type is checked below
        await run_until_stopped()
    caught = info.value
    if isinstance(caught, BaseExceptionGroup):
        assert caught.subgroup(stop) is not None
    else:
        assert isinstance(caught, stop)
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.results["only"] == {"attempt": 2}
