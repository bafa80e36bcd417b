"""Every exception the library raises on purpose; all derive from HephaestusError."""

from __future__ import annotations

from collections.abc import Sequence


class HephaestusError(Exception):
    """Base class of every error hephaestus raises deliberately."""


class WorkflowDefinitionError(HephaestusError):
    """A workflow graph is invalid.

    ``problems`` lists every problem found, each saying what to change.
    """

    def __init__(self, name: str, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        bullet_list = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"workflow {name!r} has {len(self.problems)} problem(s):\n{bullet_list}")


class InvalidBusinessKey(HephaestusError, ValueError):
    """A business value or unique key does not have the required form."""


class UnknownWorkflow(HephaestusError):
    """No workflow with that name (and version) is registered with the engine."""


class AlreadyRunning(HephaestusError):
    """An active instance already holds the id within the workflow's unique scope."""


class InstanceNotFound(HephaestusError, LookupError):
    """No instance with that id exists in storage."""


class EventRejected(HephaestusError):
    """The instance cannot accept that event or command in its current state."""


class UndeclaredEvent(EventRejected):
    """A step ended with, or was resumed with, an event it does not declare.

    A subclass of EventRejected: resuming with an event that no step of the
    workflow declares is one way an event gets rejected.
    """


class DefinitionChanged(EventRejected):
    """An instance's stored state does not fit its registered workflow definition.

    Its state names steps or events that the definition registered under the
    same name and version lacks, so the engine leaves it untouched. Register
    the old definition under its version and the new one under a new version.
    """


class RunnerFailed(HephaestusError):
    """An instance's runner crashed more often than the engine's restart budget allows.

    The instance is left exactly as stored; a new ``open_engine`` on the same
    storage recovers it again.
    """


class EngineClosed(HephaestusError):
    """The engine shut down before the request was acknowledged."""


class StepTimeout(HephaestusError):
    """A step attempt ran longer than its ``timeout``."""


class InvalidResult(HephaestusError, TypeError):
    """A step returned something that is not a valid step result.

    Raised, for example, for results or metadata that are not
    msgpack-serialisable dicts with string keys.
    """


class RevisionConflict(HephaestusError):
    """The stored revision differs from the ``expected_revision`` of a write."""


class StorageLocked(HephaestusError):
    """Another engine process holds the store's exclusive lock."""


class CorruptSnapshot(HephaestusError):
    """A stored snapshot fails its checksum, is truncated, or cannot be decoded."""
