"""Passivated and resident engines, whether or not this build's ``open_engine`` can passivate.

The signature is looked up once: where ``open_engine`` takes no
``passivate_after``, every engine is resident, so the ``resident`` mode passes
nothing and the ``passivated`` rows say :data:`UNSUPPORTED` instead of a figure.
"""

from __future__ import annotations

import inspect
from typing import Any

import hephaestus as hx

SUPPORTED = "passivate_after" in inspect.signature(hx.open_engine).parameters
"""Whether this build's ``open_engine`` takes ``passivate_after``."""

UNSUPPORTED = "(not supported by this build)"

PASSIVATE_AFTER: dict[str, float | None] = {"passivated": 0.0, "resident": None}
"""The ``passivate_after`` of each mode: at once, or never (always resident)."""


def modes() -> tuple[str, ...]:
    """Return the modes this build can run: both, or only ``resident``."""
    return tuple(PASSIVATE_AFTER) if SUPPORTED else ("resident",)


def engine_options(mode: str) -> dict[str, Any]:
    """Return the ``open_engine`` keyword arguments for ``mode``.

    Raises:
        ValueError: ``mode`` is not a key of :data:`PASSIVATE_AFTER`, or is
            ``passivated`` on a build without passivation.
    """
    if mode not in PASSIVATE_AFTER:
        raise ValueError(f"mode {mode!r}: choose one of {', '.join(PASSIVATE_AFTER)}")
    if not SUPPORTED:
        if mode == "passivated":
            raise ValueError(f"passivated engines: {UNSUPPORTED}")
        return {}
    return {"passivate_after": PASSIVATE_AFTER[mode]}
