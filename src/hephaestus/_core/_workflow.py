"""Workflows: a validated, acyclic graph of steps joined by events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, final

from ._definitions import graph_fingerprint
from ._errors import WorkflowDefinitionError
from ._ids import Unique
from ._steps import Route, Step, Target, _DoneType
from ._subworkflow import ChildSpec, child_spec


@final
class Edge:
    """What one ``(step, event)`` transition leads to, in terms of step keys."""

    __slots__ = ("done", "route", "targets")

    def __init__(
        self,
        targets: tuple[tuple[str, dict[str, Any] | None], ...],
        *,
        done: bool = False,
        route: Route | None = None,
    ) -> None:
        self.targets = targets  # (step key, config); for a Route: every allowed target
        self.done = done
        self.route = route

    @property
    def target_keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.targets)


def _describe(obj: object) -> str:
    if isinstance(obj, Step):
        return f"step {obj.key!r}"
    return repr(obj)


@final
class Workflow:
    """A named, versioned graph of steps.

    The constructor validates the whole graph and reports every problem at
    once.

    Raises:
        WorkflowDefinitionError: with ``problems`` listing cycles, steps
            unreachable from ``start``, paths that do not end in ``hx.Done``,
            two steps sharing a key, declared events without a transition,
            transitions on undeclared events, malformed targets, a
            ``max_active`` that is not a positive int, and an ``hx.SubWorkflow``
            step that starts this very workflow.
    """

    __slots__ = (
        "children",
        "edges",
        "fingerprint",
        "max_active",
        "name",
        "predecessors",
        "start",
        "steps",
        "successors",
        "topo_order",
        "unique",
        "version",
    )

    name: str
    version: int
    unique: Unique
    start: Step
    steps: Mapping[str, Step]
    edges: Mapping[tuple[str, str], Edge]
    successors: Mapping[str, frozenset[str]]
    predecessors: Mapping[str, frozenset[str]]
    topo_order: tuple[str, ...]
    fingerprint: str
    """A digest of the graph (steps, their events, the transitions, the start step)."""
    max_active: int | None
    """At most this many instances (all versions) admitted at once; None: no limit."""
    children: Mapping[str, ChildSpec]
    """The ``hx.SubWorkflow`` steps, by key: what each starts."""

    def __init__(
        self,
        name: str,
        *,
        start: Step,
        transitions: Mapping[tuple[Step, str], object] | Iterable[tuple[tuple[Step, str], object]],
        unique: Unique,
        version: int = 1,
        max_active: int | None = None,
    ) -> None:
        start_problems, steps = _check_start(start)
        compiled = _compile_transitions(steps, transitions)
        successors, predecessors = _links(steps, compiled.edges)
        order, cycle_problems = _check_acyclic(successors)
        problems = [
            *_check_header(name, version, unique),
            *start_problems,
            *compiled.problems,
            *_check_every_event_has_a_transition(steps, compiled.seen),
            *_check_reachable(start, steps, successors),
            *cycle_problems,
            *_check_max_active(max_active),
            *_check_children(name, steps),
        ]
        if problems:
            raise WorkflowDefinitionError(name if isinstance(name, str) else repr(name), problems)

        assert isinstance(start, Step)
        self.name = name
        self.version = version
        self.unique = unique
        self.start = start
        self.steps = steps
        self.edges = compiled.edges
        self.successors = {k: frozenset(v) for k, v in successors.items()}
        self.predecessors = {k: frozenset(v) for k, v in predecessors.items()}
        self.topo_order = tuple(order)
        self.fingerprint = graph_fingerprint(self)
        self.max_active = max_active
        self.children = {
            key: spec for key, s in steps.items() if (spec := child_spec(s)) is not None
        }

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} v{self.version} steps={list(self.steps)!r}>"

    def to_mermaid(self) -> str:
        """Return the graph as a mermaid ``flowchart`` diagram."""
        from ._graph import to_mermaid

        return to_mermaid(self)

    def to_dot(self) -> str:
        """Return the graph in Graphviz dot syntax."""
        from ._graph import to_dot

        return to_dot(self)

    def to_ascii(self) -> str:
        """Return a plain-text drawing of the graph."""
        from ._graph import to_ascii

        return to_ascii(self)


def _topological_order(successors: Mapping[str, set[str]]) -> tuple[list[str], list[str]]:
    """Return (order, cycle): a topological order, or one cycle found when there is none."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(successors, white)
    order: list[str] = []
    for root in successors:
        if color[root] != white:
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(successors[root]))]
        color[root] = grey
        path = [root]
        while stack:
            node, pending = stack[-1]
            if pending:
                nxt = pending.pop()
                if color[nxt] == grey:
                    return [], [*path[path.index(nxt) :], nxt]
                if color[nxt] == white:
                    color[nxt] = grey
                    path.append(nxt)
                    stack.append((nxt, sorted(successors[nxt])))
            else:
                color[node] = black
                order.append(node)
                stack.pop()
                path.pop()
    order.reverse()
    return order, []


