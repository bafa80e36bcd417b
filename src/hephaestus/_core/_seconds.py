"""The one check for a duration in seconds: a finite real number, at least zero."""

from __future__ import annotations

import math
from typing import Final

_MAX_INT: Final = int(1e308)  # beyond this an int does not convert to a float


def seconds_problem(value: object, what: str, *, positive: bool = False) -> str | None:
    """Return why ``value`` is not a valid duration for ``what``, or None if it is one.

    A valid duration is an ``int`` or ``float`` (not a ``bool``), finite, and
    ``>= 0`` (``> 0`` with ``positive``). The message names ``what``, the value
    given and what to pass instead.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = type(value).__name__
        problem = f"is a {kind}, not a number"
    elif isinstance(value, int) and value > _MAX_INT:
        problem = "is too large"
    elif not math.isfinite(value):
        problem = "is not finite"
    elif value < 0 or (positive and value == 0):
        problem = "is negative" if value < 0 else "is zero"
    else:
        return None
    bound = "> 0" if positive else ">= 0"
    return f"{what} must be a finite number of seconds {bound}; {value!r} {problem}"


def check_seconds(value: object, what: str, *, positive: bool = False) -> float:
    """Return ``value`` as a float if it is a valid duration for ``what``.

    Raises:
        ValueError: naming ``what`` and what is wrong with ``value`` otherwise.
    """
    problem = seconds_problem(value, what, positive=positive)
    if problem is not None:
        raise ValueError(problem)
    assert isinstance(value, int | float)
    return float(value)
