"""Step overrides: the same workflow graph with some steps' code replaced by stubs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias, cast, final

import trio

from .._core._steps import (
    TIMEOUT_EVENT,
    Done,
    Emit,
    Route,
    Step,
    StepContext,
    StepResult,
    Suspend,
    Target,
)
from .._core._workflow import Workflow


@final
class SimulatedFailure(Exception):
    """The exception a failing stub raises (what ``outcomes()`` draws for a failure)."""


Outcome: TypeAlias = (
    str | Emit | Suspend | BaseException | type[BaseException] | Callable[[StepContext], Any]
)
"""What one attempt of a stubbed step does; see :func:`with_overrides`."""

StepOverride: TypeAlias = Outcome | Sequence[Outcome]
"""One outcome for every attempt, or a list: one per attempt (the last one repeats)."""


def with_overrides(workflow: Workflow, overrides: Mapping[str, StepOverride]) -> Workflow:
    """Return a copy of ``workflow`` whose steps named in ``overrides`` run stubs instead.

    The copy has the same name, version, unique scope, step keys, declared
    events, retry policies, timeouts and transitions; only the code of the
    overridden steps differs. An override is, per attempt:

    - ``"event"`` or ``hx.Emit(...)``: the attempt ends with that event;
    - ``hx.Suspend(timeout=None)``: the attempt suspends (resume it with events);
    - an exception instance or class: the attempt raises it;
    - a function ``f(ctx)`` (sync or async): its return value is the outcome;
    - a list of the above: one per attempt, the last one repeating, e.g.
      ``[ConnectionError, "approved"]`` fails once and then succeeds.

    Raises:
        ValueError: an override names no step of the workflow, or ends with an
            event the step does not declare, or suspends with a timeout on a
            step that does not declare ``"timeout"``.
        TypeError: an override is none of the above.
    """
    unknown = sorted(set(overrides) - set(workflow.steps))
    if unknown:
        raise ValueError(
            f"step_overrides names {unknown!r}, which workflow {workflow.name!r} does not have "
            f"(steps: {list(workflow.steps)!r})"
        )
    if not overrides:
        return workflow
    mapping: dict[str, Step] = dict(workflow.steps)
    for key, override in overrides.items():
        original = workflow.steps[key]
        plan = _plan(original, override)
        mapping[key] = Step(
            _stub(key, plan),
            key=key,
            events=original.events,
            retry=original.retry,
            timeout=original.timeout,
            limiter=original.limiter,
        )

    def target(key: str, config: dict[str, Any] | None) -> Step | Target:
        return mapping[key] if config is None else Target(mapping[key], config)

    transitions: dict[tuple[Step, str], object] = {}
    for (source, event), edge in workflow.edges.items():
        compiled: object
        if edge.done:
            compiled = Done
        elif edge.route is not None:
            compiled = Route(
                _remap_choice(edge.route.choose, workflow, mapping),
                [target(key, config) for key, config in edge.targets],
            )
        elif len(edge.targets) == 1:
            compiled = target(*edge.targets[0])
        else:
            compiled = [target(key, config) for key, config in edge.targets]
        transitions[(mapping[source], event)] = compiled
    copy = Workflow(
        workflow.name,
        start=mapping[workflow.start.key],
        transitions=transitions,
        unique=workflow.unique,
        version=workflow.version,
        max_active=workflow.max_active,
    )
    assert {k: s.events for k, s in copy.steps.items()} == {
        k: s.events for k, s in workflow.steps.items()
    }
    assert copy.successors == workflow.successors
    return copy


def _plan(step: Step, override: StepOverride) -> tuple[Outcome, ...]:
    if isinstance(override, str | bytes) or not isinstance(override, Sequence):
        plan: tuple[Any, ...] = (override,)
    else:
        plan = tuple(override)
        if not plan:
            raise ValueError(f"the override of step {step.key!r} is an empty list of outcomes")
    for outcome in plan:
        _check(step, outcome)
    return plan


def _check(step: Step, outcome: object) -> None:
    declared = list(step.events)
    if isinstance(outcome, str | Emit):
        event = outcome if isinstance(outcome, str) else outcome.event
        if event not in step.events:
            raise ValueError(
                f"the override of step {step.key!r} ends with event {event!r}, which the step "
                f"does not declare (declared: {declared!r})"
            )
    elif isinstance(outcome, Suspend):
        if outcome.timeout is not None and TIMEOUT_EVENT not in step.events:
            raise ValueError(
                f"the override of step {step.key!r} suspends with a timeout, but the step does "
                f"not declare {TIMEOUT_EVENT!r} (declared: {declared!r})"
            )
    elif isinstance(outcome, type):
        if not issubclass(outcome, Exception):
            raise TypeError(
                f"the override of step {step.key!r} is {outcome!r}; a stub may raise an "
                "Exception subclass, not another class"
            )
    elif not (isinstance(outcome, Exception) or callable(outcome)):
        raise TypeError(
            f"the override of step {step.key!r} is {outcome!r}; give an event name, hx.Emit, "
            "hx.Suspend, an Exception (instance or class), a function of ctx, or a list of these"
        )


def _stub(key: str, plan: tuple[Outcome, ...]) -> Callable[[StepContext], Any]:
    async def stub(ctx: StepContext) -> StepResult:
        await trio.lowlevel.checkpoint()
        outcome: Any = plan[min(ctx.attempt, len(plan)) - 1]
        if isinstance(outcome, type) and issubclass(outcome, BaseException):
            raise outcome(f"simulated failure of step {key!r}, attempt {ctx.attempt}")
        if isinstance(outcome, BaseException):
            raise outcome.with_traceback(None)
        if isinstance(outcome, str | Emit | Suspend):
            return outcome
        result = outcome(ctx)
        if inspect.isawaitable(result):
            result = await result
        return cast(StepResult, result)

    stub.__name__ = stub.__qualname__ = key
    return stub


def _remap_choice(
    choose: Callable[[StepContext], Any], workflow: Workflow, mapping: Mapping[str, Step]
) -> Callable[[StepContext], Any]:
    """Wrap a Route's ``choose`` so the steps it returns are the copy's steps."""

    def swap(item: object) -> object:
        if isinstance(item, Step) and workflow.steps.get(item.key) is item:
            return mapping[item.key]
        if isinstance(item, Target) and workflow.steps.get(item.step.key) is item.step:
            return Target(mapping[item.step.key], item.config)
        return item

    def remapped(ctx: StepContext) -> object:
        picked = choose(ctx)
        if isinstance(picked, list | tuple):
            return [swap(item) for item in picked]
        return swap(picked)

    return remapped
