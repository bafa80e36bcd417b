"""``max_active``: which workflows are limited, and in what order waiting instances go in.

A workflow with ``max_active=n`` has at most ``n`` instances admitted
(RUNNING or WAITING) at once, all its versions together; the limit is the one
of its highest registered version. Instances started beyond it are stored
PENDING and admitted first come first served: by ``created_at``, then by the
``sequence`` the engine gave them when they were started (both stored, so the
order survives restarts), then by id.

On a shared storage the store applies these rules for every engine at once
(``SharedStorage.put_limited``): the limit is the writer's :func:`limits`,
a slot is what :func:`holds_slot` says, and the queue runs in the order the
store stored the PENDING instances, since the engines' start sequences tie
across engines.

Pure: no I/O, no trio.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._model import Instance, Status
from ._workflow import Workflow


def limits(workflows: Iterable[Workflow]) -> dict[str, int]:
    """Return ``max_active`` by workflow name, from each name's highest version (limited only)."""
    latest: dict[str, Workflow] = {}
    for workflow in workflows:
        known = latest.get(workflow.name)
        if known is None or known.version < workflow.version:
            latest[workflow.name] = workflow
    return {
        name: workflow.max_active
        for name, workflow in latest.items()
        if workflow.max_active is not None
    }


def queue_key(instance: Instance) -> tuple[float, int, str]:
    """Return the sort key of a PENDING instance in its workflow's admission queue."""
    return (instance.created_at, instance.sequence, instance.id)


def holds_slot(instance: Instance) -> bool:
    """True when ``instance`` counts against its workflow's ``max_active`` (it was admitted)."""
    return instance.status in (Status.RUNNING, Status.WAITING)
