"""Step limiters: at most n attempts of the steps naming one run at once.

open_engine(limiters={name: n}) sets n; waiting for a token is no part of a
step's timeout, and a cancelled wait takes no token.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx

from .helpers import Recorder, clock


class Inside:
    """Counts the attempts inside limited step code, and the most there were at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.entered = 0
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.entered += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def limited_workflows(inside: Inside) -> tuple[hx.Workflow, hx.Workflow]:
    """A lone limited step (it runs inline) and a fan-out of three (each in a task of its own)."""

    @hx.step(events=("ok",), limiter="api")
    async def call(ctx: hx.StepContext) -> hx.StepResult:
        inside.enter()
        await trio.sleep(1.0)
        inside.leave()
        return "ok"

    lone = hx.Workflow(
        "lone", start=call, transitions={(call, "ok"): hx.Done}, unique=hx.Unique("lone")
    )

    @hx.step(events=("go",))
    async def split(ctx: hx.StepContext) -> hx.StepResult:
        return "go"

    branches = [hx.step(call.fn, events=("ok",), key=f"call_{i}", limiter="api") for i in range(3)]
    transitions: dict[Any, Any] = {(split, "go"): branches}
    transitions.update({(b, "ok"): hx.Done for b in branches})
    fan = hx.Workflow("fan", start=split, transitions=transitions, unique=hx.Unique("fan"))
    return lone, fan


async def test_never_more_than_n_attempts_inside_the_limited_steps(autojump_clock: Any) -> None:
    inside = Inside()
    lone, fan = limited_workflows(inside)
    async with hx.open_engine(workflows=[lone, fan], clock=clock(), limiters={"api": 2}) as engine:
        ids = [await engine.start(lone, f"l{i}") for i in range(6)]
        ids += [await engine.start(fan, f"f{i}") for i in range(4)]
        finals = [await engine.wait(iid) for iid in ids]
    assert [f.status for f in finals] == [hx.Status.COMPLETED] * 10
    assert inside.entered == 6 + 4 * 3
    assert inside.peak == 2
    assert inside.now == 0


async def test_two_limiters_count_apart_and_unlimited_steps_never_wait(
    autojump_clock: Any,
) -> None:
    inside = {"a": Inside(), "b": Inside(), "free": Inside()}

    def counting(name: str) -> Any:
        async def body(ctx: hx.StepContext) -> hx.StepResult:
            inside[name].enter()
            await trio.sleep(1.0)
            inside[name].leave()
            return "ok"

        return body

    @hx.step(events=("go",))
    async def split(ctx: hx.StepContext) -> hx.StepResult:
        return "go"

    steps = [
        hx.step(counting("a"), events=("ok",), key="a", limiter="a"),
        hx.step(counting("b"), events=("ok",), key="b", limiter="b"),
        hx.step(counting("free"), events=("ok",), key="free"),
    ]
    transitions: dict[Any, Any] = {(split, "go"): steps}
    transitions.update({(s, "ok"): hx.Done for s in steps})
    wf = hx.Workflow("two", start=split, transitions=transitions, unique=hx.Unique("two"))
    async with hx.open_engine(workflows=[wf], clock=clock(), limiters={"a": 1, "b": 3}) as engine:
        start = trio.current_time()
        ids = [await engine.start(wf, f"v{i}") for i in range(6)]
        for iid in ids:
            await engine.wait(iid)
        elapsed = trio.current_time() - start
    assert (inside["a"].peak, inside["b"].peak, inside["free"].peak) == (1, 3, 6)
    assert elapsed == pytest.approx(6.0)  # six one-second attempts of "a", one after another


