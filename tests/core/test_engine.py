"""The pure engine driven by hand: every input, every command, no Trio."""

from __future__ import annotations

from typing import Any

import pytest

import hephaestus as hx
from hephaestus._core._codec import encode_instance
from hephaestus._core._engine import (
    ArmTimer,
    Cancel,
    CancelStep,
    CancelTimer,
    Deliver,
    DisarmTimer,
    Finished,
    Input,
    Recover,
    RunStep,
    ScheduleResume,
    Start,
    StepFailed,
    StepSucceeded,
    StepSuspended,
    TimerFired,
    apply,
    live_steps,
    retry_delay,
    step_context,
)
from hephaestus._core._notes import Delivery, EventDropped

from .helpers import Driver, mk, of_type, workflow

# --- plain paths -------------------------------------------------------------------------------


def linear() -> hx.Workflow:
    a, b, c = mk("a"), mk("b"), mk("c")
    return workflow(a, {(a, "ok"): b, (b, "ok"): c, (c, "ok"): hx.Done})


def test_new_instance_is_pending() -> None:
    run = Driver(linear(), initial={"n": 1})
    assert run.status is hx.Status.PENDING
    assert run.instance.revision == 1
    assert run.instance.initial == {"n": 1}
    assert run.instance.created_at == run.instance.updated_at == 1000.0


def test_linear() -> None:
    run = Driver(linear())
    t = run(Start())
    assert t.commands == (RunStep(step="a", attempt=1),)
    assert run.status is hx.Status.RUNNING
    assert run.instance.active == ("a",)
    assert run.instance.revision == 2

    t = run(
        StepSucceeded(step="a", attempt=1, event="ok", results={"x": 1}, metadata={"trace": "t1"})
    )
    assert t.commands == (RunStep(step="b", attempt=1),)
    run.now = 1001.0
    assert run.instance.results == {"a": {"x": 1}}
    assert run.instance.metadata == {"trace": "t1"}
    assert run.instance.completed == ("a",)
    assert run.instance.active == ("b",)

    run(StepSucceeded(step="b", attempt=1, event="ok", results=None, metadata={"more": 2}))
    assert run.instance.metadata == {"trace": "t1", "more": 2}
    t = run(StepSucceeded(step="c", attempt=1, event="ok"))
    assert t.commands == (Finished(status=hx.Status.COMPLETED),)
    assert t.instance.status is hx.Status.COMPLETED
    assert t.instance.completed == ("a", "b", "c")
    assert t.instance.active == ()
    assert run.instance.error is None
    assert [(h.step, h.event, h.attempt) for h in run.instance.history] == [
        ("a", "ok", 1),
        ("b", "ok", 1),
        ("c", "ok", 1),
    ]
    assert run.instance.history[0].at == 1000.0
    assert run.instance.history[1].at == 1001.0
    assert run.instance.revision == 5


def test_start_twice_changes_nothing() -> None:
    run = Driver(linear())
    run(Start())
    t = run(Start())
    assert not t.changed
    assert t.commands == ()


def test_branching_takes_one_branch() -> None:
    a, b, c = mk("a", "left", "right"), mk("b"), mk("c")
    run = Driver(
        workflow(a, {(a, "left"): b, (a, "right"): c, (b, "ok"): hx.Done, (c, "ok"): hx.Done})
    )
    run(Start())
    t = run(StepSucceeded(step="a", attempt=1, event="right"))
    assert t.commands == (RunStep(step="c", attempt=1),)
    t = run(StepSucceeded(step="c", attempt=1, event="ok"))
    assert run.status is hx.Status.COMPLETED
    assert "b" not in run.instance.completed
    assert t.commands == (Finished(status=hx.Status.COMPLETED),)


def test_done_edge_ends_at_once() -> None:
    a, b = mk("a", "stop", "go"), mk("b")
    run = Driver(workflow(a, {(a, "stop"): hx.Done, (a, "go"): b, (b, "ok"): hx.Done}))
    run(Start())
    t = run(StepSucceeded(step="a", attempt=1, event="stop"))
    assert t.commands == (Finished(status=hx.Status.COMPLETED),)


def diamond() -> hx.Workflow:
    a, b, c, d = mk("a"), mk("b"), mk("c"), mk("d")
    return workflow(a, {(a, "ok"): [b, c], (b, "ok"): d, (c, "ok"): d, (d, "ok"): hx.Done})


def test_fan_out_then_fan_in_waits_for_both() -> None:
    run = Driver(diamond())
    run(Start())
    t = run(StepSucceeded(step="a", attempt=1, event="ok"))
    assert t.commands == (RunStep(step="b", attempt=1), RunStep(step="c", attempt=1))
    assert set(run.instance.active) == {"b", "c"}
    t = run(StepSucceeded(step="c", attempt=1, event="ok"))
    assert t.commands == ()  # d waits: b may still lead to it
    assert run.status is hx.Status.RUNNING
    assert "d" not in run.instance.active
    t = run(StepSucceeded(step="b", attempt=1, event="ok"))
    assert t.commands == (RunStep(step="d", attempt=1),)
    assert set(run.instance.fired["d"]) == {"b", "c"}
    run(StepSucceeded(step="d", attempt=1, event="ok"))
    assert run.instance.status is hx.Status.COMPLETED


