"""Checks on the concurrency limits one engine is given (``open_engine(limiters=...)``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ._errors import WorkflowDefinitionError
from ._workflow import Workflow


def limiter_problems(limiters: object, workflows: Iterable[object]) -> list[str]:
    """Return what is wrong with running ``workflows`` under ``limiters`` (empty if nothing).

    ``limiters`` must map names (non-empty str) to a positive int, and every
    step of ``workflows`` that names a limiter must name one of them. Items
    of ``workflows`` that are no Workflow are left to the engine to refuse.
    """
    if limiters is None:
        limiters = {}
    if not isinstance(limiters, Mapping):
        return [f"limiters must be a dict of limiter name -> int >= 1 (or None), got {limiters!r}"]
    problems = []
    for name, limit in limiters.items():
        if not isinstance(name, str) or not name:
            problems.append(f"limiter name {name!r} must be a non-empty str")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            problems.append(
                f"limiter {name!r} must allow an int >= 1 of attempts at once, got {limit!r}"
            )
    for workflow in workflows:
        if not isinstance(workflow, Workflow):
            continue
        for key, step in workflow.steps.items():
            if step.limiter is not None and step.limiter not in limiters:
                known = ", ".join(repr(n) for n in sorted(map(str, limiters))) or "none"
                problems.append(
                    f"step {key!r} of workflow {workflow.name!r} v{workflow.version} names "
                    f"limiter {step.limiter!r}, which open_engine was not given (given: "
                    f"{known}): pass limiters={{{step.limiter!r}: n}}"
                )
    return problems


def check_limiters(limiters: object, workflows: Iterable[object]) -> dict[str, int]:
    """Return ``limiters`` as a dict if ``workflows`` can run under it.

    Raises:
        WorkflowDefinitionError: listing every problem :func:`limiter_problems` finds.
    """
    problems = limiter_problems(limiters, workflows)
    if problems:
        raise WorkflowDefinitionError("open_engine(limiters=...)", problems)
    return {} if limiters is None else dict(limiters)  # type: ignore[call-overload]