async def test_waiting_for_the_limiter_is_not_part_of_the_timeout(autojump_clock: Any) -> None:
    @hx.step(events=("ok",), limiter="one", timeout=10.0)
    async def slow(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(8.0)
        return "ok"

    wf = hx.Workflow("slow", start=slow, transitions={(slow, "ok"): hx.Done}, unique=hx.Unique("s"))
    engine_clock = clock()
    async with hx.open_engine(workflows=[wf], clock=engine_clock, limiters={"one": 1}) as engine:
        began = engine_clock.now()
        first, second = await engine.start(wf, "a"), await engine.start(wf, "b")
        finals = [await engine.wait(first), await engine.wait(second)]
    assert [f.status for f in finals] == [hx.Status.COMPLETED] * 2
    # The second waited 8 s for the token, then ran 8 s within its 10 s timeout.
    assert [f.history[-1].at - began for f in finals] == [8.0, 16.0]


async def test_thread_steps_are_limited_too(autojump_clock: Any) -> None:
    inside = Inside()
    release = threading.Event()
    two_in = trio.Event()

    def arrived() -> None:
        if inside.entered == 2:
            two_in.set()

    @hx.step(events=("ok",), limiter="api")
    def blocking(ctx: hx.StepContext) -> hx.StepResult:
        inside.enter()
        trio.from_thread.run_sync(arrived)
        release.wait(timeout=30)
        inside.leave()
        return "ok"

    wf = hx.Workflow(
        "sync", start=blocking, transitions={(blocking, "ok"): hx.Done}, unique=hx.Unique("y")
    )
    async with hx.open_engine(workflows=[wf], clock=clock(), limiters={"api": 2}) as engine:
        ids = [await engine.start(wf, f"v{i}") for i in range(5)]
        await two_in.wait()
        await trio.testing.wait_all_tasks_blocked()
        stats = engine.limiters.get("api").statistics()
        assert (stats.borrowed_tokens, stats.tasks_waiting) == (2, 3)
        assert inside.entered == 2
        release.set()
        finals = [await engine.wait(iid) for iid in ids]
    assert [f.status for f in finals] == [hx.Status.COMPLETED] * 5
    assert (inside.entered, inside.peak) == (5, 2)


async def test_an_abandoned_thread_keeps_its_token_until_it_ends(autojump_clock: Any) -> None:
    release = threading.Event()
    ended = threading.Event()
    ran: list[str] = []
    in_thread = trio.Event()

    @hx.step(events=("ok",), limiter="api")
    def blocking(ctx: hx.StepContext) -> hx.StepResult:
        ran.append(ctx.instance_id)
        if ctx.instance_id == "y::a":
            trio.from_thread.run_sync(in_thread.set)
            release.wait(timeout=30)
            ended.set()
        return "ok"

    wf = hx.Workflow(
        "sync", start=blocking, transitions={(blocking, "ok"): hx.Done}, unique=hx.Unique("y")
    )
    async with hx.open_engine(workflows=[wf], clock=clock(), limiters={"api": 1}) as engine:
        first = await engine.start(wf, "a")
        await in_thread.wait()
        await engine.cancel(first)  # trio abandons the thread; its code goes on
        second = await engine.start(wf, "b")
        await trio.testing.wait_all_tasks_blocked()
        stats = engine.limiters.get("api").statistics()
        assert (stats.borrowed_tokens, stats.tasks_waiting) == (1, 1)
        assert ran == ["y::a"]
        release.set()
        final = await engine.wait(second)
        assert (await engine.get(first)).status is hx.Status.CANCELLED
    assert ended.is_set()
    assert final.status is hx.Status.COMPLETED
    assert ran == ["y::a", "y::b"]


@pytest.mark.parametrize("fan_out", [False, True], ids=["inline", "fan-out"])
async def test_cancelling_an_instance_that_waits_for_the_limiter_cancels_the_wait(
    autojump_clock: Any, fan_out: bool
) -> None:
    gate = trio.Event()
    ran: list[str] = []

    @hx.step(events=("ok",), limiter="api")
    async def hold(ctx: hx.StepContext) -> hx.StepResult:
        ran.append(ctx.instance_id)
        await gate.wait()
        return "ok"

    @hx.step(events=("ok",))
    async def other(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    @hx.step(events=("go",))
    async def split(ctx: hx.StepContext) -> hx.StepResult:
        return "go"

    if fan_out:
        wf = hx.Workflow(
            "w",
            start=split,
            transitions={
                (split, "go"): [hold, other],
                (hold, "ok"): hx.Done,
                (other, "ok"): hx.Done,
            },
            unique=hx.Unique("w"),
        )
    else:
        wf = hx.Workflow(
            "w", start=hold, transitions={(hold, "ok"): hx.Done}, unique=hx.Unique("w")
        )
    async with hx.open_engine(workflows=[wf], clock=clock(), limiters={"api": 1}) as engine:
        holder = await engine.start(wf, "a")
        waiter = await engine.start(wf, "b")
        await trio.testing.wait_all_tasks_blocked()
        limiter = engine.limiters.get("api")
        assert limiter.statistics().tasks_waiting == 1
        await engine.cancel(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == 0
        assert (await engine.get(waiter)).status is hx.Status.CANCELLED
        gate.set()
        if fan_out:
            await engine.cancel(holder)  # its other branch never ends
        else:
            await engine.wait(holder)
        later = await engine.start(wf, "c")  # no token was lost to the cancelled wait
        await trio.testing.wait_all_tasks_blocked()
        assert ran == ["w::a", "w::c"]
        assert limiter.statistics().borrowed_tokens == 0
        if not fan_out:
            assert (await engine.wait(later)).status is hx.Status.COMPLETED


async def test_a_retried_attempt_takes_the_limiter_again(autojump_clock: Any) -> None:
    inside = Inside()
    attempts: list[int] = []

    @hx.step(events=("ok",), limiter="api", retry=hx.Retry(max_attempts=3, initial=1.0))
    async def flaky(ctx: hx.StepContext) -> hx.StepResult:
        inside.enter()
        attempts.append(ctx.attempt)
        await trio.sleep(1.0)
        inside.leave()
        if ctx.attempt < 3:
            raise RuntimeError("try again")
        return "ok"

    wf = hx.Workflow(
        "flaky", start=flaky, transitions={(flaky, "ok"): hx.Done}, unique=hx.Unique("f")
    )
    async with hx.open_engine(workflows=[wf], clock=clock(), limiters={"api": 1}) as engine:
        ids = [await engine.start(wf, f"v{i}") for i in range(4)]
        finals = [await engine.wait(iid) for iid in ids]
        assert engine.limiters.get("api").statistics().borrowed_tokens == 0
    assert [f.status for f in finals] == [hx.Status.COMPLETED] * 4
    assert (len(attempts), inside.peak) == (12, 1)


def test_run_workflow_runs_a_workflow_with_limited_steps() -> None:
    inside = Inside()
    lone, fan = limited_workflows(inside)
    assert hx.testing.run_workflow(lone, "a").status is hx.Status.COMPLETED
    final = hx.testing.run_workflow(fan, "a", step_overrides={"call_0": "ok"})
    assert final.status is hx.Status.COMPLETED
    assert inside.peak == 2  # the harness does not serialise one instance's branches


# --- validation ----------------------------------------------------------------------------------


def lone_limited(limiter: str) -> hx.Workflow:
    @hx.step(events=("ok",), limiter=limiter)
    async def call(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    return hx.Workflow(
        "lim", start=call, transitions={(call, "ok"): hx.Done}, unique=hx.Unique("m")
    )


async def test_a_step_naming_a_limiter_open_engine_lacks_is_a_definition_error() -> None:
    storage = hx.MemoryStorage()
    with pytest.raises(hx.WorkflowDefinitionError) as info:
        async with hx.open_engine(
            workflows=[lone_limited("payments")], storage=storage, limiters={"api": 2}
        ):
            raise AssertionError("open_engine must refuse")
    (problem,) = info.value.problems
    assert "'call'" in problem
    assert "'payments'" in problem
    assert "'lim'" in problem
    assert "limiters={'payments': n}" in problem
    assert not storage.is_open  # refused before anything was opened
    with pytest.raises(hx.WorkflowDefinitionError, match="'payments'"):
        async with hx.open_engine(workflows=[lone_limited("payments")]):
            raise AssertionError("open_engine must refuse")


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"api": 0}, "int >= 1"),
        ({"api": -3}, "int >= 1"),
        ({"api": True}, "int >= 1"),
        ({"api": 2.0}, "int >= 1"),
        ({"api": "2"}, "int >= 1"),
        ({"api": 1, 7: 2}, "non-empty str"),
        ({"api": 1, "": 2}, "non-empty str"),
        ([("api", 2)], "must be a dict"),
    ],
)
async def test_bad_limits_are_definition_errors(limits: Any, expected: str) -> None:
    with pytest.raises(hx.WorkflowDefinitionError, match=expected):
        async with hx.open_engine(workflows=[lone_limited("api")], limiters=limits):
            raise AssertionError("open_engine must refuse")