def test_fan_in_waits_for_a_suspended_or_retrying_branch() -> None:
    a, c, d = mk("a"), mk("c"), mk("d")
    b = mk("b", "ok", retry=hx.Retry(max_attempts=2))
    run = Driver(workflow(a, {(a, "ok"): [b, c], (b, "ok"): d, (c, "ok"): d, (d, "ok"): hx.Done}))
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    run(
        StepFailed(step="b", attempt=1, error_type="Boom", message="first try")
    )  # b backs off: still live
    t = run(StepSucceeded(step="c", attempt=1, event="ok"))
    assert t.commands == ()
    assert run.status is hx.Status.WAITING
    (timer,) = run.instance.timers
    t = run(TimerFired(timer_id=timer.id))
    assert t.commands == (RunStep(step="b", attempt=2),)
    t = run(StepSucceeded(step="b", attempt=2, event="ok"))
    assert t.commands == (RunStep(step="d", attempt=1),)


def exclusive_join() -> hx.Workflow:
    a, b, c, d = mk("a", "left", "right"), mk("b"), mk("c"), mk("d")
    return workflow(
        a, {(a, "left"): b, (a, "right"): c, (b, "ok"): d, (c, "ok"): d, (d, "ok"): hx.Done}
    )


@pytest.mark.parametrize(("event", "branch"), [("left", "b"), ("right", "c")])
def test_join_after_exclusive_branches_activates(event: str, branch: str) -> None:
    run = Driver(exclusive_join())
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event=event))
    t = run(StepSucceeded(step=branch, attempt=1, event="ok"))
    assert t.commands == (RunStep(step="d", attempt=1),)
    run(StepSucceeded(step="d", attempt=1, event="ok"))
    assert run.status is hx.Status.COMPLETED


def test_join_when_a_parallel_branch_ends_elsewhere() -> None:
    a, b, d = mk("a"), mk("b"), mk("d")
    c = mk("c", "to_d", "skip")
    run = Driver(
        workflow(
            a,
            {
                (a, "ok"): [b, c],
                (b, "ok"): d,
                (c, "to_d"): d,
                (c, "skip"): hx.Done,
                (d, "ok"): hx.Done,
            },
        )
    )
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    assert run(StepSucceeded(step="b", attempt=1, event="ok")).commands == ()
    assert run(StepSucceeded(step="c", attempt=1, event="skip")).commands == (
        RunStep(step="d", attempt=1),
    )


def test_join_waits_for_a_predecessor_that_is_live_only_by_reachability() -> None:
    # a -> [b, x]; x -> y -> d; b -> d. When b completes, y has not started but x
    # may still lead to it: d must wait.
    a, b, x, y, d = mk("a"), mk("b"), mk("x"), mk("y"), mk("d")
    run = Driver(
        workflow(
            a, {(a, "ok"): [b, x], (b, "ok"): d, (x, "ok"): y, (y, "ok"): d, (d, "ok"): hx.Done}
        )
    )
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    assert run(StepSucceeded(step="b", attempt=1, event="ok")).commands == ()
    assert live_steps(run.wf, run.instance) == {"x", "y", "d"}
    assert run(StepSucceeded(step="x", attempt=1, event="ok")).commands == (
        RunStep(step="y", attempt=1),
    )
    assert run(StepSucceeded(step="y", attempt=1, event="ok")).commands == (
        RunStep(step="d", attempt=1),
    )


def test_target_config_reaches_run_step() -> None:
    a, b = mk("a"), mk("b")
    run = Driver(workflow(a, {(a, "ok"): hx.Target(b, {"region": "eu"}), (b, "ok"): hx.Done}))
    run(Start())
    t = run(StepSucceeded(step="a", attempt=1, event="ok"))
    assert t.commands == (RunStep(step="b", attempt=1, config={"region": "eu"}),)
    assert run.instance.configs == {"b": {"region": "eu"}}


# --- Route -------------------------------------------------------------------------------------


def routed(choose: Any, *, retry: hx.Retry | None = None) -> hx.Workflow:
    a = mk("a", "ok", retry=retry)
    b, c = mk("b"), mk("c")
    return workflow(
        a,
        {
            (a, "ok"): hx.Route(choose, [b, hx.Target(c, {"fast": True})]),
            (b, "ok"): hx.Done,
            (c, "ok"): hx.Done,
        },
    )


def test_route_valid_choice_sees_the_step_results() -> None:
    seen: list[hx.StepContext] = []

    def choose(ctx: hx.StepContext) -> Any:
        seen.append(ctx)
        return next(s for s in wf.steps.values() if s.key == ctx.results["a"]["pick"])

    wf = routed(choose)
    run = Driver(wf, initial={"n": 1})
    run(Start())
    t = run(StepSucceeded(step="a", attempt=1, event="ok", results={"pick": "c"}))
    assert t.commands == (
        RunStep(step="c", attempt=1, config={"fast": True}),
    )  # the Target's config
    (ctx,) = seen
    assert ctx.step == "a"
    assert ctx.attempt == 1
    assert ctx.initial == {"n": 1}
    assert ctx.instance_id == "order::abc"
    assert ctx.workflow == "wf"
    assert run.instance.fired == {"c": ("a",)}
    assert "b" not in run.instance.fired
    run(StepSucceeded(step="c", attempt=1, event="ok"))
    assert run.status is hx.Status.COMPLETED


def test_route_can_pick_several_and_a_bare_step() -> None:
    wf: hx.Workflow = routed(lambda ctx: [wf.steps["b"], wf.steps["c"], wf.steps["b"]])
    run = Driver(wf)
    run(Start())
    t = run(StepSucceeded(step="a", attempt=1, event="ok"))
    assert t.commands == (
        RunStep(step="b", attempt=1),
        RunStep(step="c", attempt=1, config={"fast": True}),
    )


