"""The pure core's Retry input, the graph-free Cancel/Retry and the prune rules."""

from __future__ import annotations

import msgspec
import pytest

import hephaestus as hx
from hephaestus._core._codec import encode_instance
from hephaestus._core._engine import (
    Cancel,
    CancelStep,
    Deliver,
    Recover,
    Retry,
    RunStep,
    Start,
    StepFailed,
    StepSucceeded,
    StepSuspended,
    TimerFired,
    apply,
    apply_without_graph,
    prunable,
    prune_statuses,
)

from .helpers import Driver, mk, of_type, workflow

SPLIT = mk("split")
LEFT = mk("left", retry=hx.Retry(max_attempts=2, initial=1.0))
RIGHT = mk("right", "ok", "timeout")
JOIN = mk("join")
FAN = workflow(
    SPLIT,
    {
        (SPLIT, "ok"): [LEFT, RIGHT],
        (LEFT, "ok"): JOIN,
        (RIGHT, "ok"): JOIN,
        (RIGHT, "timeout"): hx.Done,
        (JOIN, "ok"): hx.Done,
    },
)


def failed_fan() -> Driver:
    """split done; right suspended; left failed twice (its whole budget): FAILED."""
    d = Driver(FAN)
    d(Start())
    d(StepSucceeded(step="split", attempt=1, event="ok", results={"n": 1}))
    d(StepSuspended(step="right", attempt=1, timeout=None))
    d(StepFailed(step="left", attempt=1, error_type="Boom", message="no"))
    [timer] = d.instance.timers
    d.now += 1.0
    d(TimerFired(timer_id=timer.id))
    t = d(StepFailed(step="left", attempt=2, error_type="Boom", message="no"))
    assert d.status is hx.Status.FAILED
    assert of_type(t.commands, CancelStep) == []  # right was suspended, not running
    return d


def test_retry_reruns_the_failed_step_and_the_siblings_stopped_with_it() -> None:
    d = failed_fan()
    before = d.instance
    d.now += 5.0
    t = d(Retry())
    after = t.instance
    assert after.status is hx.Status.RUNNING
    assert after.error is None
    # left (failed for good) and right (suspended when it failed) run again, attempts go on
    assert of_type(t.commands, RunStep) == [
        RunStep(step="left", attempt=3),
        RunStep(step="right", attempt=2),
    ]
    assert after.completed == before.completed == ("split",)
    assert after.results == before.results
    assert after.history == before.history  # kept as it was; retry adds no attempt
    assert after.failures.get("left") is None  # a fresh retry budget
    # the retried step fails once: its policy retries it again (budget 2)
    t = d(StepFailed(step="left", attempt=3, error_type="Boom", message="no"))
    assert d.status is not hx.Status.FAILED
    assert [tm.step for tm in d.instance.timers if tm.kind == "retry"] == ["left"]


def test_a_retried_instance_completes_with_the_results_of_a_clean_run() -> None:
    d = failed_fan()
    d(Retry())
    d(StepSucceeded(step="left", attempt=3, event="ok", results={"v": 2}))
    d(StepSuspended(step="right", attempt=2, timeout=None))
    d(Deliver(event="ok", payload={"v": 3}))
    [run] = of_type(d.transitions[-1].commands, RunStep)
    assert run == RunStep(step="join", attempt=1)
    d(StepSucceeded(step="join", attempt=1, event="ok", results={"sum": 5}))
    assert d.status is hx.Status.COMPLETED
    assert d.instance.results == {
        "split": {"n": 1},
        "left": {"v": 2},
        "right": {"v": 3},
        "join": {"sum": 5},
    }
    assert [h.step for h in d.instance.history].count("split") == 1


def test_a_stale_outcome_of_the_attempt_before_the_retry_is_ignored() -> None:
    d = failed_fan()
    d(Retry())
    t = d(StepSucceeded(step="left", attempt=2, event="ok"))
    assert not t.changed


