"""Graph renderings of a workflow: mermaid, dot and a layered ASCII drawing.

All three read the same compiled graph (``Workflow.edges``) and list it in
the same stable order: sources in topological order, each source's events in
the order the step declares them, each event's targets in the order the
transition lists them. So the output only changes when the workflow does.

Conventions shared by every format:

- every transition is an edge labelled with its event; a fan-out is several
  edges with the same label, a join is a step with several incoming edges;
- an edge produced by an ``hx.Route`` is *dynamic*: it is drawn dashed (dotted
  in ASCII) to every target the route may choose;
- ``hx.Done`` is one terminal node shared by every path that ends;
- an ``hx.SubWorkflow`` step is drawn as a subroutine, with a dotted
  ``starts`` link to a node naming the child workflow it runs.

Pure: no I/O, no trio.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    from ._workflow import Workflow

DONE_LABEL: Final = "Done"


class GraphEdge(NamedTuple):
    """One drawn edge: ``target`` is a step key, or None for ``hx.Done``."""

    source: str
    event: str
    target: str | None
    dynamic: bool
    config: dict[str, Any] | None


def iter_edges(workflow: Workflow) -> Iterator[GraphEdge]:
    """Yield every edge of ``workflow`` in the stable drawing order."""
    for source in workflow.topo_order:
        for event in workflow.steps[source].events:
            edge = workflow.edges.get((source, event))
            if edge is None:  # pragma: no cover - validation requires every event's edge
                continue
            if edge.done:
                yield GraphEdge(source, event, None, False, None)
                continue
            dynamic = edge.route is not None
            for target, config in edge.targets:
                yield GraphEdge(source, event, target, dynamic, config)


def layers(workflow: Workflow) -> list[list[str]]:
    """Group step keys by topological layer: the longest path from the start step.

    Within a layer, steps keep their topological order.
    """
    depth: dict[str, int] = {}
    for key in workflow.topo_order:
        preds = workflow.predecessors[key]
        depth[key] = 1 + max((depth[p] for p in preds), default=-1)
    grouped: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for key in workflow.topo_order:
        grouped[depth[key]].append(key)
    return grouped


def child_label(workflow: Workflow, key: str) -> str:
    """Name the child workflow that SubWorkflow step ``key`` starts (``name v1`` for an object)."""
    spec = workflow.children[key]
    child = spec.workflow
    return child if isinstance(child, str) else f"{child.name} v{child.version}"


def _joins(workflow: Workflow) -> list[str]:
    return [key for key in workflow.topo_order if len(workflow.predecessors[key]) > 1]


def _has_done(workflow: Workflow) -> bool:
    return any(edge.done for edge in workflow.edges.values())


# -- mermaid -----------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    # Inside "..." mermaid understands HTML entity codes written as #name;
    return (
        text.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    )


def _mermaid_id(key: str | None) -> str:
    # A prefix keeps ids clear of mermaid keywords ("end", "graph", ...) and of
    # edge syntax ("--o" / "--x" when an id starts with o or x).
    return "done" if key is None else f"s_{key}"


def to_mermaid(workflow: Workflow) -> str:
    """Return the workflow as a mermaid ``flowchart`` (top to bottom).

    Steps are boxes, ``hx.Done`` is a double circle, ``hx.Route`` edges are
    dotted (``-.->``); the start step and join steps get the ``start`` and
    ``join`` classes.
    """
    lines = [
        "---",
        # JSON strings are valid YAML: a name with ':' or '#' cannot break the front matter.
        f"title: {json.dumps(f'{workflow.name} v{workflow.version}')}",
        "---",
        "flowchart TD",
    ]
    for key in workflow.topo_order:
        text = _mermaid_text(key)
        shape = f'[["{text}"]]' if key in workflow.children else f'["{text}"]'
        lines.append(f"    {_mermaid_id(key)}{shape}")
    for key in workflow.topo_order:
        if key in workflow.children:
            label = _mermaid_text(f"workflow {child_label(workflow, key)}")
            lines.append(f'    c_{key}[/"{label}"/]')
            lines.append(f'    {_mermaid_id(key)} -.->|"starts"| c_{key}')
    if _has_done(workflow):
        lines.append(f'    {_mermaid_id(None)}((("{DONE_LABEL}")))')
    for edge in iter_edges(workflow):
        arrow = "-.->" if edge.dynamic else "-->"
        lines.append(
            f'    {_mermaid_id(edge.source)} {arrow}|"{_mermaid_text(edge.event)}"| '
            f"{_mermaid_id(edge.target)}"
        )
    lines.append("    classDef start stroke-width:3px")
    lines.append(f"    class {_mermaid_id(workflow.start.key)} start")
    joins = _joins(workflow)
    if joins:
        lines.append("    classDef join stroke-width:2px,fill:#eef")
        lines.append(f"    class {','.join(_mermaid_id(k) for k in joins)} join")
    children = [k for k in workflow.topo_order if k in workflow.children]
    if children:
        lines.append("    classDef child stroke-dasharray:4 2")
        lines.append(f"    class {','.join(f'c_{k}' for k in children)} child")
    return "\n".join(lines) + "\n"


# -- dot -------------------------------------------------------------------------------


def _dot_text(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


_DOT_DONE: Final = '"__done__"'  # step keys start with a letter: no clash


def to_dot(workflow: Workflow) -> str:
    """Return the workflow in Graphviz dot syntax (``dot -Tsvg`` draws it).

    Steps are rounded boxes (the start step in bold, join steps with a double
    border), ``hx.Done`` is a double circle, ``hx.Route`` edges are dashed.
    """
    joins = set(_joins(workflow))
    lines = [
        f"digraph {_dot_text(workflow.name)} {{",
        f"    label={_dot_text(f'{workflow.name} v{workflow.version}')};",
        "    labelloc=t;",
        "    rankdir=TB;",
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
    ]
    for key in workflow.topo_order:
        attrs: list[str] = []
        if key == workflow.start.key:
            attrs.append("penwidth=2")
        if key in joins:
            attrs.append("peripheries=2")
        if key in workflow.children:
            attrs.append("shape=component")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"    {_dot_text(key)}{suffix};")
    for key in workflow.topo_order:
        if key in workflow.children:
            node = _dot_text(f"__child__{key}")  # step keys start with a letter: no clash
            label = _dot_text(f"workflow {child_label(workflow, key)}")
            lines.append(f"    {node} [label={label}, shape=folder, style=dashed];")
            lines.append(f'    {_dot_text(key)} -> {node} [label="starts", style=dotted];')
    if _has_done(workflow):
        lines.append(f"    {_DOT_DONE} [label={_dot_text(DONE_LABEL)}, shape=doublecircle];")
    for edge in iter_edges(workflow):
        target = _DOT_DONE if edge.target is None else _dot_text(edge.target)
        attrs = [f"label={_dot_text(edge.event)}"]
        if edge.dynamic:
            attrs.append("style=dashed")
        lines.append(f"    {_dot_text(edge.source)} -> {target} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- ascii -----------------------------------------------------------------------------


def _config_text(config: dict[str, Any] | None) -> str:
    if config is None:
        return ""
    return " with " + json.dumps(config, sort_keys=True, default=repr)


def to_ascii(workflow: Workflow) -> str:
    """Return a plain-text drawing: steps by topological layer, each with its edges.

    Each step is followed by one line per outgoing edge: ``--event--> target``
    for a fixed transition, ``..event..> target`` for a target an ``hx.Route``
    may choose. ``[Done]`` ends a path. Steps are annotated with ``start``,
    ``join: <predecessors>``, their retry policy and attempt timeout.
    """
    joins = set(_joins(workflow))
    by_source: dict[str, list[GraphEdge]] = {}
    for edge in iter_edges(workflow):
        by_source.setdefault(edge.source, []).append(edge)

    title = f"workflow {workflow.name} v{workflow.version}"
    lines = [title, "=" * len(title)]
    for number, layer in enumerate(layers(workflow)):
        lines.append("")
        lines.append(f"layer {number}")
        for key in layer:
            step = workflow.steps[key]
            notes: list[str] = []
            if key == workflow.start.key:
                notes.append("start")
            if key in joins:
                notes.append("join: " + ", ".join(sorted(workflow.predecessors[key])))
            if step.retry is not None:
                notes.append(f"retry: {step.retry.max_attempts} attempts, {step.retry.backoff}")
            if step.timeout is not None:
                notes.append(f"timeout: {step.timeout:g}s")
            if key in workflow.children:
                notes.append(f"subworkflow: {child_label(workflow, key)}")
            lines.append(f"  {key}" + (f"  ({'; '.join(notes)})" if notes else ""))
            if key in workflow.children:
                lines.append(f"    ==starts==> workflow {child_label(workflow, key)}")
            for edge in by_source.get(key, []):
                target = f"[{DONE_LABEL}]" if edge.target is None else edge.target
                config = _config_text(edge.config)
                if edge.dynamic:
                    lines.append(f"    ..{edge.event}..> {target}{config}  (route)")
                else:
                    lines.append(f"    --{edge.event}--> {target}{config}")
    lines.append("")
    legend = "legend: --event--> transition, ..event..> possible hx.Route choice"
    if workflow.children:
        legend += ", ==starts==> child of an hx.SubWorkflow"
    lines.append(legend)
    return "\n".join(lines) + "\n"