# --- the checks behind Workflow(...): each returns its problems, in the order they are listed --


def _check_header(name: object, version: object, unique: object) -> list[str]:
    """Problems with the workflow's name, version and uniqueness key."""
    problems: list[str] = []
    if not isinstance(name, str) or not name:
        problems.append(f"workflow name must be a non-empty string, got {name!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        problems.append(f"version must be an int >= 1, got {version!r}")
    if not isinstance(unique, Unique):
        problems.append(f"unique must be an hx.Unique(...), got {unique!r}")
    return problems


def _check_start(start: object) -> tuple[list[str], dict[str, Step]]:
    """Problems with ``start``, and the step table it begins (its key -> the step)."""
    if isinstance(start, Step):
        return [], {start.key: start}
    if isinstance(start, _DoneType):
        return ["start is hx.Done: a workflow must start with a step"], {}
    return [f"start must be a step, got {start!r}"], {}


@final
class _Steps:
    """The step table being filled while transitions are read; notes key collisions once."""

    __slots__ = ("problems", "steps")

    def __init__(self, steps: dict[str, Step], problems: list[str]) -> None:
        self.steps = steps
        self.problems = problems

    def register(self, step: Step) -> None:
        known = self.steps.setdefault(step.key, step)
        if known is not step:
            message = (
                f"two different steps share the key {step.key!r}: give one of them "
                "another key (key='...')"
            )
            if message not in self.problems:
                self.problems.append(message)


@final
class _Compiled:
    """The transitions read into edges, the pairs seen, and the problems found on the way."""

    __slots__ = ("edges", "problems", "seen")

    def __init__(self) -> None:
        self.edges: dict[tuple[str, str], Edge] = {}
        self.seen: set[tuple[str, str]] = set()  # also the pairs whose target was malformed
        self.problems: list[str] = []


def _compile_transitions(
    steps: dict[str, Step],
    transitions: Mapping[tuple[Step, str], object] | Iterable[tuple[tuple[Step, str], object]],
) -> _Compiled:
    """Read every transition into an edge, adding the steps it names to ``steps``."""
    compiled = _Compiled()
    problems = compiled.problems
    table = _Steps(steps, problems)
    pairs = list(transitions.items()) if isinstance(transitions, Mapping) else list(transitions)
    for pair in pairs:
        try:
            source_key, target = pair
            source, event = source_key
        except (TypeError, ValueError):
            problems.append(f"transition {pair!r} must be ((step, 'event'), target)")
            continue
        if not isinstance(source, Step):
            problems.append(
                f"transition source {_describe(source)} for event {event!r} is not a step"
            )
            continue
        table.register(source)
        if not isinstance(event, str) or not event:
            problems.append(
                f"step {source.key!r}: transition event {event!r} must be a non-empty string"
            )
            continue
        if (source.key, event) in compiled.seen:
            problems.append(
                f"transition ({source.key!r}, {event!r}) is given more than once: keep one"
            )
            continue
        compiled.seen.add((source.key, event))
        if event not in source.events:
            problems.append(
                f"step {source.key!r} has a transition on {event!r}, which it does not "
                f"declare (declared: {list(source.events)!r}): add it to events=... "
                "or remove the transition"
            )
        edge = _compile_target(source.key, event, target, table)
        if edge is not None:
            compiled.edges[(source.key, event)] = edge
    return compiled


def _compile_target(source: str, event: str, target: object, table: _Steps) -> Edge | None:
    """Return the edge ``target`` stands for, or None (its problems noted in ``table``)."""
    where = f"transition ({source!r}, {event!r})"
    problems = table.problems

    def one(item: object) -> tuple[str, dict[str, Any] | None] | None:
        if isinstance(item, Step):
            table.register(item)
            return (item.key, None)
        if isinstance(item, Target):
            if not isinstance(item.step, Step):
                problems.append(f"{where}: Target wraps {item.step!r}, which is not a step")
                return None
            table.register(item.step)
            return (item.step.key, item.config)
        problems.append(
            f"{where}: target {item!r} is not a step, hx.Target, hx.Route, "
            "a list of steps, or hx.Done"
        )
        return None

    if isinstance(target, _DoneType):
        return Edge((), done=True)
    if isinstance(target, Route):
        if not target.targets:
            problems.append(f"{where}: hx.Route has no targets: list the steps it may choose")
            return None
        if not callable(target.choose):
            problems.append(f"{where}: hx.Route choose {target.choose!r} is not callable")
        compiled = [one(item) for item in target.targets]
        if None in compiled:
            return None
        return Edge(tuple(c for c in compiled if c is not None), route=target)
    if isinstance(target, Sequence) and not isinstance(target, str):
        if not target:
            problems.append(f"{where}: empty fan-out list: name at least one step or hx.Done")
            return None
        if any(isinstance(item, _DoneType) for item in target):
            problems.append(
                f"{where}: hx.Done inside a fan-out list: use hx.Done alone to end the path"
            )
            return None
        compiled = [one(item) for item in target]
        if None in compiled:
            return None
        keys = [c[0] for c in compiled if c is not None]
        if len(set(keys)) != len(keys):
            problems.append(f"{where}: fan-out list names the same step twice")
            return None
        return Edge(tuple(c for c in compiled if c is not None))
    single = one(target)
    return None if single is None else Edge((single,))


def _check_every_event_has_a_transition(
    steps: Mapping[str, Step], seen: set[tuple[str, str]]
) -> list[str]:
    """Problems of steps whose declared events lead nowhere."""
    problems: list[str] = []
    for step in steps.values():
        missing = [e for e in step.events if (step.key, e) not in seen]
        if len(missing) == len(step.events) and step.events:
            problems.append(
                f"step {step.key!r} has no transitions, so paths through it never reach "
                f"hx.Done: add transitions for its events {list(step.events)!r}"
            )
        else:
            problems.extend(
                f"step {step.key!r} declares event {e!r} but has no transition for it: "
                "add (step, event) -> target (hx.Done to end there)"
                for e in missing
            )
    return problems


def _links(
    steps: Mapping[str, Step], edges: Mapping[tuple[str, str], Edge]
) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Return each step's successors and predecessors."""
    successors: dict[str, set[str]] = {key: set() for key in steps}
    for (source_key, _), edge in edges.items():
        successors[source_key].update(edge.target_keys)
    predecessors: dict[str, set[str]] = {key: set() for key in steps}
    for source_key, targets in successors.items():
        for target_key in targets:
            predecessors[target_key].add(source_key)
    return successors, predecessors


def _check_reachable(
    start: object, steps: Mapping[str, Step], successors: Mapping[str, set[str]]
) -> list[str]:
    """Problems of steps the start step cannot reach, and of a start step entered again."""
    if not isinstance(start, Step):
        return []
    reachable = {start.key}
    frontier = [start.key]
    while frontier:
        for nxt in successors[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    problems = [
        f"step {key!r} is unreachable from start step {start.key!r}: "
        "add a transition that leads to it or remove it"
        for key in steps
        if key not in reachable
    ]
    if start.key in {t for targets in successors.values() for t in targets}:
        problems.append(
            f"start step {start.key!r} is the target of a transition: "
            "the start step cannot be entered again"
        )
    return problems


def _check_max_active(max_active: object) -> list[str]:
    """The problem of a ``max_active`` that is neither None nor a positive int."""
    if max_active is None or (
        isinstance(max_active, int) and not isinstance(max_active, bool) and max_active >= 1
    ):
        return []
    return [
        f"max_active must be an int >= 1 (how many instances may run at once) or None "
        f"for no limit, got {max_active!r}"
    ]


def _check_children(name: object, steps: Mapping[str, Step]) -> list[str]:
    """Problems of hx.SubWorkflow steps that start the workflow they belong to."""
    return [
        f"step {key!r} is an hx.SubWorkflow of {name!r} itself: a workflow cannot contain "
        "itself (it would start children forever)"
        for key, s in steps.items()
        if (spec := child_spec(s)) is not None and spec.name == name
    ]


def _check_acyclic(successors: Mapping[str, set[str]]) -> tuple[list[str], list[str]]:
    """Return a topological order of the steps, and the problem of a cycle if there is one."""
    order, cycle = _topological_order(successors)
    if not cycle:
        return order, []
    return order, [
        "cycle: "
        + " -> ".join(repr(k) for k in cycle)
        + ": workflows are acyclic; split the loop or use retries"
    ]
