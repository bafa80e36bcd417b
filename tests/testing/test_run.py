"""run_workflow and trace_workflow: virtual time, event schedules, step overrides, crashes."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import hephaestus as hx
from hephaestus.testing import (
    CANCEL,
    CrashPoint,
    SimulatedFailure,
    WorkflowStuck,
    run_workflow,
    run_workflow_async,
    trace_workflow,
    with_overrides,
)

from .workflows import PROVIDER, broken_order, order, warehouse

DAY = 86_400


@pytest.fixture(autouse=True)
def _fresh_provider() -> None:
    PROVIDER.reset()


def path(instance: hx.Instance) -> list[tuple[str, str | None]]:
    return [(entry.step, entry.event) for entry in instance.history]


# --- running ----------------------------------------------------------------------------------


def test_runs_to_completion_with_a_webhook() -> None:
    final = run_workflow(order, "o1", {"amount": 30}, events=[(120, "paid", {"ref": "w1"})])
    assert final.status is hx.Status.COMPLETED
    assert path(final) == [
        ("validate", "valid"),
        ("request_payment", "approved"),
        ("await_payment", "paid"),
        ("charge", "charged"),
        ("ship", "shipped"),
    ]
    assert final.results["await_payment"] == {"ref": "w1"}
    assert final.id == "orderid::o1"
    assert PROVIDER.times_charged(final.id) == 1


def test_an_hour_without_a_webhook_times_out_in_virtual_time() -> None:
    run = trace_workflow(order, "o1", {"amount": 30})
    assert path(run.instance)[-2:] == [("await_payment", "timeout"), ("cancel_order", "cancelled")]
    # request_payment takes 0.5 s, then the timeout is one hour
    assert run.instance.updated_at - run.instance.created_at == pytest.approx(3600.5)
    assert run.events == ()


def test_a_late_event_is_recorded_as_rejected_and_the_run_goes_on() -> None:
    run = trace_workflow(
        order, "o1", {"amount": 30}, events=[(7200, "paid"), (10, "paid"), (DAY, CANCEL)]
    )
    assert run.instance.status is hx.Status.COMPLETED
    assert [(e.event, e.rejected) for e in run.events] == [
        ("paid", False),
        ("paid", True),
        (CANCEL, True),
    ]
    assert [e.at for e in run.events] == pytest.approx([10.001, 7200.001, DAY + 0.001])
    assert "completed" in (run.rejected[0].error or "")
    assert len(run.rejected) == 2


def test_an_early_event_waits_in_the_inbox() -> None:
    final = run_workflow(order, "o1", {"amount": 30}, events=[(0, "paid", {"early": True})])
    assert final.status is hx.Status.COMPLETED
    assert final.results["await_payment"] == {"early": True}


def test_cancel_in_the_schedule_cancels() -> None:
    run = trace_workflow(
        order, "o1", {"amount": 30}, events=[(60, CANCEL, {"reason": "changed mind"})]
    )
    assert run.instance.status is hx.Status.CANCELLED
    assert run.instance.cancel_reason == "changed mind"
    assert run.events[0].reply == "cancelled"


def test_an_event_no_step_declares_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="no step of workflow 'order' declares 'payed'"):
        run_workflow(order, "o1", {"amount": 30}, events=[(1, "payed")])
    with pytest.raises(ValueError, match="delay must be a finite number of seconds >= 0"):
        run_workflow(order, "o1", {"amount": 30}, events=[(-1, "paid")])


def test_a_stuck_instance_raises_workflow_stuck() -> None:
    waits = hx.WaitForEvent("approved", key="approval")
    wf = hx.Workflow(
        "approve", start=waits, transitions={(waits, "approved"): hx.Done}, unique=hx.Unique("doc")
    )
    stuck = r"steps wait \('approval' for \['approved'\]\)"
    with pytest.raises(WorkflowStuck, match=stuck) as info:
        run_workflow(wf, "d1")
    assert isinstance(info.value, AssertionError)
    assert info.value.instance.status is hx.Status.WAITING
    assert run_workflow(wf, "d1", events=[(5, "approved")]).status is hx.Status.COMPLETED


def test_a_thirty_day_wait_takes_no_real_time() -> None:
    month = hx.Wait(30 * DAY, key="month")
    wf = hx.Workflow(
        "slow", start=month, transitions={(month, "timeout"): hx.Done}, unique=hx.Unique("slow")
    )
    final = run_workflow(wf, "s")
    assert final.updated_at - final.created_at == 30 * DAY


def test_run_workflow_refuses_to_nest_in_trio() -> None:
    async def inside() -> None:
        run_workflow(order, "o1", {"amount": 30})

    with pytest.raises(RuntimeError, match="run_workflow_async"):
        trio.run(inside)


async def test_run_workflow_async_in_a_trio_test(autojump_clock: trio.testing.MockClock) -> None:
    final = await run_workflow_async(
        order,
        "o1",
        {"amount": 30},
        events=[(DAY, "paid")],
        step_overrides={"request_payment": "approved"},
    )
    assert path(final)[-1] == ("cancel_order", "cancelled")
    assert trio.current_time() >= DAY


# --- step overrides ---------------------------------------------------------------------------


def test_overrides_keep_the_graph_and_leave_the_workflow_alone() -> None:
    copy = with_overrides(order, {"request_payment": "declined", "charge": ValueError})
    assert copy is not order
    assert list(copy.steps) == list(order.steps)
    assert {k: s.events for k, s in copy.steps.items()} == {
        k: s.events for k, s in order.steps.items()
    }
    assert {k: (e.target_keys, e.done) for k, e in copy.edges.items()} == {
        k: (e.target_keys, e.done) for k, e in order.edges.items()
    }
    assert copy.steps["request_payment"].retry == order.steps["request_payment"].retry
    assert copy.steps["validate"] is order.steps["validate"]
    assert order.steps["request_payment"].fn.__name__ == "request_payment"
    assert with_overrides(order, {}) is order


def test_override_with_an_event_routes_the_other_way() -> None:
    final = run_workflow(
        order, "o1", {"amount": 30}, step_overrides={"request_payment": "declined"}
    )
    assert path(final)[-2:] == [("request_payment", "declined"), ("cancel_order", "cancelled")]


def test_override_with_emit_and_suspend() -> None:
    final = run_workflow(
        order,
        "o1",
        {"amount": 30},
        events=[(30, "approved")],
        step_overrides={
            "request_payment": hx.Suspend(),
            "await_payment": hx.Emit("paid", {"x": 1}),
        },
    )
    assert final.status is hx.Status.COMPLETED
    assert final.results["await_payment"] == {"x": 1}


def test_override_with_failures_then_success_uses_the_retry_policy() -> None:
    final = run_workflow(
        order,
        "o1",
        {"amount": 30},
        step_overrides={"request_payment": [ConnectionError, "approved"]},
    )
    attempts = [(e.step, e.attempt, e.error) for e in final.history if e.step == "request_payment"]
    assert attempts == [("request_payment", 1, "ConnectionError"), ("request_payment", 2, None)]


def test_override_with_a_permanent_failure_fails_the_instance() -> None:
    final = run_workflow(
        order,
        "o1",
        {"amount": 30},
        step_overrides={"request_payment": SimulatedFailure("provider down")},
    )
    assert final.status is hx.Status.FAILED
    assert final.error == hx.ErrorInfo(
        step="request_payment", type="SimulatedFailure", message="provider down", attempts=3
    )


def test_override_with_a_function() -> None:
    seen: list[int] = []

    def fake(ctx: hx.StepContext) -> str:
        seen.append(ctx.attempt)
        return "approved" if ctx.initial["amount"] < 100 else "declined"

    final = run_workflow(order, "o1", {"amount": 500}, step_overrides={"request_payment": fake})
    assert seen == [1]
    assert ("request_payment", "declined") in path(final)


def test_overrides_reach_steps_chosen_by_a_route() -> None:
    final = run_workflow(
        warehouse,
        "s1",
        {"items": 50},
        step_overrides={"send_big": hx.Emit("sent", {"by": "drone"})},
    )
    assert final.results["send_big"] == {"by": "drone"}


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"nope": "x"}, ValueError, r"names \['nope'\]"),
        ({"charge": "shipped"}, ValueError, "does not declare"),
        ({"charge": hx.Emit("lost")}, ValueError, "does not declare"),
        ({"charge": hx.Suspend(timeout=5)}, ValueError, "'timeout'"),
        ({"charge": []}, ValueError, "empty list"),
        ({"charge": 42}, TypeError, "give an event name"),
        ({"charge": KeyboardInterrupt}, TypeError, "Exception subclass"),
    ],
)
def test_bad_overrides_are_refused(
    overrides: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        run_workflow(order, "o1", {"amount": 30}, step_overrides=overrides)


# --- crashes ----------------------------------------------------------------------------------


def test_a_crash_loses_the_write_and_recovery_finishes_the_run() -> None:
    plain = trace_workflow(order, "o1", {"amount": 30}, events=[(10, "paid")])
    assert plain.writes == 6
    assert plain.crashes == ()
    for write in range(1, plain.writes + 1):
        PROVIDER.reset()
        run = trace_workflow(order, "o1", {"amount": 30}, events=[(10, "paid")], crash_at=write)
        assert run.instance.status is hx.Status.COMPLETED, write
        assert run.instance.results == plain.instance.results, write
        assert [c.point for c in run.crashes] == [CrashPoint(write)]
        assert PROVIDER.times_charged(run.instance.id) == 1


def test_the_crash_report_says_what_was_lost() -> None:
    run = trace_workflow(
        broken_order, "o1", {"amount": 30}, events=[(10, "paid")], crash_at=CrashPoint(5)
    )
    [report] = run.crashes
    assert report.describe() == (
        "the engine died before persisting write 5 (step 'charge' attempt 1 ended with 'charged')"
    )
    assert ("charge", 2) in run.attempts
    assert PROVIDER.times_charged(run.instance.id) == 2  # the bug the harness is for


def test_a_crash_while_waiting_for_the_webhook_keeps_the_event() -> None:
    # write 4 records the webhook's delivery; losing it means the client retries the resume
    run = trace_workflow(order, "o1", {"amount": 30}, events=[(10, "paid", {"n": 1})], crash_at=4)
    assert "step 'await_payment' attempt 1 ended with 'paid'" in run.crashes[0].describe()
    assert run.instance.results["await_payment"] == {"n": 1}
    assert [e.rejected for e in run.events] == [False]


def test_several_crashes_and_downtime() -> None:
    run = trace_workflow(
        order,
        "o1",
        {"amount": 30},
        events=[(10, "paid")],
        crash_at=[CrashPoint(2, downtime=600), 5, 1],
    )
    assert [c.write for c in run.crashes] == [1, 2, 5]
    assert run.instance.status is hx.Status.COMPLETED
    # the webhook came during the downtime: the client retried once the engine was back
    assert run.events[0].at == pytest.approx(10.001)
    assert run.instance.updated_at - run.instance.created_at > 600


def test_a_crash_named_by_step_loses_that_steps_outcome() -> None:
    run = trace_workflow(
        broken_order,
        "o1",
        {"amount": 30},
        events=[(10, "paid")],
        crash_at=CrashPoint(step="charge"),
    )
    [report] = run.crashes
    assert report.write == 5
    assert "step 'charge' attempt 1 ended with 'charged'" in report.describe()
    assert PROVIDER.times_charged(run.instance.id) == 2
    waiting = trace_workflow(
        order,
        "o1",
        {"amount": 30},
        events=[(10, "paid")],
        crash_at=CrashPoint(step="await_payment"),
    )
    assert "step 'await_payment' suspended" in waiting.crashes[0].describe()
    assert waiting.instance.status is hx.Status.COMPLETED


def test_a_crash_point_past_the_last_write_is_no_crash() -> None:
    run = trace_workflow(order, "o1", {"amount": 30}, events=[(10, "paid")], crash_at=99)
    assert run.crashes == ()


def test_crash_points_are_validated() -> None:
    with pytest.raises(ValueError, match="write must be an int >= 1"):
        CrashPoint(0)
    with pytest.raises(ValueError, match="downtime"):
        CrashPoint(1, downtime=-1)
    assert repr(CrashPoint(3)) == "CrashPoint(write=3)"
    assert repr(CrashPoint(3, downtime=60)) == "CrashPoint(write=3, downtime=60)"
    assert repr(CrashPoint(step="charge")) == "CrashPoint(step='charge')"
    with pytest.raises(ValueError, match="one of them"):
        CrashPoint(3, step="charge")
    with pytest.raises(ValueError, match="one of them"):
        CrashPoint()


def test_snapshots_and_telemetry_are_kept() -> None:
    run = trace_workflow(order, "o1", {"amount": 30}, events=[(10, "paid")], crash_at=2)
    revisions = [s.revision for s in run.snapshots]
    assert revisions == sorted(set(revisions))
    assert run.snapshots[-1] == run.instance
    names = [e.name for e in run.telemetry]
    assert names.count("workflow.start") == 1
    assert names.count("workflow.stop") == 1
    assert names.count("runner.init") == 2  # the first engine, and the one that recovered
