"""Early events: a resume sent while the declaring step still runs waits in the inbox."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import hephaestus as hx

from .helpers import Recorder, clock


def _gated(gates: dict[str, trio.Event], started: dict[str, trio.Event], key: str) -> hx.Step:
    """A step that runs until its gate opens, then suspends; it declares "go"."""

    async def body(ctx: hx.StepContext) -> hx.StepResult:
        started[key].set()
        await gates[key].wait()
        return hx.Suspend()

    return hx.step(body, events=("go",), key=key)


async def test_event_sent_while_step_runs_is_delivered_when_it_suspends(
    autojump_clock: Any,
) -> None:
    gates = {"review": trio.Event()}
    started = {"review": trio.Event()}
    review = _gated(gates, started, "review")
    wf = hx.Workflow(
        "early", start=review, transitions={(review, "go"): hx.Done}, unique=hx.Unique("early")
    )
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder
    ) as engine:
        iid = await engine.start(wf, "a")
        await started["review"].wait()
        await engine.resume(iid, "go", {"by": "early bird"})
        queued = await storage.get(iid)  # persisted before resume returned
        assert queued is not None
        assert queued.status is hx.Status.RUNNING
        assert queued.active == ("review",)
        assert [(e.event, e.payload) for e in queued.inbox] == [("go", {"by": "early bird"})]
        gates["review"].set()
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.results == {"review": {"by": "early bird"}}
    assert final.inbox == ()
    resumes = recorder.named("step.resume", iid)
    assert resumes
    assert resumes[0].metadata["event"] == "go"


async def test_two_early_events_are_delivered_first_in_first_out(autojump_clock: Any) -> None:
    gates = {"one": trio.Event(), "two": trio.Event()}
    started = {"one": trio.Event(), "two": trio.Event()}
    one = _gated(gates, started, "one")
    two = _gated(gates, started, "two")
    wf = hx.Workflow(
        "fifo",
        start=one,
        transitions={(one, "go"): two, (two, "go"): hx.Done},
        unique=hx.Unique("fifo"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await started["one"].wait()
        await engine.resume(iid, "go", {"n": 1})
        await engine.resume(iid, "go", {"n": 2})
        assert [e.payload for e in (await engine.get(iid)).inbox] == [{"n": 1}, {"n": 2}]
        gates["one"].set()
        await started["two"].wait()
        after_one = await engine.get(iid)
        assert after_one.results == {"one": {"n": 1}}
        assert [e.payload for e in after_one.inbox] == [{"n": 2}]
        gates["two"].set()
        final = await engine.wait(iid)
    assert final.results == {"one": {"n": 1}, "two": {"n": 2}}
    assert [h.step for h in final.history] == ["one", "two"]


async def test_early_event_for_a_later_step_waits_for_it(autojump_clock: Any) -> None:
    @hx.step(events=("ok",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(100)
        return "ok"

    approve = hx.WaitForEvent("approved", key="approve")
    wf = hx.Workflow(
        "later",
        start=work,
        transitions={
            (work, "ok"): approve,
            (approve, "approved"): hx.Done,
        },
        unique=hx.Unique("later"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await engine.resume(iid, "approved", {"ok": True})
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.results == {"work": {}, "approve": {"ok": True}}


async def test_early_event_survives_an_engine_restart(autojump_clock: Any) -> None:
    @hx.step(events=("ok",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(100)
        return "ok"

    approve = hx.WaitForEvent("approved", key="approve")
    wf = hx.Workflow(
        "later",
        start=work,
        transitions={
            (work, "ok"): approve,
            (approve, "approved"): hx.Done,
        },
        unique=hx.Unique("later"),
    )
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await engine.resume(iid, "approved", {"ok": 1})
        await trio.sleep(10)
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        final = await engine.wait(iid)
    assert final.results == {"work": {}, "approve": {"ok": 1}}
    assert final.history[0].attempt == 2  # work ran again after the restart


async def test_event_for_a_dead_branch_is_rejected(autojump_clock: Any) -> None:
    @hx.step(events=("left", "right"))
    async def choose(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(5)
        return "right"

    left = hx.WaitForEvent("go", key="left")

    @hx.step(events=("ok",))
    async def right(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(5)
        return "ok"

    wf = hx.Workflow(
        "dead",
        start=choose,
        transitions={
            (choose, "left"): left,
            (choose, "right"): right,
            (left, "go"): hx.Done,
            (right, "ok"): hx.Done,
        },
        unique=hx.Unique("dead"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.sleep(7)  # choose went right: left can no longer run
        revision = (await engine.get(iid)).revision
        try:
            await engine.resume(iid, "go")
        except hx.EventRejected:
            pass
        else:
            raise AssertionError("an event only a dead step declares must be rejected")
        assert (await engine.get(iid)).revision == revision
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert "left" not in final.completed


async def test_step_resuming_a_sibling_of_its_own_instance(autojump_clock: Any) -> None:
    engines: list[hx.Engine] = []

    @hx.step(events=("ok",))
    async def begin(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    gate = hx.WaitForEvent("open", key="gate")

    @hx.step(events=("ok",))
    async def opener(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(3)
        await engines[0].resume(ctx.instance_id, "open", {"by": "opener"})
        return "ok"

    @hx.step(events=("ok",))
    async def end(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    wf = hx.Workflow(
        "sib",
        start=begin,
        transitions={
            (begin, "ok"): [gate, opener],
            (gate, "open"): end,
            (opener, "ok"): end,
            (end, "ok"): hx.Done,
        },
        unique=hx.Unique("sib"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        engines.append(engine)
        with trio.fail_after(60):
            final = await engine.wait(await engine.start(wf, "a"))
    assert final.status is hx.Status.COMPLETED
    assert final.results == {"begin": {}, "gate": {"by": "opener"}, "opener": {}, "end": {}}
