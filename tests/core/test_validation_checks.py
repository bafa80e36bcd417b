"""``Workflow(...)`` is a list of small pure checks; its problems are theirs, in order."""

from __future__ import annotations

import pytest

import hephaestus as hx
from hephaestus._core import _workflow

from .helpers import mk


def test_each_check_returns_its_own_problems() -> None:
    a, b, c = mk("a", "ok", "alt"), mk("b"), mk("c")
    assert _workflow._check_header("", 0, None) == [
        "workflow name must be a non-empty string, got ''",
        "version must be an int >= 1, got 0",
        "unique must be an hx.Unique(...), got None",
    ]
    assert _workflow._check_start(hx.Done)[0] == [
        "start is hx.Done: a workflow must start with a step"
    ]
    problems, steps = _workflow._check_start(a)
    assert (problems, steps) == ([], {"a": a})
    compiled = _workflow._compile_transitions(steps, {(a, "ok"): b, (b, "ok"): a})
    assert compiled.problems == []
    assert set(steps) == {"a", "b"}
    missing = _workflow._check_every_event_has_a_transition(steps, compiled.seen)
    assert missing == [
        "step 'a' declares event 'alt' but has no transition for it: "
        "add (step, event) -> target (hx.Done to end there)"
    ]
    successors, predecessors = _workflow._links(steps, compiled.edges)
    assert (successors, predecessors) == ({"a": {"b"}, "b": {"a"}}, {"a": {"b"}, "b": {"a"}})
    assert _workflow._check_reachable(a, {**steps, "c": c}, {**successors, "c": set()}) == [
        "step 'c' is unreachable from start step 'a': add a transition that leads to it "
        "or remove it",
        "start step 'a' is the target of a transition: the start step cannot be entered again",
    ]
    order, cycle = _workflow._check_acyclic(successors)
    assert order == []
    assert len(cycle) == 1
    assert cycle[0].startswith("cycle: ")


def test_the_constructor_reports_the_checks_problems_in_their_order() -> None:
    a, b = mk("a", "ok", "alt"), mk("b")
    with pytest.raises(hx.WorkflowDefinitionError) as info:
        hx.Workflow("", start=a, transitions={(a, "ok"): b, (b, "ok"): a}, unique=None)  # type: ignore[arg-type]
    steps = {"a": a}
    compiled = _workflow._compile_transitions(steps, {(a, "ok"): b, (b, "ok"): a})
    successors, _ = _workflow._links(steps, compiled.edges)
    assert info.value.problems == [
        *_workflow._check_header("", 1, None),
        *_workflow._check_every_event_has_a_transition(steps, compiled.seen),
        *_workflow._check_reachable(a, steps, successors),
        *_workflow._check_acyclic(successors)[1],
    ]