@pytest.mark.parametrize("limiter", [3, "", b"api", ["api"]])
def test_a_bad_limiter_name_on_a_step_is_a_definition_error(limiter: Any) -> None:
    with pytest.raises(hx.WorkflowDefinitionError, match="limiter must be the name"):

        @hx.step(events=("ok",), limiter=limiter)
        async def call(ctx: hx.StepContext) -> hx.StepResult:
            return "ok"


def test_a_step_records_its_limiter() -> None:
    @hx.step(events=("ok",), limiter="api")
    async def call(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    assert call.limiter == "api"
    assert hx.step(call.fn, events=("ok",)).limiter is None


async def test_step_start_is_reported_when_the_attempt_gets_its_token(autojump_clock: Any) -> None:
    @hx.step(events=("ok",), limiter="one")
    async def call(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(1.0)
        return "ok"

    wf = hx.Workflow("t", start=call, transitions={(call, "ok"): hx.Done}, unique=hx.Unique("t"))
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], clock=clock(), limiters={"one": 1}, telemetry=recorder
    ) as engine:
        began = trio.current_time()
        ids = [await engine.start(wf, f"v{i}") for i in range(3)]
        for iid in ids:
            await engine.wait(iid)
    starts = recorder.named("step.start")
    assert [e.instance_id for e in starts] == ids  # first come, first served
    durations = [e.measurements["duration"] for e in recorder.named("step.stop")]
    assert durations == [1.0, 1.0, 1.0]  # the wait is not the step's time
    assert trio.current_time() - began == 3.0
