"""hx.SubWorkflow under crashes: the child is started once, and the parent hears of its end.

A parent ``prep -> sub (SubWorkflow) -> after`` runs a child ``work -> nap
(durable Wait) -> finish`` through :func:`hx.testing.trace_workflow`, which
kills the engine just before its n-th snapshot write (parent's and child's
writes counted together) and recovers on the same storage. Hypothesis picks
one or two crash points over every write of the run, downtimes included, and
whether the child fails. Whatever it picks:

- the child instance is started exactly once (one ``workflow.start`` for its
  id, every stored snapshot of it from one ``created_at``);
- the parent ends as without crashes: completed through ``on_completed`` (or
  ``on_failed`` for a failing child) with the child's results;
- no child is left active.
"""

from __future__ import annotations

import functools
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import hephaestus as hx


def family(fail: bool) -> tuple[hx.Workflow, hx.Workflow]:
    @hx.step(events=("ok",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(2)
        return hx.Emit("ok", {"n": ctx.initial["n"] + 1})

    nap = hx.Wait(30, key="nap")

    @hx.step(events=("ok",))
    async def finish(ctx: hx.StepContext) -> hx.StepResult:
        if fail:
            raise RuntimeError("the child gives up")
        return hx.Emit("ok", {"n": ctx.results["work"]["n"] * 10})

    child = hx.Workflow(
        "child",
        start=work,
        transitions={(work, "ok"): nap, (nap, "timeout"): finish, (finish, "ok"): hx.Done},
        unique=hx.Unique("childid"),
    )

    @hx.step(events=("ok",))
    async def prep(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(1)
        return hx.Emit("ok", {"n": 4})

    sub = hx.SubWorkflow(child, key="sub", initial=lambda ctx: dict(ctx.results["prep"]))

    def ender(event: str) -> hx.Step:
        async def end(ctx: hx.StepContext) -> hx.StepResult:
            return hx.Emit("ok", {"saw": event, "child": ctx.results["sub"]["results"]})

        return hx.step(end, events=("ok",), key=f"on_{event}")

    on = {event: ender(event) for event in ("completed", "failed", "cancelled")}
    parent = hx.Workflow(
        "parent",
        start=prep,
        transitions={
            (prep, "ok"): sub,
            **{(sub, event): step for event, step in on.items()},
            **{(step, "ok"): hx.Done for step in on.values()},
        },
        unique=hx.Unique("parentid"),
    )
    return parent, child


CHILD_ID = "childid::parentid-p-sub"


def expected_results(fail: bool) -> dict[str, Any]:
    if fail:
        return {"saw": "failed", "child": {"work": {"n": 5}, "nap": {}}}
    return {"saw": "completed", "child": {"work": {"n": 5}, "nap": {}, "finish": {"n": 50}}}


def check(run: hx.testing.WorkflowRun, fail: bool) -> None:
    final = run.instance
    assert final.status is hx.Status.COMPLETED, final
    event = "failed" if fail else "completed"
    assert final.completed == ("prep", "sub", f"on_{event}")
    assert final.results[f"on_{event}"] == expected_results(fail)
    assert final.results["sub"]["id"] == CHILD_ID
    starts = [e for e in run.telemetry if e.name == "workflow.start" and e.instance_id == CHILD_ID]
    assert len(starts) == 1, [c.describe() for c in run.crashes]
    child_snapshots = [s for s in run.snapshots if s.id == CHILD_ID]
    assert len({s.created_at for s in child_snapshots}) == 1
    assert child_snapshots[-1].status is (hx.Status.FAILED if fail else hx.Status.COMPLETED)


def trace(fail: bool, crash_at: hx.testing.CrashAt = None) -> hx.testing.WorkflowRun:
    """One run of the family, failing (not hanging) if the parent never ends."""

    async def bounded() -> hx.testing.WorkflowRun:
        with trio.fail_after(100_000):  # virtual seconds; the run takes about 40
            return await hx.testing.trace_workflow_async(parent, "p", crash_at=crash_at)

    parent, _ = family(fail)
    return trio.run(functools.partial(bounded), clock=trio.testing.MockClock(autojump_threshold=0))


def writes_without_crash(fail: bool) -> int:
    run = trace(fail)
    check(run, fail)
    return run.writes


WRITES = {fail: writes_without_crash(fail) for fail in (False, True)}


def test_every_single_crash_point() -> None:
    """Exhaustively: a crash before each write of the run, one at a time."""
    for fail in (False, True):
        for write in range(1, WRITES[fail] + 1):
            run = trace(fail, write)
            assert len(run.crashes) == 1
            check(run, fail)


@settings(max_examples=150, deadline=None)
@given(
    fail=st.booleans(),
    data=st.data(),
)
def test_any_crash_points_with_downtime(fail: bool, data: st.DataObject) -> None:
    writes = WRITES[fail]
    points = data.draw(
        st.lists(
            st.builds(
                hx.testing.CrashPoint,
                st.integers(1, writes + 2),
                downtime=st.sampled_from([0.0, 1.0, 60.0]),
            ),
            min_size=1,
            max_size=2,
            unique_by=lambda p: p.write,
        )
    )
    run = trace(fail, points)
    check(run, fail)
