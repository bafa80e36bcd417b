"""A step's return value is classified in the core: anything invalid fails the attempt."""

from __future__ import annotations

import pytest

import hephaestus as hx
from hephaestus._core._engine import StepFailed, StepSucceeded, StepSuspended
from hephaestus._core._outcome import outcome

from .helpers import mk

WAITER = mk("waiter", "go", "timeout")


@pytest.mark.parametrize(
    ("timeout", "why"),
    [
        ("5", "is a str, not a number"),
        (float("nan"), "is not finite"),
        (float("inf"), "is not finite"),
        (-1.0, "is negative"),
        (True, "is a bool, not a number"),
    ],
)
def test_a_bad_suspend_timeout_fails_the_attempt_naming_the_step(timeout: object, why: str) -> None:
    result = outcome(WAITER, 2, hx.Suspend(timeout=timeout))  # type: ignore[arg-type]
    assert isinstance(result, StepFailed)
    assert (result.step, result.attempt, result.error_type) == ("waiter", 2, "InvalidResult")
    assert "step 'waiter'" in result.message
    assert why in result.message


def test_a_valid_suspend_timeout_is_a_float() -> None:
    assert outcome(WAITER, 1, hx.Suspend(timeout=3)) == StepSuspended(
        step="waiter", attempt=1, timeout=3.0
    )
    assert outcome(WAITER, 1, hx.Suspend()) == StepSuspended(step="waiter", attempt=1, timeout=None)
    assert outcome(WAITER, 1, hx.Suspend(timeout=0)) == StepSuspended(
        step="waiter", attempt=1, timeout=0.0
    )


def test_a_timeout_without_the_timeout_event_is_undeclared() -> None:
    result = outcome(mk("plain", "go"), 1, hx.Suspend(timeout=1.0))
    assert isinstance(result, StepFailed)
    assert result.error_type == "UndeclaredEvent"
    assert "'plain'" in result.message


@pytest.mark.parametrize("returned", ["nope", hx.Emit("nope")])
def test_an_undeclared_event_is_undeclared_event(returned: object) -> None:
    result = outcome(WAITER, 1, returned)
    assert isinstance(result, StepFailed)
    assert result.error_type == hx.UndeclaredEvent.__name__
    assert "step 'waiter'" in result.message
    assert "'nope'" in result.message


@pytest.mark.parametrize(
    "returned",
    [
        hx.Emit("go", {"when": object()}),
        hx.Emit("go", {1: "int key"}),  # type: ignore[dict-item]
        hx.Emit("go", None, {"s": {1, 2}}),
        hx.Emit("go", [1, 2]),  # type: ignore[arg-type]
        hx.Emit(7),  # type: ignore[arg-type]
        None,
        42,
        ("go",),
    ],
)
def test_unstorable_or_malformed_output_fails_the_attempt(returned: object) -> None:
    result = outcome(WAITER, 1, returned)
    assert isinstance(result, StepFailed)
    assert result.error_type == "InvalidResult"
    assert "'waiter'" in result.message


def test_results_and_metadata_are_copied_at_return() -> None:
    results = {"items": [1, 2], "nested": {"a": 1}}
    metadata = {"tags": ["x"]}
    result = outcome(WAITER, 1, hx.Emit("go", results, metadata))
    assert isinstance(result, StepSucceeded)
    results["items"].append(3)  # type: ignore[attr-defined]
    results["nested"]["a"] = 2  # type: ignore[index]
    metadata["tags"].append("y")
    assert result.results == {"items": [1, 2], "nested": {"a": 1}}
    assert result.metadata == {"tags": ["x"]}


def test_a_broken_repr_or_str_does_not_escape() -> None:
    class Odd:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    result = outcome(WAITER, 1, Odd())
    assert isinstance(result, StepFailed)
    assert "<Odd>" in result.message
