"""Checks on the set of workflows one engine runs together."""

from __future__ import annotations

from collections.abc import Iterable

from ._errors import WorkflowDefinitionError
from ._workflow import Workflow


def registry_problems(workflows: Iterable[Workflow]) -> list[str]:
    """Return what is wrong with running ``workflows`` side by side (empty if nothing).

    Two workflows (different names) that share an ``hx.Unique`` key where one
    of them uses scope ``"workflow"`` would build the same ids for the same
    value, so one could block or replace the other's instances.
    """
    names_by_key: dict[str, dict[str, set[str]]] = {}
    for workflow in workflows:
        scopes = names_by_key.setdefault(workflow.unique.key, {}).setdefault(workflow.name, set())
        scopes.add(workflow.unique.scope)
    problems = []
    for key, names in names_by_key.items():
        if len(names) < 2 or not any("workflow" in scopes for scopes in names.values()):
            continue
        listed = ", ".join(repr(name) for name in sorted(names))
        problems.append(
            f"workflows {listed} share the hx.Unique key {key!r} and scope 'workflow' keeps "
            f"ids per workflow, so their ids {key}::<value> would collide: give each workflow "
            "its own key, e.g. hx.Unique('<name>id')"
        )
    return problems


def check_registry(workflows: Iterable[Workflow]) -> None:
    """Return if ``workflows`` can run in one engine.

    Raises:
        WorkflowDefinitionError: listing every problem :func:`registry_problems` finds.
    """
    problems = registry_problems(workflows)
    if problems:
        raise WorkflowDefinitionError("open_engine(workflows=...)", problems)
