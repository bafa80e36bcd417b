"""One check for "finite seconds >= 0": every duration a caller passes goes through it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import hephaestus as hx
from hephaestus._core._seconds import check_seconds, seconds_problem

SRC = Path(__file__).resolve().parents[2] / "src" / "hephaestus"

BAD = [
    ("5", "is a str, not a number"),
    (float("nan"), "is not finite"),
    (float("inf"), "is not finite"),
    (-1, "is negative"),
    (True, "is a bool, not a number"),
    (10**400, "is too large"),
]


@pytest.mark.parametrize(("value", "why"), BAD)
def test_the_helper_names_what_and_why(value: object, why: str) -> None:
    problem = seconds_problem(value, "Thing.delay")
    assert problem is not None
    assert problem.startswith("Thing.delay must be a finite number of seconds >= 0")
    assert why in problem
    with pytest.raises(ValueError, match=re.escape(problem)):
        check_seconds(value, "Thing.delay")


def test_the_helper_accepts_durations() -> None:
    assert check_seconds(0, "d") == 0.0
    assert isinstance(check_seconds(3, "d"), float)
    assert check_seconds(2.5, "d") == 2.5
    assert seconds_problem(0, "d", positive=True) is not None
    assert seconds_problem(0.1, "d", positive=True) is None


def _step(timeout: Any) -> object:
    async def body(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    return hx.step(body, events=("ok",), timeout=timeout)


SITES: list[tuple[str, Callable[[object], object], type[Exception]]] = [
    ("Retry.initial", lambda v: hx.Retry(initial=v), ValueError),  # type: ignore[arg-type]
    ("Retry.max_backoff", lambda v: hx.Retry(max_backoff=v), ValueError),  # type: ignore[arg-type]
    ("timeout", _step, hx.WorkflowDefinitionError),
    ("Wait seconds", lambda v: hx.Wait(v, key="w"), hx.WorkflowDefinitionError),  # type: ignore[arg-type]
    (
        "WaitForEvent timeout",
        lambda v: hx.WaitForEvent("go", key="w", timeout=v),  # type: ignore[arg-type]
        hx.WorkflowDefinitionError,
    ),
    (
        "CrashPoint.downtime",
        lambda v: hx.testing.CrashPoint(write=1, downtime=v),  # type: ignore[arg-type]
        ValueError,
    ),
]


@pytest.mark.parametrize(("what", "make", "error"), SITES, ids=[s[0] for s in SITES])
@pytest.mark.parametrize(("value", "why"), BAD)
def test_every_site_rejects_every_bad_duration_the_same_way(
    what: str, make: Callable[[object], object], error: type[Exception], value: object, why: str
) -> None:
    with pytest.raises(error) as info:
        make(value)
    assert f"{what} must be a finite number of seconds" in str(info.value)
    assert why in str(info.value)


def test_the_check_is_written_once() -> None:
    """STYLE.md: no module but _core/_seconds.py restates the finite-seconds test."""
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path.name != "_seconds.py" and "isfinite" in path.read_text()
    ]
    assert offenders == []
