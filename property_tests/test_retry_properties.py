"""Property: a retried instance ends as if the attempt that failed had succeeded.

A random workflow (the generator of test_engine_properties) runs in the pure
core with a fixed outcome per step: every step succeeds with a drawn event,
results and metadata, or suspends and is then resumed with them. Run B is
clean. Run A is the same except that one step B completed fails on every
attempt until the instance is FAILED; then it is retried (through ``apply``,
or as the command line does it, through ``apply_without_graph`` followed by the
``Recover`` of the next engine) and the step succeeds from then on. Both runs
must end with the same status, results, metadata and completed steps; no step
completed before the retry runs again after it, no step runs an attempt
number twice (``ctx.attempt`` keys idempotency), and the history only grows.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from test_engine_properties import PROPERTY_SETTINGS, Spec, workflows

import hephaestus as hx
from hephaestus._core._engine import (
    ArmTimer,
    CancelStep,
    Deliver,
    DisarmTimer,
    Input,
    Recover,
    Retry,
    RunStep,
    Start,
    StepFailed,
    StepSucceeded,
    StepSuspended,
    TimerFired,
    Transition,
    apply,
    apply_without_graph,
    new_instance,
)

Outcome = tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]  # kind, event, res, meta


class Run:
    """A minimal runtime around ``apply``: runs steps with fixed outcomes, fires timers."""

    def __init__(self, spec: Spec, outcomes: dict[str, Outcome], failing: str | None) -> None:
        self.spec = spec
        self.outcomes = outcomes
        self.failing = failing
        self.now = 1_000_000.0
        self.instance = new_instance(spec.workflow, "prop::r", initial=None, metadata=None, now=0)
        self.running: dict[str, int] = {}
        self.armed: dict[str, hx.Timer] = {}
        self.started: list[str] = []  # every RunStep, in order
        self.attempts_run: set[tuple[str, int]] = set()

    def feed(self, event: Input) -> Transition:
        t = apply(self.spec.workflow, self.instance, event, self.now)
        self.instance = t.instance
        self.carry_out(t)
        return t

    def carry_out(self, t: Transition) -> None:
        for c in t.commands:
            if isinstance(c, RunStep):
                # ctx.attempt never repeats for a step: idempotency keys rely on it
                assert (c.step, c.attempt) not in self.attempts_run, c
                self.attempts_run.add((c.step, c.attempt))
                self.running[c.step] = c.attempt
                self.started.append(c.step)
            elif isinstance(c, CancelStep):
                self.running.pop(c.step, None)
            elif isinstance(c, ArmTimer):
                self.armed[c.timer.id] = c.timer
            elif isinstance(c, DisarmTimer):
                self.armed.pop(c.timer_id, None)

    def settle(self, limit: int = 400) -> None:
        for _ in range(limit):
            if self.instance.status.is_terminal:
                return
            if self.running:
                step = sorted(self.running)[0]
                attempt = self.running.pop(step)
                kind, event, results, metadata = self.outcomes[step]
                if step == self.failing:
                    self.feed(
                        StepFailed(step=step, attempt=attempt, error_type="Boom", message="x")
                    )
                elif kind == "suspend":
                    self.feed(StepSuspended(step=step, attempt=attempt, timeout=None))
                else:
                    self.feed(
                        StepSucceeded(
                            step=step,
                            attempt=attempt,
                            event=event,
                            results=results,
                            metadata=metadata,
                        )
                    )
            elif self.instance.waiting:
                step = sorted(self.instance.waiting)[0]
                _, event, results, _ = self.outcomes[step]
                self.feed(Deliver(event=event, payload=results, step=step))
            elif self.armed:
                timer = min(self.armed.values(), key=lambda tm: (tm.deadline, tm.id))
                del self.armed[timer.id]
                self.now = max(self.now, timer.deadline)
                self.feed(TimerFired(timer_id=timer.id))
            else:
                raise AssertionError(f"stuck: {self.instance}")
        raise AssertionError(f"not terminal after {limit} inputs: {self.instance}")


@st.composite
def outcomes_for(draw: st.DrawFn, spec: Spec) -> dict[str, Outcome]:
    out: dict[str, Outcome] = {}
    for key in spec.keys:
        kind = draw(st.sampled_from(["succeed", "succeed", "suspend"]))
        event = draw(st.sampled_from(spec.events[key]))
        results = draw(
            st.none()
            | st.fixed_dictionaries({"route": st.sampled_from([0, 1, 2, -3])})  # valid choices
            | st.fixed_dictionaries({"v": st.integers(0, 9)})
        )
        metadata = draw(st.none() | st.fixed_dictionaries({f"m_{key}": st.integers(0, 3)}))
        out[key] = (kind, event, results, metadata)
    return out


@PROPERTY_SETTINGS
@given(data=st.data())
def test_a_retried_instance_ends_like_one_whose_failed_attempt_succeeded(
    data: st.DataObject,
) -> None:
    spec = data.draw(workflows(), label="workflow")
    outcomes = data.draw(outcomes_for(spec), label="outcomes")

    clean = Run(spec, outcomes, failing=None)
    clean.feed(Start())
    clean.settle()
    assert clean.instance.status is hx.Status.COMPLETED, clean.instance

    failing = data.draw(st.sampled_from(sorted(clean.instance.completed)), label="failing step")
    run = Run(spec, outcomes, failing=failing)
    run.feed(Start())
    run.settle()
    failed = run.instance
    assert failed.status is hx.Status.FAILED
    assert failed.error is not None
    assert failed.error.step == failing

    run.failing = None  # from now on the step succeeds
    already = len(run.started)
    run.now += data.draw(st.sampled_from([0.0, 60.0]), label="later")
    if data.draw(st.booleans(), label="from the command line"):
        # No engine holds the store: the graph-free retry is persisted, its commands go
        # nowhere, and the next engine's Recover runs what it re-opened.
        t = apply_without_graph(failed, Retry(), run.now)
        assert t.instance == apply(spec.workflow, failed, Retry(), run.now).instance
        run.instance = t.instance
        run.running.clear()
        run.armed.clear()
        run.attempts_run |= {(c.step, c.attempt) for c in t.commands if isinstance(c, RunStep)}
        run.feed(Recover())
    else:
        run.feed(Retry())
    retried = run.instance
    assert retried.status in (hx.Status.RUNNING, hx.Status.WAITING)
    assert retried.results == failed.results
    assert retried.history[: len(failed.history)] == failed.history
    run.settle()

    final, expected = run.instance, clean.instance
    assert final.status is expected.status
    assert final.results == expected.results
    assert final.metadata == expected.metadata
    assert set(final.completed) == set(expected.completed)
    assert final.history[: len(failed.history)] == failed.history
    assert not set(run.started[already:]) & set(failed.completed), "a completed step ran again"
    assert failing in run.started[already:]  # the failed step did run again
