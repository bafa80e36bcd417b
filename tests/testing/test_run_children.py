"""run_workflow runs a parent with its children (hx.SubWorkflow)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import hephaestus as hx
from hephaestus.testing import CrashPoint, WorkflowStuck, run_workflow, trace_workflow


def family(*, waits_for_event: bool = False, sleep: float = 3) -> tuple[hx.Workflow, hx.Workflow]:
    @hx.step(events=("ok",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(sleep)
        return hx.Emit("ok", {"n": ctx.initial["n"] * 3})

    if waits_for_event:
        gate = hx.WaitForEvent("approve", key="gate")
        child = hx.Workflow(
            "child",
            start=work,
            transitions={(work, "ok"): gate, (gate, "approve"): hx.Done},
            unique=hx.Unique("childid"),
        )
    else:
        child = hx.Workflow(
            "child", start=work, transitions={(work, "ok"): hx.Done}, unique=hx.Unique("childid")
        )
    sub = hx.SubWorkflow(child, key="sub", initial=lambda ctx: dict(ctx.initial))
    parent = hx.Workflow(
        "parent",
        start=sub,
        transitions={
            (sub, "completed"): hx.Done,
            (sub, "failed"): hx.Done,
            (sub, "cancelled"): hx.Done,
        },
        unique=hx.Unique("parentid"),
    )
    return parent, child


def test_a_parent_runs_with_the_children_it_names_by_object() -> None:
    parent, _ = family()
    final = run_workflow(parent, "p", {"n": 2})
    assert final.status is hx.Status.COMPLETED
    assert final.results["sub"] == {
        "id": "childid::parentid-p-sub",
        "results": {"work": {"n": 6}},
    }


def test_children_named_by_name_are_given_in_workflows() -> None:
    _, child = family()
    sub = hx.SubWorkflow("child", key="sub", initial={"n": 1})
    parent = hx.Workflow(
        "parent",
        start=sub,
        transitions={(sub, e): hx.Done for e in ("completed", "failed", "cancelled")},
        unique=hx.Unique("parentid"),
    )
    with pytest.raises(hx.WorkflowDefinitionError, match="not registered"):
        run_workflow(parent, "p")
    assert run_workflow(parent, "p", workflows=[child]).results["sub"]["results"] == {
        "work": {"n": 3}
    }


def test_crash_points_count_the_childs_writes_too() -> None:
    parent, _ = family()
    run = trace_workflow(parent, "p", {"n": 1}, crash_at=CrashPoint(step="work", downtime=5))
    assert [c.lost.id for c in run.crashes] == ["childid::parentid-p-sub"]
    assert run.instance.status is hx.Status.COMPLETED
    assert ("work", 2) in run.attempts  # the child's step ran again after the crash
    child_starts = [e for e in run.telemetry if e.name == "workflow.start"]
    assert [e.workflow for e in child_starts] == ["parent", "child"]


def test_a_parent_waiting_on_a_stuck_child_is_stuck() -> None:
    parent, _ = family(waits_for_event=True)
    with pytest.raises(WorkflowStuck) as info:
        run_workflow(parent, "p", {"n": 1})
    assert info.value.instance.waiting == {"sub": ("completed", "failed", "cancelled")}


def test_a_subworkflow_step_can_be_stubbed() -> None:
    parent, _ = family()
    final = run_workflow(parent, "p", {"n": 1}, step_overrides={"sub": "failed"})
    assert final.history[-1].event == "failed"
    assert final.children == {}


def test_workflows_must_be_workflows() -> None:
    parent, _ = family()
    bad: Any = ["child"]
    with pytest.raises(TypeError, match=r"hx\.Workflow objects"):
        run_workflow(parent, "p", workflows=bad)


async def test_a_crash_while_the_watcher_looks_at_a_child_does_not_hang(
    autojump_clock: Any,
) -> None:
    """The watcher read through the crashing storage (a child, a passivated parent) and blocked.

    Whether a crash meets the watcher mid-read depends on scheduling, hence the repeats.
    """
    parent, _ = family(sleep=0)  # the child's writes come while the watcher reads
    clean = await hx.testing.trace_workflow_async(parent, "p", {"n": 1})
    for _ in range(20):
        for write in range(1, clean.writes + 1):
            with trio.fail_after(10_000):
                run = await hx.testing.trace_workflow_async(parent, "p", {"n": 1}, crash_at=write)
            assert run.instance.status is hx.Status.COMPLETED


def test_the_invariant_checks_look_at_the_parent_only() -> None:
    from hephaestus.testing._invariants import run_problems

    parent, _ = family()
    run = trace_workflow(parent, "p", {"n": 1}, crash_at=[2, 4])
    assert {s.id for s in run.snapshots} == {"parentid::p", "childid::parentid-p-sub"}
    assert run_problems(run) == []


def test_children_with_limited_steps_run_too() -> None:
    @hx.step(events=("ok",), limiter="api")
    async def call(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("ok", {"called": True})

    child = hx.Workflow(
        "child", start=call, transitions={(call, "ok"): hx.Done}, unique=hx.Unique("childid")
    )
    sub = hx.SubWorkflow(child, key="sub")
    parent = hx.Workflow(
        "parent",
        start=sub,
        transitions={(sub, e): hx.Done for e in ("completed", "failed", "cancelled")},
        unique=hx.Unique("parentid"),
    )
    final = run_workflow(parent, "p")
    assert final.results["sub"]["results"] == {"call": {"called": True}}