@pytest.mark.parametrize(
    "choice",
    [
        lambda other: other,  # a step of the workflow outside the targets
        lambda other: mk("b"),  # same key, but not the workflow's step
        lambda other: "b",  # not a step at all
        lambda other: [],  # nothing
        lambda other: hx.Target(other),  # a Target outside the targets
    ],
)
def test_route_choice_outside_targets_fails_the_attempt(choice: Any) -> None:
    a, b, c, other = mk("a", "ok", "alt"), mk("b"), mk("c"), mk("other")
    wf = workflow(
        a,
        {
            (a, "ok"): hx.Route(lambda ctx: choice(other), [b, c]),
            (a, "alt"): other,
            (b, "ok"): hx.Done,
            (c, "ok"): hx.Done,
            (other, "ok"): hx.Done,
        },
    )
    run = Driver(wf)
    run(Start())
    t = run(StepSucceeded(step="a", attempt=1, event="ok"))
    assert run.status is hx.Status.FAILED
    assert t.commands == (Finished(status=hx.Status.FAILED),)
    error = run.instance.error
    assert error is not None
    assert error.step == "a"
    assert error.type == "RouteError"
    assert "('a', 'ok')" in error.message
    assert error.attempts == 1
    assert run.instance.completed == ()
    assert run.instance.results == {}
    assert run.instance.history[-1].event is None
    assert run.instance.history[-1].error == "RouteError"


def test_route_choose_raising_fails_the_attempt_and_is_retried() -> None:
    calls: list[int] = []

    def choose(ctx: hx.StepContext) -> Any:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise KeyError("no such region")
        return wf.steps["b"]

    wf = routed(choose, retry=hx.Retry(max_attempts=2, initial=1.0))
    run = Driver(wf)
    run(Start())
    t = run(StepSucceeded(step="a", attempt=1, event="ok"))
    (arm,) = of_type(t.commands, ArmTimer)
    assert arm.timer.kind == "retry"
    assert run.status is hx.Status.WAITING
    assert run.instance.history[-1].error == "RouteError"
    assert run.instance.error is None
    t = run(TimerFired(timer_id=arm.timer.id))
    assert t.commands == (RunStep(step="a", attempt=2),)
    t = run(StepSucceeded(step="a", attempt=2, event="ok"))
    assert t.commands == (RunStep(step="b", attempt=1),)
    assert calls == [1, 2]


def test_route_choose_raising_without_retry_names_the_exception() -> None:
    def choose(ctx: hx.StepContext) -> Any:
        raise RuntimeError("boom")

    run = Driver(routed(choose))
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    assert run.instance.error is not None
    assert "RuntimeError: boom" in run.instance.error.message


# --- suspension and events ----------------------------------------------------------------------


def approval(*, timeout_event: bool = True) -> hx.Workflow:
    events = ("approved", "rejected", "timeout") if timeout_event else ("approved", "rejected")
    a, wait, ship = mk("a"), mk("wait", *events), mk("ship")
    transitions: dict[Any, Any] = {
        (a, "ok"): wait,
        (wait, "approved"): ship,
        (wait, "rejected"): hx.Done,
        (ship, "ok"): hx.Done,
    }
    if timeout_event:
        transitions[(wait, "timeout")] = hx.Done
    return workflow(a, transitions)


def at_wait(wf: hx.Workflow | None = None) -> Driver:
    run = Driver(wf or approval())
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    return run


def test_suspend_then_resume() -> None:
    run = at_wait()
    t = run(StepSuspended(step="wait", attempt=1, timeout=None))
    assert t.commands == ()
    assert run.status is hx.Status.WAITING
    assert run.instance.waiting == {"wait": ("approved", "rejected", "timeout")}
    assert run.instance.active == ()
    t = run(Deliver(event="approved", payload={"by": "ann"}))
    assert t.reply == Delivery.DELIVERED
    assert t.commands == (RunStep(step="ship", attempt=1),)
    assert run.instance.results["wait"] == {"by": "ann"}
    assert run.instance.waiting == {}
    assert run.instance.history[-1].event == "approved"


def test_suspend_with_timeout_arms_a_timer_that_completes_with_timeout() -> None:
    run = at_wait()
    run.now = 2000.0
    t = run(StepSuspended(step="wait", attempt=1, timeout=30.0))
    (arm,) = t.commands
    assert isinstance(arm, ArmTimer)
    assert arm.timer.deadline == 2030.0
    assert arm.timer.kind == "timeout"
    assert arm.timer.step == "wait"
    assert run.instance.timers == (arm.timer,)
    run.now = 2030.0
    t = run(TimerFired(timer_id=arm.timer.id))
    assert t.commands == (Finished(status=hx.Status.COMPLETED),)
    assert run.instance.history[-1].event == "timeout"
    assert not run.instance.timers


def test_resume_before_the_timeout_disarms_it() -> None:
    run = at_wait()
    (arm,) = run(StepSuspended(step="wait", attempt=1, timeout=30.0)).commands
    assert isinstance(arm, ArmTimer)
    t = run(Deliver(event="rejected"))
    assert DisarmTimer(timer_id=arm.timer.id) in t.commands
    assert run.status is hx.Status.COMPLETED
    assert run.instance.timers == ()
    # the timer firing late changes nothing
    assert not run(TimerFired(timer_id=arm.timer.id)).changed


def test_suspend_with_timeout_without_declaring_timeout_fails_the_attempt() -> None:
    run = at_wait(approval(timeout_event=False))
    run(StepSuspended(step="wait", attempt=1, timeout=5.0))
    assert run.status is hx.Status.FAILED
    assert run.instance.error is not None
    assert run.instance.error.type == "UndeclaredEvent"
    assert "'timeout'" in run.instance.error.message


