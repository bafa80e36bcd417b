"""Changed definitions: does a stored instance still fit its registered workflow?

A workflow's graph has a fingerprint, and every snapshot records the
fingerprint of the graph that wrote it. When they are equal the instance fits.
When they differ (the definition was edited without a new version, or the
snapshot predates fingerprints) the stored state is checked name by name: an
instance whose state names a step or an event that the definition lacks cannot
be run by it, and the engine leaves it untouched (DESIGN.md "Definitions").
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from ._errors import DefinitionChanged
from ._model import Instance
from ._steps import TIMEOUT_EVENT

if TYPE_CHECKING:
    from ._workflow import Workflow


def graph_fingerprint(workflow: Workflow) -> str:
    """Return a short digest of ``workflow``'s graph: steps, events, transitions, start.

    Equal graphs give equal fingerprints whatever order they were declared in;
    step code, retry policies, timeouts and configs are not part of it.
    """
    parts = [f"start {workflow.start.key}"]
    for key in sorted(workflow.steps):
        parts.append(f"step {key} {' '.join(sorted(workflow.steps[key].events))}")
    for source, event in sorted(workflow.edges):
        edge = workflow.edges[(source, event)]
        kind = "done" if edge.done else ("route" if edge.route is not None else "to")
        parts.append(f"edge {source} {event} {kind} {' '.join(sorted(edge.target_keys))}")
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=8).hexdigest()


def definition_problems(workflow: Workflow, instance: Instance) -> list[str]:
    """Return the steps and events ``instance``'s state names that ``workflow`` lacks.

    Empty when the instance fits (always when its recorded fingerprint is the
    workflow's). History entries are a record of the past and are not checked.
    """
    if instance.graph == workflow.fingerprint:
        return []
    steps = workflow.steps
    named = {
        *instance.active,
        *instance.completed,
        *instance.waiting,
        *instance.results,
        *instance.attempts,
        *instance.failures,
        *instance.configs,
        *instance.fired,
        *(source for sources in instance.fired.values() for source in sources),
        *(timer.step for timer in instance.timers),
        *(queued.step for queued in instance.inbox if queued.step is not None),
    }
    problems = [f"step {key!r}" for key in sorted(named - set(steps))]
    events: set[tuple[str, str]] = set()
    for key, accepted in instance.waiting.items():
        events.update((key, event) for event in accepted)
    for timer in instance.timers:
        if timer.kind != "retry":
            events.add((timer.step, TIMEOUT_EVENT))
    for key, event in sorted(events):
        if key in steps and event not in steps[key].events:
            problems.append(f"event {event!r} of step {key!r}")
    declared = {event for step in steps.values() for event in step.events}
    for queued in instance.inbox:
        if queued.step is None:
            known: Collection[str] = declared
        elif queued.step in steps:
            known = steps[queued.step].events
        else:
            continue  # reported above as a step the definition lacks
        if queued.event not in known:
            problems.append(f"inbox event {queued.event!r}")
    return problems


def definition_changed(
    workflow: Workflow, instance: Instance, problems: Sequence[str]
) -> DefinitionChanged:
    """Return the error for a request about ``instance``, which ``workflow`` cannot run."""
    return DefinitionChanged(
        f"instance {instance.id!r} does not fit the registered definition of workflow "
        f"{workflow.name!r} v{workflow.version}: its stored state names "
        f"{', '.join(problems)}, which that definition lacks. Register the old definition "
        f"under its version ({instance.version}) and the new one under a new version "
        f"(version={workflow.version + 1}); the instance is left untouched until then"
    )


def check_definition(workflow: Workflow, instance: Instance) -> None:
    """Return if ``workflow`` can run ``instance``.

    Raises:
        DefinitionChanged: naming what the instance's state holds that
            ``workflow`` lacks, and saying how to register both definitions.
    """
    problems = definition_problems(workflow, instance)
    if problems:
        raise definition_changed(workflow, instance, problems)
