"""Contract points of API.md decided by the core: results entries, terminal answers, metadata."""

from __future__ import annotations

import msgspec
import pytest

import hephaestus as hx
from hephaestus._core._engine import (
    Cancel,
    CancelTimer,
    Deliver,
    Input,
    Recover,
    ScheduleResume,
    Start,
    StepFailed,
    StepSucceeded,
    StepSuspended,
    TimerFired,
    apply,
    step_context,
)
from hephaestus._core._notes import Delivery
from hephaestus._core._terminal import answer_terminal

from .helpers import Driver, mk, workflow

# --- results: an entry for every completed step -------------------------------------------------


def test_every_completed_step_has_a_results_entry() -> None:
    a, b, c, d = mk("a"), mk("b", "go"), mk("c"), mk("d")
    run = Driver(workflow(a, {(a, "ok"): b, (b, "go"): c, (c, "ok"): d, (d, "ok"): hx.Done}))
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))  # a bare event
    run(StepSuspended(step="b", attempt=1, timeout=None))
    run(Deliver(event="go"))  # resumed without a payload
    run(
        StepSucceeded(step="c", attempt=1, event="ok", results=None, metadata={"m": 1})
    )  # an Emit without results
    run(StepSucceeded(step="d", attempt=1, event="ok", results={"v": 1}))
    assert run.status is hx.Status.COMPLETED
    assert run.instance.results == {"a": {}, "b": {}, "c": {}, "d": {"v": 1}}


def test_after_an_exclusive_split_the_join_sees_which_branch_ran() -> None:
    split, left, right, join = mk("split", "l", "r"), mk("left"), mk("right"), mk("join")
    wf = workflow(
        split,
        {
            (split, "l"): left,
            (split, "r"): right,
            (left, "ok"): join,
            (right, "ok"): join,
            (join, "ok"): hx.Done,
        },
    )
    run = Driver(wf)
    run(Start())
    run(StepSucceeded(step="split", attempt=1, event="r"))
    run(StepSucceeded(step="right", attempt=1, event="ok"))
    assert run.instance.active == ("join",)
    ctx = step_context(wf, run.instance, "join", 1)
    assert "right" in ctx.results
    assert "left" not in ctx.results


# --- what a terminal instance answers -----------------------------------------------------------


def _finished(status: hx.Status) -> Driver:
    a = mk("a", "go")
    run = Driver(workflow(a, {(a, "go"): hx.Done}))
    run(Start())
    run(StepSuspended(step="a", attempt=1, timeout=None))
    run(Deliver(event="go", payload=None, step=None, dedupe_key="hook-1"))
    assert run.status is hx.Status.COMPLETED
    if status is not hx.Status.COMPLETED:  # same dedupe history, other terminal status
        run.instance = msgspec.structs.replace(
            run.instance,
            status=status,
            cancelled=status is hx.Status.CANCELLED,
            error=None
            if status is hx.Status.CANCELLED
            else hx.ErrorInfo(step="a", type="Boom", message="x", attempts=1),
        )
    return run


@pytest.mark.parametrize("status", [hx.Status.COMPLETED, hx.Status.FAILED, hx.Status.CANCELLED])
def test_a_repeated_dedupe_key_is_ignored_whatever_the_status(status: hx.Status) -> None:
    run = _finished(status)
    before = run.instance
    t = apply(
        run.wf,
        before,
        Deliver(event="go", payload={"again": True}, step=None, dedupe_key="hook-1"),
        2000.0,
    )
    assert not t.changed
    assert t.instance is before
    assert t.reply == Delivery.IGNORED
    with pytest.raises(hx.EventRejected, match=f"it is {status.value}"):
        apply(
            run.wf,
            before,
            Deliver(event="go", payload=None, step=None, dedupe_key="hook-2"),
            2000.0,
        )


@pytest.mark.parametrize("status", [hx.Status.COMPLETED, hx.Status.FAILED, hx.Status.CANCELLED])
def test_the_engine_answers_terminal_instances_as_answer_terminal_does(status: hx.Status) -> None:
    """apply needs a workflow, answer_terminal does not: both say the same."""
    run = _finished(status)
    inputs: list[Input] = [
        Start(),
        Recover(),
        StepSucceeded(step="a", attempt=1, event="go"),
        StepFailed(step="a", attempt=1, error_type="Boom", message="x"),
        StepSuspended(step="a", attempt=1, timeout=None),
        TimerFired(timer_id="t1"),
        Deliver(event="go", payload=None, step=None, dedupe_key="hook-1"),
        Deliver(event="go"),
        ScheduleResume(step="a", delay=1.0),
        CancelTimer(timer_id="t1"),
        Cancel(reason="why"),
    ]
    for event in inputs:
        expected: tuple[str, object]
        got: tuple[str, object]
        try:
            expected = ("reply", answer_terminal(run.instance, event))
        except hx.EventRejected as exc:
            expected = ("rejected", str(exc))
        try:
            t = apply(run.wf, run.instance, event, 2000.0)
        except hx.EventRejected as exc:
            got = ("rejected", str(exc))
        else:
            assert not t.changed
            assert t.commands == ()
            got = ("reply", t.reply)
        assert got == expected, event


# --- StepContext.metadata -----------------------------------------------------------------------


def test_the_step_context_shows_the_instance_metadata_read_only() -> None:
    a, b = mk("a"), mk("b")
    wf = workflow(a, {(a, "ok"): b, (b, "ok"): hx.Done})
    run = Driver(wf)
    run.instance = msgspec.structs.replace(run.instance, metadata={"tenant": "t1", "tags": ["x"]})
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok", results=None, metadata={"stage": "a"}))
    ctx = step_context(wf, run.instance, "b", 1)
    assert ctx.metadata == {"tenant": "t1", "tags": ["x"], "stage": "a"}
    with pytest.raises(TypeError):
        ctx.metadata["tenant"] = "t2"  # type: ignore[index]
    ctx.metadata["tags"].append("y")  # a copy: the instance does not change
    assert run.instance.metadata["tags"] == ["x"]