def test_step_ending_with_an_undeclared_event_fails_the_attempt() -> None:
    run = Driver(linear())
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="surprise"))
    error = run.instance.error
    assert error is not None
    assert error.type == "UndeclaredEvent"
    assert error.step == "a"
    assert "'surprise'" in error.message
    assert "'ok'" in error.message


def test_wait_step_sleeps_then_times_out() -> None:
    a, nap, b = mk("a"), hx.Wait(60, key="nap"), mk("b")
    run = Driver(workflow(a, {(a, "ok"): nap, (nap, "timeout"): b, (b, "ok"): hx.Done}))
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    (arm,) = run(StepSuspended(step="nap", attempt=1, timeout=60.0)).commands
    assert isinstance(arm, ArmTimer)
    assert arm.timer.deadline == run.now + 60
    assert run(TimerFired(timer_id=arm.timer.id)).commands == (RunStep(step="b", attempt=1),)


def test_early_events_wait_in_the_inbox_and_are_delivered_fifo() -> None:
    run = Driver(approval())
    run(Start())
    t1 = run(Deliver(event="rejected", payload={"n": 1}))  # "wait" has not even started
    t2 = run(Deliver(event="approved", payload={"n": 2}))
    assert t1.reply == t2.reply == Delivery.QUEUED
    assert t1.changed
    assert t1.commands == ()
    assert [e.event for e in run.instance.inbox] == ["rejected", "approved"]
    assert run.instance.inbox[0].payload == {"n": 1}
    assert run.instance.inbox[0].at == run.now
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    t = run(StepSuspended(step="wait", attempt=1, timeout=30.0))
    assert not of_type(t.commands, ArmTimer)  # delivered at once: no timeout timer
    assert run.instance.history[-1].event == "rejected"
    assert run.instance.results["wait"] == {"n": 1}
    # No step that can still run takes "approved" any more: it is dropped, with a note.
    assert run.instance.inbox == ()
    assert [note.event for note in t.notes if isinstance(note, EventDropped)] == ["approved"]
    assert run.status is hx.Status.COMPLETED


def test_inbox_event_for_a_named_step_goes_to_that_step_only() -> None:
    a, b, c = mk("a"), mk("b", "go"), mk("c", "go")
    run = Driver(workflow(a, {(a, "ok"): [b, c], (b, "go"): hx.Done, (c, "go"): hx.Done}))
    run(Start())
    run(Deliver(event="go", payload={"for": "c"}, step="c"))
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    run(StepSuspended(step="b", attempt=1, timeout=None))
    assert run.instance.waiting == {"b": ("go",)}
    assert len(run.instance.inbox) == 1
    run(StepSuspended(step="c", attempt=1, timeout=None))
    assert run.instance.results == {"a": {}, "c": {"for": "c"}}
    assert not run.instance.inbox


def test_dedupe_key_is_accepted_once() -> None:
    run = at_wait()
    run(StepSuspended(step="wait", attempt=1, timeout=None))
    first = run(Deliver(event="approved", payload=None, dedupe_key="pay-1"))
    assert first.reply == Delivery.DELIVERED
    assert run.instance.dedupe_keys == ("pay-1",)
    revision = run.instance.revision
    again = run(Deliver(event="approved", payload=None, dedupe_key="pay-1"))
    assert again.reply == Delivery.IGNORED
    assert not again.changed
    assert again.commands == ()
    assert run.instance.revision == revision


def test_dedupe_key_of_a_queued_event() -> None:
    run = Driver(approval())
    run(Start())
    assert run(Deliver(event="approved", dedupe_key="k")).reply == Delivery.QUEUED
    assert run(Deliver(event="approved", dedupe_key="k")).reply == Delivery.IGNORED
    assert len(run.instance.inbox) == 1
    assert run.instance.inbox[0].dedupe_key == "k"


def test_rejected_delivery_does_not_burn_its_dedupe_key() -> None:
    run = Driver(approval())
    run(Start())
    with pytest.raises(hx.EventRejected):
        run(Deliver(event="approved", step="a", dedupe_key="k"))
    assert run.instance.dedupe_keys == ()
    assert run(Deliver(event="approved", dedupe_key="k")).reply == Delivery.QUEUED


def test_undeclared_event_is_rejected() -> None:
    run = at_wait()
    run(StepSuspended(step="wait", attempt=1, timeout=None))
    with pytest.raises(hx.UndeclaredEvent, match="'nonsense'") as info:
        run(Deliver(event="nonsense"))
    assert isinstance(info.value, hx.EventRejected)
    assert "order::abc" in str(info.value)
    with pytest.raises(hx.UndeclaredEvent, match="'ok'"):
        run(Deliver(event="ok", step="wait"))  # declared elsewhere, not by the named step


def test_event_of_a_completed_step_is_rejected_but_is_not_undeclared() -> None:
    a, b = mk("a", "ok", "late"), mk("b")
    run = Driver(workflow(a, {(a, "ok"): b, (a, "late"): hx.Done, (b, "ok"): hx.Done}))
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    with pytest.raises(hx.EventRejected, match="cannot be accepted") as info:
        run(Deliver(event="late"))
    assert not isinstance(info.value, hx.UndeclaredEvent)


def test_event_of_a_dead_step_is_rejected() -> None:
    run = at_wait(exclusive_join_with_events())
    with pytest.raises(hx.EventRejected, match="cannot be accepted"):
        run(Deliver(event="poke"))  # only c declares it, and the run went left


