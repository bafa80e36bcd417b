"""assert_workflow_invariants: passes on correct workflows, catches the double charge."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

import hephaestus as hx
from hephaestus._telemetry import TelemetryEvent
from hephaestus.testing import SimulatedFailure, assert_workflow_invariants, trace_workflow
from hephaestus.testing._invariants import compare_runs, run_problems

from .workflows import PROVIDER, broken_order, order, warehouse


def test_the_order_workflow_keeps_every_invariant() -> None:
    assert_workflow_invariants(
        order, initial={"amount": 30}, before_run=PROVIDER.reset, max_examples=25
    )


def test_the_warehouse_keeps_every_invariant() -> None:
    assert_workflow_invariants(
        warehouse, initial=st.fixed_dictionaries({"items": st.integers(1, 20)}), max_examples=20
    )


def test_the_double_charge_is_caught_with_a_shrunk_readable_counterexample() -> None:
    with pytest.raises(AssertionError) as info:
        assert_workflow_invariants(
            broken_order,
            initial={"amount": 30},
            before_run=PROVIDER.reset,
            steps=["request_payment"],
            max_examples=60,
        )
    message = str(info.value)
    print(message)  # pytest -s shows what a user sees
    assert message.startswith("workflow 'order' v1 breaks an invariant:")
    assert "with crash_at=CrashPoint(write=" in message
    assert (
        "results['charge']: {'charge_id': 'ch_2'} after the crash, {'charge_id': 'ch_1'} without"
    ) in message
    assert "step 'charge' attempt 1 ended with 'charged'" in message
    assert "charge#1 charge#2" in message
    # hypothesis' shrunk example: the provider's own code, one webhook at second 0
    assert "step_overrides={}," in message
    assert "events=[(0, 'paid', None)]," in message
    assert "initial={'amount': 30}," in message


def test_a_workflow_that_cannot_finish_is_reported() -> None:
    waits = hx.WaitForEvent("signed", key="signature")
    wf = hx.Workflow(
        "contract",
        start=waits,
        transitions={(waits, "signed"): hx.Done},
        unique=hx.Unique("contract"),
    )
    with pytest.raises(
        AssertionError,
        match=r"(?s)breaks an invariant.*is stuck waiting.*"
        r"events=\[\]",
    ):
        assert_workflow_invariants(wf, max_examples=10)


def test_a_step_that_raises_is_an_ordinary_failure_not_a_broken_invariant() -> None:
    @hx.step(events=("ok",))
    async def explode(ctx: hx.StepContext) -> hx.StepResult:
        raise RuntimeError("boom")

    wf = hx.Workflow(
        "boom", start=explode, transitions={(explode, "ok"): hx.Done}, unique=hx.Unique("boom")
    )
    assert_workflow_invariants(wf, max_examples=5)


# --- the checks themselves, on hand-made runs -------------------------------------------------


def test_run_problems_sees_steps_after_the_end() -> None:
    run = trace_workflow(order, "o1", {"amount": 30}, events=[(5, "paid")])
    assert run_problems(run) == []
    late = TelemetryEvent(name="step.start", instance_id=run.instance.id, step="ship")
    broken = type(run)(
        instance=run.instance,
        events=run.events,
        snapshots=run.snapshots,
        telemetry=(*run.telemetry, late),
        crashes=run.crashes,
    )
    assert run_problems(broken) == [
        "steps ran after the instance became completed: step.start of 'ship'"
    ]
    rewritten = type(run)(
        instance=run.instance,
        events=run.events,
        snapshots=(*run.snapshots, run.snapshots[-2]),
        telemetry=run.telemetry,
        crashes=run.crashes,
    )
    assert "was written after the instance became completed" in run_problems(rewritten)[0]


def test_compare_runs_allows_races_but_not_different_decisions() -> None:
    PROVIDER.reset()
    paid = trace_workflow(order, "o1", {"amount": 30}, events=[(5, "paid")])
    PROVIDER.reset()
    late = trace_workflow(order, "o1", {"amount": 30}, events=[(5000, "paid")])
    # the webhook against the timeout: a race a crash can tip, not a broken invariant
    assert compare_runs(paid, late) == []
    declined = trace_workflow(
        order, "o1", {"amount": 30}, step_overrides={"request_payment": "declined"}
    )
    assert compare_runs(paid, declined) == [
        "step 'request_payment' ended with 'declined' after the crash, 'approved' without"
    ]


def test_no_step_code_runs_after_a_sibling_failed_the_instance() -> None:
    # Regression (found by assert_workflow_invariants on the warehouse): reserve's success
    # starts cool_down in the same batch of messages in which pack's failure fails the
    # instance; cool_down's task then began anyway, emitting step.start and running its
    # code after the instance was FAILED. Scheduling decides the order: try a few times.
    for _ in range(20):
        run = trace_workflow(warehouse, "s1", step_overrides={"pack": SimulatedFailure("pack")})
        assert run.instance.status is hx.Status.FAILED
        assert run_problems(run) == []
