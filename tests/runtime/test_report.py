"""``_runtime/_report.py``: telemetry is a table from the core's notes, not a snapshot diff."""

from __future__ import annotations

from typing import Any

import hephaestus as hx
from hephaestus._core._engine import (
    Deliver,
    Input,
    Start,
    StepFailed,
    StepSucceeded,
    StepSuspended,
    Transition,
    apply,
    new_instance,
)
from hephaestus._core._model import Instance
from hephaestus._runtime._report import report
from hephaestus._telemetry import Telemetry


def _step(key: str, *events: str, retry: hx.Retry | None = None) -> hx.Step:
    async def body(ctx: hx.StepContext) -> hx.StepResult:
        raise AssertionError("never run: the transitions are applied by hand")

    return hx.step(body, key=key, events=events, retry=retry)


split = _step("split", "l", "r")
left = _step("left", "go")
right = _step("right", "ok", retry=hx.Retry(max_attempts=2, initial=3.0))
WF = hx.Workflow(
    "fork",
    start=split,
    transitions={
        (split, "l"): left,
        (split, "r"): right,
        (left, "go"): hx.Done,
        (right, "ok"): hx.Done,
    },
    unique=hx.Unique("fork"),
)


def _events(instance: Instance, event: Input) -> tuple[Instance, list[tuple[Any, ...]]]:
    seen: list[hx.TelemetryEvent] = []
    transition: Transition = apply(WF, instance, event, 100.0)
    report(Telemetry([seen.append]), WF, event, transition, started={})
    return transition.instance, [
        (e.name, e.step, {k: v for k, v in e.metadata.items() if k != "version"}) for e in seen
    ]


def test_notes_become_the_documented_events_in_the_core_order() -> None:
    instance = new_instance(WF, "fork::a", initial=None, metadata=None, now=100.0)
    instance, _ = _events(instance, Start())
    instance, got = _events(instance, Deliver(event="go", dedupe_key="k"))
    assert got == [
        ("step.resume", None, {"event": "go", "queued": True}),
        ("workflow.transition", None, {"input": "Deliver", "status": "running", "revision": 3,
                                       "targets": []}),
    ]  # fmt: skip
    # "left" can no longer run: the queued event is dropped, and telemetry says so.
    instance, got = _events(instance, StepSucceeded(step="split", attempt=1, event="r"))
    assert [name for name, _, _ in got] == ["step.stop", "event.drop", "workflow.transition"]
    assert got[1] == ("event.drop", None, {"event": "go", "dedupe_key": "k"})
    instance, got = _events(
        instance, StepFailed(step="right", attempt=1, error_type="OSError", message="eh")
    )
    deadline = instance.timers[0].deadline
    assert got[0] == ("step.exception", "right", {"attempt": 1, "error": "OSError",
                                                   "message": "eh"})  # fmt: skip
    assert got[2] == ("step.retry", "right", {"deadline": deadline, "attempt": 2})


def test_a_suspended_step_taking_an_inbox_event_reports_suspend_resume_stop() -> None:
    instance = new_instance(WF, "fork::b", initial=None, metadata=None, now=100.0)
    instance, _ = _events(instance, Start())
    instance, _ = _events(instance, Deliver(event="go"))
    instance, _ = _events(instance, StepSucceeded(step="split", attempt=1, event="l"))
    instance, got = _events(instance, StepSuspended(step="left", attempt=1))
    assert [(name, step) for name, step, _ in got] == [
        ("step.suspend", "left"),
        ("step.resume", "left"),
        ("step.stop", "left"),
        ("workflow.transition", None),
        ("workflow.stop", None),
    ]
    assert got[-1][2] == {"status": "completed", "error": None}