def exclusive_join_with_events() -> hx.Workflow:
    a, b, c, wait = mk("a", "ok", "right"), mk("b"), mk("c", "poke"), mk("wait", "approved")
    return workflow(
        a,
        {
            (a, "ok"): wait,
            (a, "right"): c,
            (wait, "approved"): b,
            (c, "poke"): b,
            (b, "ok"): hx.Done,
        },
    )


def test_unknown_step_is_rejected() -> None:
    run = at_wait()
    with pytest.raises(hx.EventRejected, match="no step 'nope'"):
        run(Deliver(event="approved", step="nope"))


def two_waiters() -> hx.Workflow:
    a, b, c = mk("a"), mk("b", "go"), mk("c", "go")
    return workflow(a, {(a, "ok"): [b, c], (b, "go"): hx.Done, (c, "go"): hx.Done})


def test_several_suspended_steps_need_step() -> None:
    run = Driver(two_waiters())
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    run(StepSuspended(step="b", attempt=1, timeout=None))
    run(StepSuspended(step="c", attempt=1, timeout=None))
    with pytest.raises(hx.EventRejected, match=r"step=") as info:
        run(Deliver(event="go"))
    assert "'b'" in str(info.value)
    assert "'c'" in str(info.value)
    run(Deliver(event="go", payload={"x": 1}, step="c"))
    assert run.instance.completed == ("a", "c")
    assert set(run.instance.waiting) == {"b"}
    assert run(Deliver(event="go")).reply == Delivery.DELIVERED  # one waiter left: no step= needed
    assert run.status is hx.Status.COMPLETED


def test_delivery_on_terminal_instance_is_rejected() -> None:
    run = Driver(linear())
    run(Start())
    run(Cancel())
    with pytest.raises(hx.EventRejected, match="cancelled"):
        run(Deliver(event="ok"))


# --- retries -----------------------------------------------------------------------------------


def test_retry_then_success() -> None:
    a = mk("a", retry=hx.Retry(max_attempts=3, backoff="exponential", initial=2.0))
    b = mk("b")
    run = Driver(workflow(a, {(a, "ok"): b, (b, "ok"): hx.Done}))
    run(Start())
    run.now = 1010.0
    t = run(StepFailed(step="a", attempt=1, error_type="ValueError", message="bad input"))
    (arm,) = t.commands
    assert isinstance(arm, ArmTimer)
    assert arm.timer.kind == "retry"
    assert arm.timer.step == "a"
    assert arm.timer.deadline == 1012.0  # now + initial
    assert run.status is hx.Status.WAITING
    assert run.instance.retrying == ("a",)
    entry = run.instance.history[-1]
    assert (entry.step, entry.event, entry.attempt, entry.error) == ("a", None, 1, "ValueError")

    run.now = 1012.0
    assert run(TimerFired(timer_id=arm.timer.id)).commands == (RunStep(step="a", attempt=2),)
    assert run.instance.status is hx.Status.RUNNING
    assert run.instance.timers == ()
    run.now = 1013.0
    (arm2,) = run(
        StepFailed(step="a", attempt=2, error_type="ValueError", message="again")
    ).commands
    assert isinstance(arm2, ArmTimer)
    assert arm2.timer.deadline == 1013.0 + 4.0
    assert arm2.timer.id != arm.timer.id
    run(TimerFired(timer_id=arm2.timer.id))
    t = run(StepSucceeded(step="a", attempt=3, event="ok"))
    assert t.commands == (RunStep(step="b", attempt=1),)
    assert [h.attempt for h in run.instance.history] == [1, 2, 3]


def test_retries_exhausted_fail_the_instance_and_cancel_siblings() -> None:
    a = mk("a")
    b = mk("b", retry=hx.Retry(max_attempts=2, backoff="constant", initial=1.0))
    c, d = mk("c"), mk("d", "ok", "timeout")
    run = Driver(
        workflow(
            a,
            {
                (a, "ok"): [b, c, d],
                (b, "ok"): hx.Done,
                (c, "ok"): hx.Done,
                (d, "ok"): hx.Done,
                (d, "timeout"): hx.Done,
            },
        )
    )
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    (d_timer,) = run(StepSuspended(step="d", attempt=1, timeout=100.0)).commands
    assert isinstance(d_timer, ArmTimer)
    (retry,) = run(StepFailed(step="b", attempt=1, error_type="IOError", message="disk")).commands
    assert isinstance(retry, ArmTimer)
    run(TimerFired(timer_id=retry.timer.id))
    t = run(StepFailed(step="b", attempt=2, error_type="IOError", message="disk still"))
    assert run.status is hx.Status.FAILED
    assert run.instance.error == hx.ErrorInfo(
        step="b", type="IOError", message="disk still", attempts=2
    )
    assert CancelStep(step="c") in t.commands
    assert DisarmTimer(timer_id=d_timer.timer.id) in t.commands
    assert t.commands[-1] == Finished(status=hx.Status.FAILED)
    assert run.instance.active == ()
    assert run.instance.waiting == {}
    assert run.instance.timers == ()
    # the cancelled sibling reporting late changes nothing
    assert not run(StepSucceeded(step="c", attempt=1, event="ok")).changed


def test_no_retry_policy_fails_at_once() -> None:
    run = Driver(linear())
    run(Start())
    t = run(StepFailed(step="a", attempt=1, error_type="KeyError", message="'x'"))
    assert t.commands == (Finished(status=hx.Status.FAILED),)
    assert run.instance.error == hx.ErrorInfo(step="a", type="KeyError", message="'x'", attempts=1)


