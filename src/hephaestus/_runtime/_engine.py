"""open_engine and Engine (being built)."""

from __future__ import annotations

from typing import Any, final


@final
class Engine:
    """The running engine (being built)."""


def open_engine(**kwargs: Any) -> Any:
    raise NotImplementedError
