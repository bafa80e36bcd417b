"""What the pure core decides about hx.SubWorkflow steps and max_active."""

from __future__ import annotations

import pytest

import hephaestus as hx
from hephaestus._core._admission import holds_slot, limits, queue_key
from hephaestus._core._engine import (
    Cancel,
    CancelChild,
    ChildFinished,
    ChildRequested,
    ChildStartFailed,
    Deliver,
    Recover,
    RunStep,
    Start,
    StartChild,
    StepFailed,
    StepSucceeded,
    new_instance,
)
from hephaestus._core._model import ChildLink, ParentLink
from hephaestus._core._outcome import outcome
from hephaestus._core._subworkflow import (
    ChildRequest,
    child_instance_id,
    child_spec,
    default_value,
    request_child,
)

from .helpers import Driver, mk, of_type, workflow


def _child() -> hx.Workflow:
    work = mk("work")
    return hx.Workflow(
        "child", start=work, transitions={(work, "ok"): hx.Done}, unique=hx.Unique("c")
    )


def parent() -> tuple[hx.Workflow, hx.Step]:
    sub = hx.SubWorkflow("child", key="sub")
    after = mk("after")
    wf = workflow(
        sub,
        {
            (sub, "completed"): after,
            (sub, "failed"): hx.Done,
            (sub, "cancelled"): hx.Done,
            (after, "ok"): hx.Done,
        },
    )
    return wf, sub


def requested(attempt: int = 1) -> ChildRequested:
    return ChildRequested(
        step="sub",
        attempt=attempt,
        value="v",
        initial={"n": 1},
        child_id="c::v",
        workflow="child",
        version=1,
    )


def started() -> Driver:
    wf, _ = parent()
    drive = Driver(wf)
    assert of_type(drive(Start()).commands, RunStep) == [RunStep(step="sub", attempt=1)]
    return drive


def test_a_request_records_the_child_suspends_the_step_and_starts_the_child() -> None:
    drive = started()
    transition = drive(requested())
    link = ChildLink(id="c::v", workflow="child", version=1, attempt=1, initial={"n": 1})
    parent_link = ParentLink(id="order::abc", step="sub", attempt=1, run=1000.0)
    assert drive.instance.children == {"sub": link}
    assert drive.instance.waiting == {"sub": ("completed", "failed", "cancelled")}
    assert drive.status is hx.Status.WAITING
    assert transition.commands == (StartChild(child=link, parent=parent_link),)


def test_recovery_asks_again_for_the_child_of_a_waiting_step() -> None:
    drive = started()
    drive(requested())
    transition = drive(Recover())
    assert of_type(transition.commands, StartChild) == [
        StartChild(
            child=drive.instance.children["sub"],
            parent=ParentLink(id="order::abc", step="sub", attempt=1, run=1000.0),
        )
    ]
    assert not transition.changed


def test_the_childs_end_completes_the_step_with_its_status_and_results() -> None:
    drive = started()
    drive(requested())
    results = {"work": {"x": 1}}
    drive(
        ChildFinished(
            step="sub", attempt=1, child_id="c::v", status=hx.Status.FAILED, results=results
        )
    )
    assert drive.status is hx.Status.COMPLETED  # "failed" leads to Done here
    assert drive.instance.results["sub"] == {"id": "c::v", "results": results}
    assert drive.instance.history[-1].event == "failed"
    # After completion the child is no longer asked for on recovery.
    assert of_type(drive(Recover()).commands, StartChild) == []


@pytest.mark.parametrize(
    "wrong",
    [
        {"attempt": 2},
        {"child_id": "c::other"},
        {"step": "after"},
    ],
)
def test_news_of_another_child_or_attempt_changes_nothing(wrong: dict[str, object]) -> None:
    drive = started()
    drive(requested())
    fields: dict[str, object] = {
        "step": "sub",
        "attempt": 1,
        "child_id": "c::v",
        "status": hx.Status.COMPLETED,
        **wrong,
    }
    assert not drive(ChildFinished(**fields)).changed  # type: ignore[arg-type]
    assert drive.status is hx.Status.WAITING


def test_a_child_that_cannot_be_started_fails_the_step() -> None:
    drive = started()
    drive(requested())
    drive(
        ChildStartFailed(
            step="sub", attempt=1, child_id="c::v", error_type="AlreadyRunning", message="taken"
        )
    )
    assert drive.status is hx.Status.FAILED
    assert drive.instance.error is not None
    assert (drive.instance.error.step, drive.instance.error.type) == ("sub", "AlreadyRunning")