@pytest.mark.parametrize(
    ("policy", "delays"),
    [
        (hx.Retry(max_attempts=5, initial=1.0, max_backoff=5.0), [1.0, 2.0, 4.0, 5.0]),
        (hx.Retry(max_attempts=4, backoff="linear", initial=3.0), [3.0, 6.0, 9.0]),
        (hx.Retry(max_attempts=3, backoff="constant", initial=0.5), [0.5, 0.5]),
    ],
)
def test_retry_delay_arithmetic(policy: hx.Retry, delays: list[float]) -> None:
    s = mk("s", retry=policy)
    got = [retry_delay(s, "order::abc", n) for n in range(1, policy.max_attempts + 1)]
    assert got == [*delays, None]


def test_jitter_is_deterministic_and_within_half_to_full_delay() -> None:
    s = mk("s", retry=hx.Retry(max_attempts=10, initial=8.0, max_backoff=1000.0, jitter=True))
    seen = set()
    for n in range(1, 10):
        delay = min(8.0 * 2 ** (n - 1), 1000.0)
        for i in range(50):
            jittered = retry_delay(s, f"order::{i}", n)
            assert jittered is not None
            assert delay / 2 <= jittered <= delay
            assert retry_delay(s, f"order::{i}", n) == jittered
            seen.add(jittered / delay)
    assert len(seen) > 100  # really spread, not a constant factor
    assert retry_delay(s, "order::1", 10) is None


def test_jittered_retry_timer_uses_the_jittered_delay() -> None:
    a = mk("a", retry=hx.Retry(max_attempts=2, initial=10.0, jitter=True))
    run = Driver(workflow(a, {(a, "ok"): hx.Done}))
    run(Start())
    (arm,) = run(StepFailed(step="a", attempt=1, error_type="E", message="m")).commands
    assert isinstance(arm, ArmTimer)
    assert arm.timer.deadline == run.now + retry_delay(a, "order::abc", 1)  # type: ignore[operator]
    assert run.now + 5.0 <= arm.timer.deadline <= run.now + 10.0


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_stops_everything() -> None:
    a, b, c = mk("a"), mk("b", "go", "timeout"), mk("c")
    run = Driver(
        workflow(
            a, {(a, "ok"): [b, c], (b, "go"): hx.Done, (b, "timeout"): hx.Done, (c, "ok"): hx.Done}
        )
    )
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    run(StepSuspended(step="b", attempt=1, timeout=None))
    (sr,) = run(ScheduleResume(step="b", delay=50.0)).commands
    assert isinstance(sr, ArmTimer)
    t = run(Cancel(reason="customer asked"))
    assert set(t.commands) == {
        CancelStep(step="c"),
        DisarmTimer(timer_id=sr.timer.id),
        Finished(status=hx.Status.CANCELLED),
    }
    assert t.commands[-1] == Finished(status=hx.Status.CANCELLED)
    assert run.status is hx.Status.CANCELLED
    assert run.instance.cancel_reason == "customer asked"
    assert run.instance.active == ()
    assert run.instance.waiting == {}
    assert run.instance.timers == ()


def test_cancel_is_idempotent_on_a_cancelled_instance() -> None:
    run = Driver(linear())
    run(Start())
    run(Cancel(reason="first"))
    t = run(Cancel(reason="second"))
    assert not t.changed
    assert t.commands == ()
    assert run.instance.cancel_reason == "first"


def test_cancel_a_pending_instance() -> None:
    run = Driver(linear())
    t = run(Cancel())
    assert t.commands == (Finished(status=hx.Status.CANCELLED),)
    assert not run(Start()).changed


def test_cancel_rejected_on_completed_and_failed() -> None:
    done = Driver(linear())
    done(Start())
    done(StepSucceeded(step="a", attempt=1, event="ok"))
    done(StepSucceeded(step="b", attempt=1, event="ok"))
    done(StepSucceeded(step="c", attempt=1, event="ok"))
    with pytest.raises(hx.EventRejected, match="completed"):
        done(Cancel())
    failed = Driver(linear())
    failed(Start())
    failed(StepFailed(step="a", attempt=1, error_type="E", message="m"))
    with pytest.raises(hx.EventRejected, match="failed"):
        failed(Cancel())


# --- schedule_resume / cancel_timer --------------------------------------------------------------


def test_schedule_resume_fires_timeout_on_the_suspended_step() -> None:
    run = at_wait()
    run(StepSuspended(step="wait", attempt=1, timeout=None))
    t = run(ScheduleResume(step="wait", delay=15.0))
    (arm,) = t.commands
    assert isinstance(arm, ArmTimer)
    assert t.reply == arm.timer.id
    assert arm.timer.kind == "resume"
    assert arm.timer.deadline == run.now + 15.0
    t = run(TimerFired(timer_id=arm.timer.id))
    assert run.instance.history[-1].event == "timeout"
    assert run.status is hx.Status.COMPLETED


def test_schedule_resume_before_the_step_suspends() -> None:
    run = Driver(approval())
    run(Start())
    timer_id = run(ScheduleResume(step="wait", delay=5.0)).reply
    assert isinstance(timer_id, str)
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    run(StepSuspended(step="wait", attempt=1, timeout=None))
    run(TimerFired(timer_id=timer_id))
    assert run.instance.history[-1].event == "timeout"


