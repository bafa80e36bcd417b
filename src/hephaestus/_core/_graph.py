"""Graph renderings of a workflow: mermaid, dot and ASCII (in progress)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._workflow import Workflow


def to_mermaid(workflow: Workflow) -> str:
    raise NotImplementedError


def to_dot(workflow: Workflow) -> str:
    raise NotImplementedError


def to_ascii(workflow: Workflow) -> str:
    raise NotImplementedError
