"""One bad workflow per validation rule; every message names what is wrong and what to change."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import hephaestus as hx

from .helpers import UNIQUE, mk, workflow


def problems_of(start: Any, transitions: Any, **kwargs: Any) -> list[str]:
    kwargs.setdefault("unique", UNIQUE)
    with pytest.raises(hx.WorkflowDefinitionError) as info:
        hx.Workflow("bad", start=start, transitions=transitions, **kwargs)
    problems = info.value.problems
    assert problems, "a WorkflowDefinitionError must list its problems"
    for problem in problems:  # the str() of the error shows every problem
        assert problem in str(info.value)
    assert "'bad'" in str(info.value)
    return problems


def only(problems: list[str], *needles: str) -> str:
    """Return the one problem mentioning every needle."""
    matching = [p for p in problems if all(n in p for n in needles)]
    assert len(matching) == 1, (needles, problems)
    return matching[0]


def test_valid_workflow_builds_graph() -> None:
    a, b, c, d = mk("a", "x", "y"), mk("b"), mk("c"), mk("d")
    wf = workflow(
        a, {(a, "x"): [b, c], (a, "y"): hx.Done, (b, "ok"): d, (c, "ok"): d, (d, "ok"): hx.Done}
    )
    assert wf.successors["a"] == {"b", "c"}
    assert wf.predecessors["d"] == {"b", "c"}
    assert wf.topo_order[0] == "a"
    assert wf.topo_order[-1] == "d"
    assert wf.edges[("a", "y")].done
    assert set(wf.steps) == {"a", "b", "c", "d"}


def test_cycle() -> None:
    a, b, c = mk("a", "go", "stop"), mk("b"), mk("c")
    problems = problems_of(a, {(a, "go"): b, (a, "stop"): hx.Done, (b, "ok"): c, (c, "ok"): b})
    message = only(problems, "cycle")
    assert "'b'" in message
    assert "'c'" in message
    assert "'a' ->" not in message
    assert "acyclic" in message


def test_cycle_through_start() -> None:
    a, b = mk("a"), mk("b", "back", "end")
    problems = problems_of(a, {(a, "ok"): b, (b, "back"): a, (b, "end"): hx.Done})
    assert only(problems, "cycle", "'a'", "'b'")
    assert "cannot be entered again" in only(problems, "start step 'a'")


def test_unreachable_step() -> None:
    a, b, orphan = mk("a"), mk("b"), mk("orphan")
    problems = problems_of(a, {(a, "ok"): b, (b, "ok"): hx.Done, (orphan, "ok"): b})
    message = only(problems, "'orphan'")
    assert "unreachable" in message
    assert "'a'" in message
    assert "add a transition" in message or "remove it" in message


def test_step_without_transitions_never_reaches_done() -> None:
    a, dead_end = mk("a"), mk("dead_end", "x", "y")
    problems = problems_of(a, {(a, "ok"): dead_end})
    message = only(problems, "'dead_end'")
    assert "no transitions" in message
    assert "hx.Done" in message
    assert "'x'" in message
    assert "'y'" in message


def test_declared_event_without_transition() -> None:
    a = mk("a", "good", "bad")
    problems = problems_of(a, {(a, "good"): hx.Done})
    message = only(problems, "'a'", "'bad'")
    assert "no transition" in message
    assert "hx.Done" in message
    assert not any("'good'" in p for p in problems)


def test_transition_on_undeclared_event() -> None:
    a = mk("a", "ok")
    problems = problems_of(a, {(a, "ok"): hx.Done, (a, "typo"): hx.Done})
    message = only(problems, "'a'", "'typo'")
    assert "does not declare" in message
    assert "events=" in message
    assert "'ok'" in message  # lists what is declared


def test_two_steps_with_the_same_key() -> None:
    first, second = mk("same"), mk("same")
    a = mk("a", "l", "r")
    problems = problems_of(
        a, {(a, "l"): first, (a, "r"): second, (first, "ok"): hx.Done, (second, "ok"): hx.Done}
    )
    message = only(problems, "two different steps")
    assert "'same'" in message
    assert "key=" in message


def test_same_step_object_twice_is_fine() -> None:
    a, b = mk("a", "l", "r"), mk("b")
    wf = workflow(a, {(a, "l"): b, (a, "r"): b, (b, "ok"): hx.Done})
    assert wf.predecessors["b"] == {"a"}


@pytest.mark.parametrize("target", ["b", 42, None, lambda ctx: None, {"step": 1}])
def test_non_step_target(target: object) -> None:
    a = mk("a")
    problems = problems_of(a, {(a, "ok"): target})
    message = only(problems, "('a', 'ok')")
    assert "not a step" in message
    assert "hx.Done" in message


def test_non_step_inside_fan_out_and_target() -> None:
    a, b = mk("a", "x", "y"), mk("b")
    problems = problems_of(
        a,
        {
            (a, "x"): [b, "c"],
            (a, "y"): hx.Target("nope", None),  # type: ignore[arg-type]
            (b, "ok"): hx.Done,
        },
    )
    assert "not a step" in only(problems, "('a', 'x')", "'c'")
    assert "not a step" in only(problems, "('a', 'y')", "'nope'")


def test_non_step_transition_source() -> None:
    a = mk("a")
    problems = problems_of(a, {(a, "ok"): hx.Done, ("a", "ok"): hx.Done})
    assert "is not a step" in only(problems, "transition source")


def test_malformed_transition_pair() -> None:
    a = mk("a")
    problems = problems_of(a, [((a, "ok"), hx.Done), (a, hx.Done)])
    assert only(problems, "must be ((step, 'event'), target)")


def test_route_with_empty_targets() -> None:
    a = mk("a")
    problems = problems_of(a, {(a, "ok"): hx.Route(lambda ctx: [], [])})
    message = only(problems, "Route")
    assert "('a', 'ok')" in message
    assert "no targets" in message
    assert "list the steps" in message


def test_route_with_non_step_target_and_uncallable_choose() -> None:
    a, b = mk("a"), mk("b")
    problems = problems_of(
        a,
        {
            (a, "ok"): hx.Route("not callable", [b, "c"]),  # type: ignore[arg-type, list-item]
            (b, "ok"): hx.Done,
        },
    )
    assert only(problems, "not callable")
    assert only(problems, "'c'", "not a step")


def test_empty_fan_out_and_done_inside_fan_out() -> None:
    a, b = mk("a", "x", "y"), mk("b")
    problems = problems_of(a, {(a, "x"): [], (a, "y"): [b, hx.Done], (b, "ok"): hx.Done})
    assert "empty fan-out" in only(problems, "('a', 'x')")
    assert "hx.Done alone" in only(problems, "('a', 'y')")


def test_fan_out_naming_a_step_twice() -> None:
    a, b = mk("a"), mk("b")
    problems = problems_of(a, {(a, "ok"): [b, b], (b, "ok"): hx.Done})
    assert "same step twice" in only(problems, "('a', 'ok')")


@pytest.mark.parametrize("event", ["", 3, None])
def test_bad_transition_event(event: object) -> None:
    a = mk("a")
    problems = problems_of(a, {(a, "ok"): hx.Done, (a, event): hx.Done})
    message = only(problems, "transition event")
    assert "'a'" in message
    assert "non-empty string" in message


@pytest.mark.parametrize(
    ("events", "needle"),
    [
        ((), "must not be empty"),
        (("",), "non-empty string"),
        (("ok", 7), "non-empty string"),
        ("ok", "non-empty sequence"),
        (None, "non-empty sequence"),
        (("ok", "ok"), "more than once"),
    ],
)
def test_bad_step_events(events: Any, needle: str) -> None:
    with pytest.raises(hx.WorkflowDefinitionError) as info:
        hx.step(lambda ctx: "ok", key="s", events=events)
    assert any(needle in p for p in info.value.problems), info.value.problems
    assert "step s" in str(info.value)


def test_duplicate_transition_keys() -> None:
    a, b = mk("a"), mk("b")
    problems = problems_of(a, [((a, "ok"), b), ((a, "ok"), hx.Done), ((b, "ok"), hx.Done)])
    message = only(problems, "more than once")
    assert "('a', 'ok')" in message
    assert "keep one" in message


def test_duplicate_transition_keys_through_distinct_but_same_key_steps() -> None:
    a, a_again = mk("a"), mk("a")
    problems = problems_of(a, [((a, "ok"), hx.Done), ((a_again, "ok"), hx.Done)])
    assert only(problems, "two different steps", "'a'")


def test_duplicate_transition_reported_even_when_the_first_target_is_bad() -> None:
    a = mk("a")
    problems = problems_of(a, [((a, "ok"), 42), ((a, "ok"), hx.Done)])
    assert only(problems, "('a', 'ok')", "not a step")
    assert only(problems, "('a', 'ok')", "more than once")


def test_malformed_target_is_not_also_reported_as_missing() -> None:
    a = mk("a", "x", "y")
    problems = problems_of(a, {(a, "x"): "nowhere", (a, "y"): hx.Done})
    assert only(problems, "('a', 'x')", "not a step")
    assert not any("no transition" in p for p in problems), problems


def test_start_is_done() -> None:
    a = mk("a")
    problems = problems_of(hx.Done, {(a, "ok"): hx.Done})
    assert "start with a step" in only(problems, "start is hx.Done")


def test_start_is_not_a_step() -> None:
    problems = problems_of("a", {})
    assert only(problems, "start must be a step", "'a'")


@pytest.mark.parametrize("key", ["Upper", "1abc", "with-dash", "", "a b", "é", "_x"])
def test_bad_step_key(key: str) -> None:
    with pytest.raises(hx.WorkflowDefinitionError) as info:
        hx.step(lambda ctx: "ok", key=key, events=("ok",))
    message = only(info.value.problems, "[a-z][a-z0-9_]*")
    assert repr(key) in message
    assert "key=" in message


def test_bad_step_key_from_function_name() -> None:
    def CamelCase(ctx: hx.StepContext) -> str:  # noqa: N802 - the bad name is the point
        return "ok"

    with pytest.raises(hx.WorkflowDefinitionError, match="CamelCase"):
        hx.step(CamelCase, events=("ok",))


@pytest.mark.parametrize("key", ["a", "a1", "snake_case_2"])
def test_good_step_keys(key: str) -> None:
    assert hx.step(lambda ctx: "ok", key=key, events=("ok",)).key == key


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "5", True])
def test_bad_step_timeout(timeout: Any) -> None:
    with pytest.raises(hx.WorkflowDefinitionError, match="timeout"):
        hx.step(lambda ctx: "ok", key="s", events=("ok",), timeout=timeout)


def test_bad_retry_in_step() -> None:
    with pytest.raises(hx.WorkflowDefinitionError, match=r"hx\.Retry"):
        hx.step(lambda ctx: "ok", key="s", events=("ok",), retry=3)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"backoff": "fibonacci"}, "backoff"),
        ({"initial": -1.0}, "initial"),
        ({"initial": float("nan")}, "initial"),
        ({"initial": True}, "initial"),
        ({"max_backoff": float("inf")}, "max_backoff"),
        ({"max_backoff": "1"}, "max_backoff"),
    ],
)
def test_bad_retry(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"Retry.{field}"):
        hx.Retry(**kwargs)


def test_retry_delays() -> None:
    assert [hx.Retry(initial=1.0).delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert hx.Retry(initial=1.0, max_backoff=5.0).delay(4) == 5.0
    assert [hx.Retry(backoff="linear", initial=2.0).delay(n) for n in (1, 2, 3)] == [2, 4, 6]
    assert hx.Retry(backoff="constant", initial=3.0).delay(9) == 3.0


def test_retry_delay_for_a_very_late_attempt_is_capped() -> None:
    policy = hx.Retry(max_attempts=5000, initial=1.0, max_backoff=30.0)
    assert policy.delay(1025) == 30.0
    assert policy.delay(4999) == 30.0


@pytest.mark.parametrize("seconds", [-1, float("nan"), "3", True])
def test_bad_wait(seconds: Any) -> None:
    with pytest.raises(hx.WorkflowDefinitionError, match="Wait seconds"):
        hx.Wait(seconds, key="nap")


def test_wait_for_event_events() -> None:
    assert hx.WaitForEvent("paid", key="w").events == ("paid",)
    assert hx.WaitForEvent("paid", key="w", timeout=5).events == ("paid", "timeout")
    assert hx.Wait(3, key="nap").events == ("timeout",)
    with pytest.raises(hx.WorkflowDefinitionError, match="timeout"):
        hx.WaitForEvent("paid", key="w", timeout=-1)
    with pytest.raises(hx.WorkflowDefinitionError):
        hx.WaitForEvent("", key="w")


@pytest.mark.parametrize("key", ["Order", "order-id", "", "order_id", "ordér", 5])
def test_bad_unique_key(key: Any) -> None:
    with pytest.raises(hx.WorkflowDefinitionError, match=r"\[a-z0-9\]\+"):
        hx.Unique(key)


def test_bad_unique_scope() -> None:
    with pytest.raises(hx.WorkflowDefinitionError, match="'workflow'"):
        hx.Unique("order", scope="planet")  # type: ignore[arg-type]


def test_unique_scopes_and_ids() -> None:
    from hephaestus._core._ids import build_instance_id

    assert build_instance_id(hx.Unique("orderid"), "abc123") == "orderid::abc123"
    assert build_instance_id(hx.Unique("o", "global"), "A_b-9") == "o::A_b-9"
    assert build_instance_id(hx.Unique("o", "none"), "x", "0123abcd") == "o::x::0123abcd"
    with pytest.raises(ValueError, match="8-hex"):
        build_instance_id(hx.Unique("o", "none"), "x")
    with pytest.raises(ValueError, match="8-hex"):
        build_instance_id(hx.Unique("o", "none"), "x", "XYZ")


@pytest.mark.parametrize(
    "value", ["", "a" * 129, "has space", "slash/y", "colon::x", "ünï", None, 12, b"abc"]
)
def test_invalid_business_value(value: Any) -> None:
    from hephaestus._core._ids import build_instance_id, check_business_value

    with pytest.raises(hx.InvalidBusinessKey, match="A-Z a-z 0-9 _ -") as info:
        check_business_value(value)
    assert repr(value) in str(info.value)
    with pytest.raises(hx.InvalidBusinessKey):
        build_instance_id(hx.Unique("order"), value)


@pytest.mark.parametrize(
    "value",
    ["a", "a" * 128, "A-b_9", str(uuid.UUID(int=7)), "{12345678-1234-5678-1234-567812345678}"],
)
def test_valid_business_value(value: str) -> None:
    from hephaestus._core._ids import check_business_value

    assert check_business_value(value) == value.strip("{}")  # a UUID in its canonical form


def test_bad_workflow_header() -> None:
    a = mk("a")
    problems = problems_of(a, {(a, "ok"): hx.Done}, unique="order", version=0)
    assert only(problems, "unique must be an hx.Unique")
    assert only(problems, "version must be an int >= 1")
    with pytest.raises(hx.WorkflowDefinitionError, match="non-empty string"):
        hx.Workflow("", start=a, transitions={(a, "ok"): hx.Done}, unique=UNIQUE)


def test_every_problem_is_reported_at_once() -> None:
    a = mk("a", "go", "stop", "never")
    b, c = mk("b"), mk("c", "ok", "ko")
    twin = mk("b")
    orphan = mk("orphan")
    problems = problems_of(
        a,
        [
            ((a, "go"), [b, c]),
            ((a, "stop"), hx.Done),
            ((a, "typo"), hx.Done),  # undeclared event
            ((b, "ok"), c),
            ((c, "ok"), b),  # cycle b -> c -> b
            ((c, "ko"), twin),  # another step keyed 'b'
            ((orphan, "ok"), hx.Route(lambda ctx: [], [])),  # unreachable + empty route
            ((orphan, "ok"), hx.Done),  # duplicate transition
            ((c, ""), hx.Done),  # empty event
            ((c, "ko"), 42),  # duplicate and non-step target
        ],
        unique=hx.Unique("order"),
        version=0,
    )
    expected = [
        ("'a'", "'typo'", "does not declare"),
        ("'a'", "'never'", "no transition"),
        ("cycle", "'b'", "'c'"),
        ("two different steps", "'b'"),
        ("'orphan'", "unreachable"),
        ("Route", "no targets"),
        ("('orphan', 'ok')", "more than once"),
        ("('c', 'ko')", "more than once"),
        ("'c'", "transition event", "non-empty string"),
        ("version must be an int",),
    ]
    for needles in expected:
        assert any(all(n in p for n in needles) for p in problems), (needles, problems)
    assert len(problems) >= len(expected)
    assert len(set(problems)) == len(problems), "no problem is reported twice"
