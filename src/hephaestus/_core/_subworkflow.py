"""``hx.SubWorkflow``: a built-in step that runs another workflow as a child instance.

The step's code only works out which child it wants (its business value and
initial data, from the parent's context) and returns a :class:`ChildRequest`.
Everything else is the core's decision (``_engine.py``): the parent records
the child's id and suspends the step before anything is started (so a parent
recovered after a crash asks for the same child again, never a second one),
asks the shell to start it (``StartChild``, again on every recovery until the
child's end is recorded), completes the step with the child's final status
when told (``ChildFinished``), and cancels the children of steps still waiting
when the parent is cancelled or fails (``CancelChild``).

Pure: no I/O, no trio.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeAlias, final

import msgspec

from ._codec import stored_copy
from ._errors import InvalidBusinessKey, InvalidResult, WorkflowDefinitionError
from ._ids import ID_SEPARATOR, build_instance_id, check_business_value
from ._steps import Step, StepContext, StepResult, step

if TYPE_CHECKING:
    from ._workflow import Workflow

CHILD_EVENTS: Final = ("completed", "failed", "cancelled")
"""The events a SubWorkflow step ends with: the child's terminal status."""

ChildValue: TypeAlias = "str | Callable[[StepContext], str] | None"
ChildInitial: TypeAlias = (
    "Mapping[str, Any] | Callable[[StepContext], Mapping[str, Any] | None] | None"
)

_LONGEST_VALUE: Final = 128
_NOT_VALUE: Final = re.compile(r"[^A-Za-z0-9_-]")


class ChildRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a SubWorkflow step's code returns: the child it wants started."""

    value: str
    initial: dict[str, Any] | None = None


@final
class ChildSpec:
    """What a SubWorkflow step starts: the child workflow (object or name), value, initial."""

    __slots__ = ("initial", "value", "workflow")

    def __init__(self, workflow: Workflow | str, value: ChildValue, initial: ChildInitial) -> None:
        self.workflow = workflow
        self.value = value
        self.initial = initial

    @property
    def name(self) -> str:
        """The child workflow's name."""
        workflow = self.workflow
        return workflow if isinstance(workflow, str) else workflow.name

    def __repr__(self) -> str:
        return f"ChildSpec({self.name!r})"


_SPECS: Final[weakref.WeakKeyDictionary[Any, ChildSpec]] = weakref.WeakKeyDictionary()


def child_spec(definition: Step) -> ChildSpec | None:
    """Return what ``definition`` starts if it is a SubWorkflow step, else None."""
    return _SPECS.get(definition.fn)


def SubWorkflow(  # noqa: N802 - public factory named as a type
    workflow: Workflow | str,
    *,
    key: str,
    value: ChildValue = None,
    initial: ChildInitial = None,
) -> Step:
    """Return a step that runs ``workflow`` as a child instance and waits until it ends.

    The step ends with ``"completed"``, ``"failed"`` or ``"cancelled"`` (the
    child's final status) and stores ``{"id": child_id, "results":
    child.results}`` as its results. The child is started exactly once per
    attempt of the step, whatever crashes happen: its id is recorded in the
    parent before it is started. Cancelling the parent (or the parent failing
    in another branch) cancels the child.

    Args:
        workflow: the child workflow, or its name (then the highest version
            registered with the engine when the step runs). It must be
            registered in the same ``open_engine``.
        key: the step's key in the parent.
        value: the child's business value: a str, or a function of the
            step's context returning one. By default one derived from the
            parent's id and ``key`` (``orderid-abc123-payment`` for the step
            ``payment`` of ``orderid::abc123``).
        initial: the child's initial data: a dict, or a function of the step's
            context returning one. Default: empty.

    Raises:
        WorkflowDefinitionError: for a bad key, a ``workflow`` that is neither
            a Workflow nor a name, an invalid ``value`` string, or ``value``
            or ``initial`` of the wrong type (or not serialisable).
    """
    from ._workflow import Workflow

    problems: list[str] = []
    if not isinstance(workflow, Workflow) and (not isinstance(workflow, str) or not workflow):
        problems.append(f"workflow must be an hx.Workflow or its name, got {workflow!r}")
    if isinstance(value, str):
        try:
            value = check_business_value(value)
        except InvalidBusinessKey as exc:
            problems.append(f"value: {exc}")
    elif value is not None and not callable(value):
        problems.append(
            f"value must be a str, a function of the step's context, or None; got {value!r}"
        )
    if isinstance(initial, Mapping):
        try:
            initial = stored_copy(dict(initial), "initial")
        except InvalidResult as exc:
            problems.append(str(exc))
    elif initial is not None and not callable(initial):
        problems.append(
            f"initial must be a dict, a function of the step's context, or None; got {initial!r}"
        )
    if problems:
        raise WorkflowDefinitionError(f"step {key}", problems)
    spec = ChildSpec(workflow, value, initial)

    async def start_child(ctx: StepContext) -> StepResult:
        return request_child(spec, ctx)  # type: ignore[return-value]

    made = step(start_child, events=CHILD_EVENTS, key=key)
    _SPECS[start_child] = spec
    return made


def request_child(spec: ChildSpec, ctx: StepContext) -> ChildRequest:
    """Return the child that ``spec`` asks for in the context ``ctx`` (user code runs here).

    Raises:
        InvalidBusinessKey: the value is not a valid business value.
        InvalidResult: ``initial`` gave something that is not a serialisable dict.
        Exception: whatever a ``value`` or ``initial`` function raised.
    """
    chosen = spec.value
    if chosen is None:
        value = default_value(ctx.instance_id, ctx.step)
    elif isinstance(chosen, str):
        value = chosen
    else:
        value = check_business_value(chosen(ctx))
    given = spec.initial
    data = given(ctx) if callable(given) else given
    if data is not None and not isinstance(data, Mapping):
        raise InvalidResult(
            f"SubWorkflow step {ctx.step!r}: initial gave {type(data).__name__}, not a dict"
        )
    initial = stored_copy(None if data is None else dict(data), f"initial of step {ctx.step!r}")
    return ChildRequest(value=value, initial=initial)


def default_value(parent_id: str, key: str) -> str:
    """Return the business value a SubWorkflow step ``key`` of ``parent_id`` gives its child.

    Readable when it fits (``orderid::abc123`` and ``pay`` give
    ``orderid-abc123-pay``), else cut and completed by a digest of both, so two
    parents or steps never share one.
    """
    readable = _NOT_VALUE.sub("-", parent_id.replace(ID_SEPARATOR, "-")) + "-" + key
    if len(readable) <= _LONGEST_VALUE:
        return readable
    digest = hashlib.blake2b(f"{parent_id}\0{key}".encode(), digest_size=8).hexdigest()
    return f"{readable[: _LONGEST_VALUE - len(digest) - 1]}-{digest}"


def child_instance_id(child: Workflow, value: str, parent_id: str, key: str) -> str:
    """Return the id of the child of step ``key`` of ``parent_id`` with business ``value``.

    Deterministic, also under ``Unique(scope="none")``, whose random suffix is
    replaced by a digest of the parent's id and the step.

    Raises:
        InvalidBusinessKey: ``value`` is not a valid business value.
    """
    suffix = None
    if child.unique.scope == "none":
        suffix = hashlib.blake2b(f"{parent_id}\0{key}".encode(), digest_size=4).hexdigest()
    return build_instance_id(child.unique, value, suffix, version=child.version)