def test_cancelling_the_parent_cancels_the_waiting_child() -> None:
    drive = started()
    drive(requested())
    transition = drive(Cancel(reason="stop"))
    assert of_type(transition.commands, CancelChild) == [
        CancelChild(
            child_id="c::v", parent=ParentLink(id="order::abc", step="sub", attempt=1, run=1000.0)
        )
    ]
    assert drive.status is hx.Status.CANCELLED
    # A terminal parent ignores late news of its child.
    news = ChildFinished(step="sub", attempt=1, child_id="c::v", status=hx.Status.CANCELLED)
    assert not drive(news).changed


def test_a_step_that_ended_cancels_no_child() -> None:
    drive = started()
    drive(requested())
    drive(ChildFinished(step="sub", attempt=1, child_id="c::v", status=hx.Status.COMPLETED))
    assert of_type(drive(Cancel()).commands, CancelChild) == []


def test_an_outdated_request_is_ignored() -> None:
    drive = started()
    assert not drive(requested(attempt=2)).changed


def test_resume_cannot_end_a_subworkflow_step() -> None:
    drive = started()
    drive(requested())
    with pytest.raises(hx.EventRejected, match="cannot be accepted"):
        drive(Deliver(event="completed"))
    with pytest.raises(hx.EventRejected, match="SubWorkflow"):
        drive(Deliver(event="completed", step="sub"))


def test_the_steps_code_becomes_a_request_and_other_steps_cannot_return_one() -> None:
    wf, sub = parent()
    assert child_spec(sub) is not None
    assert child_spec(wf.steps["after"]) is None
    assert outcome(sub, 1, ChildRequest(value="v")) == ChildRequested(
        step="sub", attempt=1, value="v"
    )
    assert isinstance(outcome(wf.steps["after"], 1, ChildRequest(value="v")), StepFailed)
    assert isinstance(outcome(sub, 1, StepSucceeded), StepFailed)


def test_default_values_are_valid_deterministic_and_distinct() -> None:
    assert default_value("orderid::abc123", "pay") == "orderid-abc123-pay"
    assert default_value("orderid::abc::v2", "pay") == "orderid-abc-v2-pay"
    long_a = default_value("k::" + "a" * 128, "pay")
    long_b = default_value("k::" + "a" * 127 + "b", "pay")
    assert len(long_a) == 128
    assert long_a != long_b
    assert child_instance_id(_child(), long_a, "k::x", "pay") == f"c::{long_a}"


def test_a_child_id_under_scope_none_is_still_deterministic() -> None:
    work = mk("work")
    loose = hx.Workflow(
        "loose", start=work, transitions={(work, "ok"): hx.Done}, unique=hx.Unique("l", "none")
    )
    first = child_instance_id(loose, "v", "order::a", "sub")
    assert first == child_instance_id(loose, "v", "order::a", "sub")
    assert first != child_instance_id(loose, "v", "order::b", "sub")
    assert first.startswith("l::v::")


def test_request_child_runs_the_value_and_initial_functions() -> None:
    spec = child_spec(
        hx.SubWorkflow(
            "child",
            key="sub",
            value=lambda ctx: ctx.initial["order"],
            initial=lambda ctx: {"from": ctx.step},
        )
    )
    assert spec is not None
    ctx = hx.StepContext(
        instance_id="order::a",
        workflow="wf",
        version=1,
        initial={"order": "o1"},
        results={},
        config=None,
        attempt=1,
        step="sub",
    )
    assert request_child(spec, ctx) == ChildRequest(value="o1", initial={"from": "sub"})
    bad = child_spec(hx.SubWorkflow("child", key="sub", initial=lambda ctx: [1]))  # type: ignore[arg-type,return-value]
    assert bad is not None
    with pytest.raises(hx.InvalidResult, match="not a dict"):
        request_child(bad, ctx)


def test_admission_order_and_limits() -> None:
    work = mk("work")

    def limited(version: int, max_active: int | None) -> hx.Workflow:
        return hx.Workflow(
            "lim",
            start=work,
            transitions={(work, "ok"): hx.Done},
            unique=hx.Unique("lim"),
            version=version,
            max_active=max_active,
        )

    assert limits([limited(1, 5), limited(2, 2)]) == {"lim": 2}
    assert limits([limited(1, 5), limited(2, None)]) == {}
    wf = limited(1, 1)
    a = new_instance(wf, "lim::a", initial=None, metadata=None, now=5.0, sequence=2)
    b = new_instance(wf, "lim::b", initial=None, metadata=None, now=5.0, sequence=1)
    c = new_instance(wf, "lim::c", initial=None, metadata=None, now=4.0, sequence=9)
    assert sorted([a, b, c], key=queue_key) == [c, b, a]
    assert not holds_slot(a)
