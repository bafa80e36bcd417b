"""assert_workflow_invariants: a ready-made property test for any workflow."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal

import hypothesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st

from .._core._model import Instance, Status
from .._core._workflow import Workflow
from ._crash import CrashPoint
from ._run import ScheduledEvent, WorkflowRun, terminal_index, trace_workflow
from ._strategies import event_schedules, outcomes
from ._stubs import StepOverride


def run_problems(run: WorkflowRun) -> list[str]:
    """Return what is wrong with one run: it must end, and nothing may happen after that."""
    problems: list[str] = []
    final = run.instance
    if not final.status.is_terminal:
        problems.append(f"the instance ended {final.status.value}, not terminal")
    end = terminal_index(run.telemetry, final.id)
    if end is not None:
        late = [
            f"{event.name} of {event.step!r}"
            for event in run.telemetry[end + 1 :]
            if event.name.startswith("step.") and event.instance_id == final.id
        ]
        if late:
            problems.append(
                f"steps ran after the instance became {final.status.value}: {', '.join(late)}"
            )
    previous: Instance | None = None
    for snapshot in run.snapshots:
        if snapshot.id != final.id:
            continue  # a child's (hx.SubWorkflow): it has a history of its own
        if previous is not None:
            if previous.status.is_terminal:
                problems.append(
                    f"revision {snapshot.revision} ({snapshot.status.value}) was written after "
                    f"the instance became {previous.status.value} at revision "
                    f"{previous.revision}"
                )
                break
            if snapshot.revision <= previous.revision:
                problems.append(f"revision went from {previous.revision} to {snapshot.revision}")
            if snapshot.history[: len(previous.history)] != previous.history:
                problems.append(f"history was rewritten at revision {snapshot.revision}")
            lost = set(previous.completed) - set(snapshot.completed)
            if lost:
                problems.append(
                    f"completed steps {sorted(lost)!r} were forgotten at revision "
                    f"{snapshot.revision}"
                )
        previous = snapshot
    return problems


def _decisions(instance: Instance) -> dict[str, str]:
    """Return the event each completed step ended with."""
    return {entry.step: entry.event for entry in instance.history if entry.event is not None}


def _suspended(run: WorkflowRun) -> set[str]:
    """Return the steps that were suspended at some point (outside events or timers decide)."""
    own = run.instance.id
    found = {key for snapshot in run.snapshots if snapshot.id == own for key in snapshot.waiting}
    found.update(
        e.step
        for e in run.telemetry
        if e.name == "step.suspend" and e.step and e.instance_id == own
    )
    return found


def compare_runs(plain: WorkflowRun, crashed: WorkflowRun) -> list[str]:
    """Return how the crashed-and-recovered run ended differently from the crash-free one.

    A crash re-runs the steps that were in flight, so they finish later. When
    that lets an outside event or a timer decide a suspended step differently
    (the webhook now beats the timeout), the runs may rightly take different
    paths, and a scheduled cancellation may come before or after the end.
    So the rules are: the status is the same (unless one run was cancelled);
    a step that decided by its own code decided the same; a step that
    completed in both runs the same way has the same results; and when no
    step decided differently, a COMPLETED run completed the same steps.
    (Which siblings finish before a failure or a cancellation depends on
    timing, so FAILED and CANCELLED runs are not compared step by step.)
    """
    a, b = plain.instance, crashed.instance
    problems: list[str] = []
    cancelled = Status.CANCELLED in (a.status, b.status)  # a scheduled cancel raced the end
    if a.status is not b.status and not cancelled:
        problems.append(f"status: {b.status.value} after the crash, {a.status.value} without")
    decided_a, decided_b = _decisions(a), _decisions(b)
    races = _suspended(plain) | _suspended(crashed)
    common = [key for key in a.completed if key in set(b.completed)]
    diverged = {key for key in common if decided_a.get(key) != decided_b.get(key)}
    for key in common:
        if key in diverged:
            if key not in races:
                problems.append(
                    f"step {key!r} ended with {decided_b.get(key)!r} after the "
                    f"crash, {decided_a.get(key)!r} without"
                )
        elif a.results.get(key) != b.results.get(key):
            problems.append(
                f"results[{key!r}]: {b.results.get(key)!r} after the crash, "
                f"{a.results.get(key)!r} without"
            )
    if (
        not diverged
        and a.status is b.status
        and a.status is Status.COMPLETED
        and set(a.completed) != set(b.completed)
    ):
        problems.append(
            f"completed steps: {sorted(b.completed)!r} after the crash, "
            f"{sorted(a.completed)!r} without"
        )
    return problems


def _attempts(run: WorkflowRun) -> str:
    return " ".join(f"{step}#{attempt}" for step, attempt in run.attempts) or "none"


def assert_workflow_invariants(
    workflow: Workflow,
    *,
    value: str = "invariants",
    initial: Mapping[str, Any] | st.SearchStrategy[Mapping[str, Any]] | None = None,
    steps: Collection[str] | None = None,
    failures: bool | Literal["transient"] = True,
    events: st.SearchStrategy[list[ScheduledEvent]] | None = None,
    before_run: Callable[[], object] | None = None,
    max_examples: int | None = None,
    settings: hypothesis.settings | None = None,
) -> None:
    """Check ``workflow`` against generated step outcomes, event schedules and crashes.

    For each example it runs the instance once without a crash, then once per
    snapshot write that run made, crashing just before that write and
    recovering on a new engine (so every crash point is tried), and checks
    that:

    - every run terminates (no :class:`WorkflowStuck`);
    - no step starts or reports after the instance became terminal, and
      nothing is persisted after that;
    - revisions grow, history only grows, completed steps stay completed;
    - the crashed run ends like the crash-free one: same status, same set of
      completed steps, same results (see :func:`compare_runs` for what a
      crash may rightly change: steps in flight run again, so finish later).

    Call it from a synchronous test (every example runs ``trio.run``).

    Args:
        value: the business value of the instance.
        initial: its ``initial`` data, or a strategy drawing it.
        steps: which steps get drawn outcomes, see :func:`outcomes` (each
            step may also keep its own code).
        failures: whether drawn outcomes include failures, see :func:`outcomes`.
        events: a strategy of schedules (default ``event_schedules(workflow)``).
        before_run: called before every run, to reset fakes that steps call
            (an in-memory payment provider, ...).
        max_examples: examples to try (default: the active hypothesis profile's).
        settings: hypothesis settings to start from (default: the active
            profile, without the example database).

    Raises:
        AssertionError: an invariant is broken. The message says which, and
            ends with hypothesis' shrunk falsifying example.
    """
    base = settings if settings is not None else hypothesis.settings(database=None)
    configured = hypothesis.settings(
        base,
        max_examples=max_examples if max_examples is not None else base.max_examples,
        deadline=None,
        suppress_health_check=[*base.suppress_health_check, HealthCheck.too_slow],
        # "explain" re-runs failing examples under a tracer: slow, and its notes are noise here.
        phases=[phase for phase in base.phases if phase is not Phase.explain],
    )
    initials: st.SearchStrategy[Mapping[str, Any]] = (
        initial if isinstance(initial, st.SearchStrategy) else st.just(dict(initial or {}))
    )
    schedules = events if events is not None else event_schedules(workflow)

    def trace(
        overrides: dict[str, StepOverride],
        schedule: list[ScheduledEvent],
        data: Mapping[str, Any],
        crash: CrashPoint | None,
    ) -> WorkflowRun:
        if before_run is not None:
            before_run()
        return trace_workflow(
            workflow, value, data, events=schedule, step_overrides=overrides, crash_at=crash
        )

    @configured
    @given(
        step_overrides=outcomes(workflow, steps=steps, failures=failures),
        events=schedules,
        initial=initials,
    )
    def check_invariants(
        step_overrides: dict[str, StepOverride],
        events: list[ScheduledEvent],
        initial: Mapping[str, Any],
    ) -> None:
        plain = trace(step_overrides, events, initial, None)
        problems = run_problems(plain)
        if problems:
            raise AssertionError("the crash-free run: " + "; ".join(problems))
        for write in range(1, plain.writes + 1):
            crashed = trace(step_overrides, events, initial, CrashPoint(write))
            problems = [f"the crashed run: {p}" for p in run_problems(crashed)]
            differences = compare_runs(plain, crashed)
            if differences:
                problems.append(
                    "the run that crashed and recovered ended differently from the "
                    "crash-free run:\n    " + "\n    ".join(differences)
                )
            if problems:
                told = [report.describe() for report in crashed.crashes]
                raise AssertionError(
                    f"with crash_at=CrashPoint(write={write}):\n  "
                    + "\n  ".join(problems)
                    + "\n  crash: "
                    + ("; ".join(told) or "none happened")
                    + f"\n  step attempts without the crash: {_attempts(plain)}"
                    + f"\n  step attempts with the crash:    {_attempts(crashed)}"
                )

    try:
        check_invariants()
    except Exception as exc:
        notes = "\n".join(getattr(exc, "__notes__", ()))
        what = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
        raise AssertionError(
            f"workflow {workflow.name!r} v{workflow.version} breaks an invariant:\n  {what}"
            f"\n\n{notes}"
        ) from None