def test_retry_after_a_fail_fast_cancels_running_siblings_and_reruns_them() -> None:
    left = mk("left")  # no retry policy: its first failure is final
    wf = workflow(
        SPLIT,
        {
            (SPLIT, "ok"): [left, RIGHT],
            (left, "ok"): JOIN,
            (RIGHT, "ok"): JOIN,
            (RIGHT, "timeout"): hx.Done,
            (JOIN, "ok"): hx.Done,
        },
    )
    d = Driver(wf)
    d(Start())
    d(StepSucceeded(step="split", attempt=1, event="ok"))
    t = d(StepFailed(step="left", attempt=1, error_type="Boom", message="no"))
    assert d.status is hx.Status.FAILED
    assert of_type(t.commands, CancelStep) == [CancelStep(step="right")]
    t = d(Retry())
    assert of_type(t.commands, RunStep) == [
        RunStep(step="left", attempt=2),
        RunStep(step="right", attempt=2),
    ]


@pytest.mark.parametrize("kind", ["pending", "running", "completed", "cancelled"])
def test_retry_of_an_instance_that_has_not_failed_is_rejected_unchanged(kind: str) -> None:
    d = Driver(FAN)
    if kind != "pending":
        d(Start())
    if kind == "completed":
        only = mk("only")
        single = workflow(only, {(only, "ok"): hx.Done})
        d = Driver(single)
        d(Start())
        d(StepSucceeded(step="only", attempt=1, event="ok"))
    if kind == "cancelled":
        d(Cancel(reason="stop"))
    before = d.instance
    encoded = encode_instance(before)
    with pytest.raises(hx.EventRejected, match="only a failed instance can be retried"):
        apply(d.wf, before, Retry(), d.now)
    with pytest.raises(hx.EventRejected, match="only a failed instance can be retried"):
        apply_without_graph(before, Retry(), d.now)
    assert encode_instance(before) == encoded
    assert before.status.value == kind


def test_graph_free_cancel_and_retry_equal_apply() -> None:
    d = failed_fan()
    with_graph = apply(FAN, d.instance, Retry(), d.now + 1)
    without = apply_without_graph(d.instance, Retry(), d.now + 1)
    assert without.instance == with_graph.instance
    assert without.commands == with_graph.commands
    running = with_graph.instance
    with_graph = apply(FAN, running, Cancel(reason="r"), d.now + 2)
    without = apply_without_graph(running, Cancel(reason="r"), d.now + 2)
    assert without.instance == with_graph.instance
    assert without.commands == with_graph.commands
    assert without.instance.status is hx.Status.CANCELLED
    with pytest.raises(TypeError, match="Cancel or Retry"):
        apply_without_graph(running, Recover(), d.now)  # type: ignore[arg-type]


def test_prune_statuses() -> None:
    assert prune_statuses(None) == (hx.Status.COMPLETED, hx.Status.FAILED, hx.Status.CANCELLED)
    assert prune_statuses(hx.Status.FAILED) == (hx.Status.FAILED,)
    assert prune_statuses(["cancelled", hx.Status.CANCELLED]) == (hx.Status.CANCELLED,)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="only finished instances"):
        prune_statuses(hx.Status.WAITING)
    with pytest.raises(ValueError, match="status must be one of"):
        prune_statuses("sleepy")  # type: ignore[arg-type]


def test_prunable_is_strictly_older_than_the_cut_and_never_active() -> None:
    done = hx.Instance(id="a", workflow="w", version=1, status=hx.Status.COMPLETED, updated_at=10.0)
    every = prune_statuses(None)
    assert prunable(done, statuses=every, cut=10.5)
    assert not prunable(done, statuses=every, cut=10.0)
    assert not prunable(done, statuses=(hx.Status.FAILED,), cut=99.0)
    running = hx.Instance(id="b", workflow="w", version=1, status=hx.Status.RUNNING)
    assert not prunable(running, statuses=(hx.Status.RUNNING,), cut=99.0)


def test_a_failed_snapshot_that_records_no_failed_step_is_rejected() -> None:
    odd = hx.Instance(id="a", workflow="w", version=1, status=hx.Status.FAILED)
    with pytest.raises(hx.EventRejected, match="records no step that failed"):
        apply_without_graph(odd, Retry(), 1.0)
    named = msgspec.structs.replace(
        odd, error=hx.ErrorInfo(step="pay", type="E", message="m", attempts=1)
    )
    t = apply_without_graph(named, Retry(), 1.0)
    assert t.commands == (RunStep(step="pay", attempt=1),)
