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


def child_problems(workflows: Iterable[Workflow]) -> list[str]:
    """Return what is wrong with the ``hx.SubWorkflow`` steps of ``workflows`` (empty if nothing).

    Every child workflow must be registered (the very object, when the step
    names a Workflow rather than a name), and no workflow may contain itself
    through its children: the graph of "has a SubWorkflow step starting" over
    workflow names must be acyclic.
    """
    registered = list(workflows)
    by_name: dict[str, list[Workflow]] = {}
    for workflow in registered:
        by_name.setdefault(workflow.name, []).append(workflow)
    problems: list[str] = []
    contains: dict[str, set[str]] = {name: set() for name in by_name}
    for workflow in registered:
        for key, spec in workflow.children.items():
            wanted = spec.workflow
            where = f"step {key!r} of workflow {workflow.name!r} v{workflow.version}"
            if spec.name not in by_name:
                problems.append(
                    f"{where} starts workflow {spec.name!r}, which is not registered: "
                    "pass it in open_engine(workflows=[...]) too"
                )
                continue
            if not isinstance(wanted, str) and not any(w is wanted for w in by_name[spec.name]):
                problems.append(
                    f"{where} starts a workflow object {spec.name!r} v{wanted.version} that is "
                    "not the one registered under that name and version: register that object"
                )
                continue
            contains[workflow.name].add(spec.name)
    problems.extend(_cycles(contains))
    return problems


def _cycles(contains: dict[str, set[str]]) -> list[str]:
    """One problem per workflow that can reach itself through SubWorkflow steps."""
    problems = []
    for name in sorted(contains):
        path = _path_back(contains, name)
        if path is not None:
            problems.append(
                "workflow "
                + " -> ".join(repr(n) for n in path)
                + " contains itself through hx.SubWorkflow steps: a workflow cannot start "
                "itself, directly or through others"
            )
    return problems


def _path_back(contains: dict[str, set[str]], start: str) -> list[str] | None:
    """A path of names from ``start`` back to itself, or None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        name, path = stack.pop()
        for nxt in sorted(contains.get(name, ())):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def check_registry(workflows: Iterable[Workflow]) -> None:
    """Return if ``workflows`` can run in one engine.

    Raises:
        WorkflowDefinitionError: listing every problem :func:`registry_problems`
            and :func:`child_problems` find.
    """
    registered = list(workflows)
    problems = [*registry_problems(registered), *child_problems(registered)]
    if problems:
        raise WorkflowDefinitionError("open_engine(workflows=...)", problems)