def test_cancel_timer() -> None:
    run = at_wait()
    run(StepSuspended(step="wait", attempt=1, timeout=None))
    timer_id = run(ScheduleResume(step="wait", delay=15.0)).reply
    assert isinstance(timer_id, str)
    t = run(CancelTimer(timer_id=timer_id))
    assert t.reply is True
    assert t.commands == (DisarmTimer(timer_id=timer_id),)
    assert run.instance.timers == ()
    assert run.status is hx.Status.WAITING
    again = run(CancelTimer(timer_id=timer_id))
    assert again.reply is False
    assert not again.changed
    assert not run(TimerFired(timer_id=timer_id)).changed


@pytest.mark.parametrize(
    ("step", "error", "needle"),
    [
        ("nope", hx.EventRejected, "no step 'nope'"),
        ("ship", hx.UndeclaredEvent, "'timeout'"),
        ("a", hx.EventRejected, "already completed"),
    ],
)
def test_schedule_resume_rejections(step: str, error: type[Exception], needle: str) -> None:
    a, wait, ship = mk("a", "ok"), mk("wait", "go", "timeout"), mk("ship")
    run = Driver(
        workflow(
            a, {(a, "ok"): wait, (wait, "go"): ship, (wait, "timeout"): ship, (ship, "ok"): hx.Done}
        )
    )
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    if step == "a":  # make "a" a step that declares timeout? it does not: use a completed one
        step = "wait"
        run(StepSuspended(step="wait", attempt=1, timeout=None))
        run(Deliver(event="go"))
    with pytest.raises(error, match=needle):
        run(ScheduleResume(step=step, delay=1.0))


def test_schedule_resume_on_terminal_instance_is_rejected() -> None:
    run = at_wait()
    run(Cancel())
    with pytest.raises(hx.EventRejected, match="cancelled"):
        run(ScheduleResume(step="wait", delay=1.0))


# --- stale inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stale",
    [
        StepSucceeded(step="a", attempt=2, event="ok"),
        StepSucceeded(step="a", attempt=0, event="ok"),
        StepFailed(step="a", attempt=7, error_type="E", message="m"),
        StepSuspended(step="a", attempt=3, timeout=None),
        StepSucceeded(step="b", attempt=1, event="ok"),  # not running
        TimerFired(timer_id="t999"),
    ],
)
def test_stale_inputs_are_ignored(stale: Input) -> None:
    run = Driver(linear())
    run(Start())
    before = run.instance
    t = run(stale)
    assert not t.changed
    assert t.commands == ()
    assert run.instance is before


@pytest.mark.parametrize(
    "late",
    [
        StepSucceeded(step="b", attempt=1, event="ok"),
        StepFailed(step="b", attempt=1, error_type="E", message="m"),
        StepSuspended(step="b", attempt=1, timeout=5.0),
        TimerFired(timer_id="t1"),
        Recover(),
        Start(),
        CancelTimer(timer_id="t1"),
    ],
)
def test_inputs_after_cancel_are_ignored(late: Input) -> None:
    run = Driver(linear())
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    run(Cancel())
    before = run.instance
    t = run(late)
    assert not t.changed
    assert t.commands == ()
    assert run.instance is before


# --- recover -----------------------------------------------------------------------------------


def test_recover_reruns_running_steps_and_rearms_every_timer() -> None:
    a = mk("a")
    b = mk("b", retry=hx.Retry(max_attempts=3))
    c, d = mk("c"), mk("d", "go", "timeout")
    run = Driver(
        workflow(
            a,
            {
                (a, "ok"): [b, c, d],
                (b, "ok"): hx.Done,
                (c, "ok"): hx.Done,
                (d, "go"): hx.Done,
                (d, "timeout"): hx.Done,
            },
        )
    )
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    (retry,) = run(StepFailed(step="b", attempt=1, error_type="E", message="m")).commands
    (timeout,) = run(StepSuspended(step="d", attempt=1, timeout=60.0)).commands
    resume = run(ScheduleResume(step="d", delay=5.0)).reply
    assert isinstance(retry, ArmTimer)
    assert isinstance(timeout, ArmTimer)
    timers = run.instance.timers
    assert {t.id for t in timers} == {retry.timer.id, timeout.timer.id, resume}

    t = run(Recover())
    assert t.changed
    assert of_type(t.commands, RunStep) == [
        RunStep(step="c", attempt=2)
    ]  # only the running one, attempt+1
    assert [c.timer for c in of_type(t.commands, ArmTimer)] == list(timers)
    assert run.instance.timers == timers
    assert run.instance.waiting == {"d": d.events}
    # the pre-crash attempt reporting late is stale; the new one counts
    assert not run(StepSucceeded(step="c", attempt=1, event="ok")).changed
    assert run(StepSucceeded(step="c", attempt=2, event="ok")).changed
    assert run.instance.history[-1].attempt == 2


def test_recover_of_a_waiting_instance_only_rearms() -> None:
    run = at_wait()
    (arm,) = run(StepSuspended(step="wait", attempt=1, timeout=30.0)).commands
    t = run(Recover())
    assert t.commands == (arm,)
    assert not t.changed


def test_recover_of_a_pending_instance_starts_it() -> None:
    run = Driver(linear())
    t = run(Recover())
    assert t.commands == (RunStep(step="a", attempt=1),)
    assert run.status is hx.Status.RUNNING


def test_recover_of_a_terminal_instance_does_nothing() -> None:
    run = Driver(linear())
    run(Start())
    run(StepFailed(step="a", attempt=1, error_type="E", message="m"))
    t = run(Recover())
    assert not t.changed
    assert t.commands == ()


def test_an_attempt_cut_short_by_a_crash_uses_up_no_retry() -> None:
    a = mk("a", retry=hx.Retry(max_attempts=2, initial=1.0))
    run = Driver(workflow(a, {(a, "ok"): hx.Done}))
    run(Start())
    assert run(Recover()).commands == (
        RunStep(step="a", attempt=2),
    )  # attempt 1 died with the engine
    (arm,) = run(
        StepFailed(step="a", attempt=2, error_type="E", message="m")
    ).commands  # the first failure: one retry left
    assert isinstance(arm, ArmTimer)
    assert arm.timer.deadline == run.now + 1.0
    assert run(TimerFired(timer_id=arm.timer.id)).commands == (RunStep(step="a", attempt=3),)
    run(StepFailed(step="a", attempt=3, error_type="E", message="m"))
    assert run.status is hx.Status.FAILED
    assert run.instance.error is not None
    assert run.instance.error.attempts == 3
    assert run.instance.failures == {"a": 2}


# --- rejections leave the instance untouched ---------------------------------------------------


def rejected_cases() -> list[tuple[str, Input]]:
    return [
        ("undeclared", Deliver(event="nonsense")),
        ("undeclared for step", Deliver(event="ok", step="wait")),
        ("unknown step", Deliver(event="approved", step="ghost")),
        ("completed step", Deliver(event="ok", step="a")),
        ("schedule unknown step", ScheduleResume(step="ghost", delay=1.0)),
        ("schedule no timeout", ScheduleResume(step="ship", delay=1.0)),
    ]


@pytest.mark.parametrize(("name", "event"), rejected_cases(), ids=[n for n, _ in rejected_cases()])
def test_rejections_leave_the_instance_identical(name: str, event: Input) -> None:
    run = at_wait()
    run(StepSuspended(step="wait", attempt=1, timeout=30.0))
    before = run.instance
    encoded = encode_instance(before)
    with pytest.raises(hx.EventRejected):
        apply(run.wf, before, event, run.now + 1)
    assert encode_instance(before) == encoded
    assert run.instance is before
    assert before.revision == 4
    # and the instance still works: the next real input gets revision + 1
    run(Deliver(event="approved"))
    assert run.instance.revision == 5


def test_rejections_on_terminal_instances() -> None:
    run = Driver(linear())
    run(Start())
    run(StepFailed(step="a", attempt=1, error_type="E", message="m"))
    before = run.instance
    encoded = encode_instance(before)
    for event in (Deliver(event="ok"), Cancel(), ScheduleResume(step="a", delay=1.0)):
        with pytest.raises(hx.EventRejected):
            run(event)
    assert run.instance is before
    assert encode_instance(before) == encoded


def test_cancel_timer_does_not_drop_a_retry_backoff() -> None:
    a, c = mk("a"), mk("c")
    b = mk("b", retry=hx.Retry(max_attempts=3))
    run = Driver(workflow(a, {(a, "ok"): b, (b, "ok"): c, (c, "ok"): hx.Done}))
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    (arm,) = run(StepFailed(step="b", attempt=1, error_type="E", message="m")).commands
    assert isinstance(arm, ArmTimer)
    t = run(CancelTimer(timer_id=arm.timer.id))
    assert t.reply is False
    assert not t.changed
    assert run.status is hx.Status.WAITING
    assert run.instance.retrying == ("b",)
    assert run(TimerFired(timer_id=arm.timer.id)).commands == (RunStep(step="b", attempt=2),)


def test_schedule_resume_on_a_pending_instance_does_not_block_its_start() -> None:
    run = Driver(approval())
    timer_id = run(ScheduleResume(step="wait", delay=5.0)).reply
    assert isinstance(timer_id, str)
    assert run.status is hx.Status.PENDING
    assert run(Start()).commands == (RunStep(step="a", attempt=1),)
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    run(StepSuspended(step="wait", attempt=1, timeout=None))
    run(TimerFired(timer_id=timer_id))
    assert run.instance.history[-1].event == "timeout"


def test_early_event_on_a_pending_instance_is_queued() -> None:
    run = Driver(approval())
    t = run(Deliver(event="approved", payload={"n": 1}))
    assert t.reply == Delivery.QUEUED
    assert run.status is hx.Status.PENDING
    assert live_steps(run.wf, run.instance) == {"a", "wait", "ship"}
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    assert run(StepSuspended(step="wait", attempt=1, timeout=None)).commands == (
        RunStep(step="ship", attempt=1),
    )
    with pytest.raises(hx.UndeclaredEvent):
        Driver(approval())(Deliver(event="nonsense"))


def test_cancel_timer_does_not_drop_a_wait_timeout() -> None:
    nap = hx.Wait(30, key="nap")
    run = Driver(workflow(nap, {(nap, "timeout"): hx.Done}))
    run(Start())
    (arm,) = run(StepSuspended(step="nap", attempt=1, timeout=30.0)).commands
    assert isinstance(arm, ArmTimer)
    t = run(CancelTimer(timer_id=arm.timer.id))
    assert t.reply is False
    assert not t.changed
    assert run(TimerFired(timer_id=arm.timer.id)).instance.status is hx.Status.COMPLETED


def test_step_context_is_a_copy_that_step_code_cannot_use_to_change_the_instance() -> None:
    a, b = mk("a"), mk("b")
    run = Driver(workflow(a, {(a, "ok"): b, (b, "ok"): hx.Done}))
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok", results={"items": [1, 2]}))
    ctx = step_context(run.wf, run.instance, "b", 1)
    ctx.results["a"]["items"].append(3)  # nested data is the step's own copy
    assert run.instance.results["a"] == {"items": [1, 2]}
    with pytest.raises(TypeError):
        ctx.results["a"]["extra"] = 1  # type: ignore[index]
