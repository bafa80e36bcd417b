"""Graph renderings: exact output for a small workflow, and properties of every format."""

from __future__ import annotations

import itertools
import random
import re

import pytest

import hephaestus as hx
from hephaestus._core._graph import iter_edges, layers


@hx.step(events=("valid", "invalid"))
async def validate(ctx: hx.StepContext) -> hx.StepResult:
    return "valid"


@hx.step(events=("charged",), retry=hx.Retry(max_attempts=3))
async def charge(ctx: hx.StepContext) -> hx.StepResult:
    return "charged"


@hx.step(events=("reserved",))
async def reserve(ctx: hx.StepContext) -> hx.StepResult:
    return "reserved"


@hx.step(events=("shipped",), timeout=5)
async def ship(ctx: hx.StepContext) -> hx.StepResult:
    return "shipped"


@hx.step(events=("sent",))
async def notify(ctx: hx.StepContext) -> hx.StepResult:
    return "sent"


@hx.step(events=("gift", "plain"))
async def wrap(ctx: hx.StepContext) -> hx.StepResult:
    return "plain"


def _pick(ctx: hx.StepContext) -> hx.Step:
    return notify


ORDER = hx.Workflow(
    "order",
    start=validate,
    transitions={
        (validate, "valid"): [charge, reserve],
        (validate, "invalid"): hx.Done,
        (charge, "charged"): ship,
        (reserve, "reserved"): ship,
        (ship, "shipped"): hx.Route(_pick, [notify, hx.Target(wrap, {"paper": "red"})]),
        (wrap, "gift"): notify,
        (wrap, "plain"): hx.Done,
        (notify, "sent"): hx.Done,
    },
    unique=hx.Unique("orderid"),
    version=2,
)

MERMAID = """\
---
title: "order v2"
---
flowchart TD
    s_validate["validate"]
    s_charge["charge"]
    s_reserve["reserve"]
    s_ship["ship"]
    s_wrap["wrap"]
    s_notify["notify"]
    done((("Done")))
    s_validate -->|"valid"| s_charge
    s_validate -->|"valid"| s_reserve
    s_validate -->|"invalid"| done
    s_charge -->|"charged"| s_ship
    s_reserve -->|"reserved"| s_ship
    s_ship -.->|"shipped"| s_notify
    s_ship -.->|"shipped"| s_wrap
    s_wrap -->|"gift"| s_notify
    s_wrap -->|"plain"| done
    s_notify -->|"sent"| done
    classDef start stroke-width:3px
    class s_validate start
    classDef join stroke-width:2px,fill:#eef
    class s_ship,s_notify join
"""

DOT = """\
digraph "order" {
    label="order v2";
    labelloc=t;
    rankdir=TB;
    node [shape=box, style=rounded, fontname="Helvetica"];
    edge [fontname="Helvetica", fontsize=10];
    "validate" [penwidth=2];
    "charge";
    "reserve";
    "ship" [peripheries=2];
    "wrap";
    "notify" [peripheries=2];
    "__done__" [label="Done", shape=doublecircle];
    "validate" -> "charge" [label="valid"];
    "validate" -> "reserve" [label="valid"];
    "validate" -> "__done__" [label="invalid"];
    "charge" -> "ship" [label="charged"];
    "reserve" -> "ship" [label="reserved"];
    "ship" -> "notify" [label="shipped", style=dashed];
    "ship" -> "wrap" [label="shipped", style=dashed];
    "wrap" -> "notify" [label="gift"];
    "wrap" -> "__done__" [label="plain"];
    "notify" -> "__done__" [label="sent"];
}
"""

ASCII = """\
workflow order v2
=================

layer 0
  validate  (start)
    --valid--> charge
    --valid--> reserve
    --invalid--> [Done]

layer 1
  charge  (retry: 3 attempts, exponential)
    --charged--> ship
  reserve
    --reserved--> ship

layer 2
  ship  (join: charge, reserve; timeout: 5s)
    ..shipped..> notify  (route)
    ..shipped..> wrap with {"paper": "red"}  (route)

layer 3
  wrap
    --gift--> notify
    --plain--> [Done]

layer 4
  notify  (join: ship, wrap)
    --sent--> [Done]

legend: --event--> transition, ..event..> possible hx.Route choice
"""


def test_mermaid_exact() -> None:
    assert ORDER.to_mermaid() == MERMAID


def test_dot_exact() -> None:
    assert ORDER.to_dot() == DOT


def test_ascii_exact() -> None:
    assert ORDER.to_ascii() == ASCII


def _all_edges(workflow: hx.Workflow) -> set[tuple[str, str, str | None]]:
    """Every (source, event, target) the workflow defines, from its compiled edges."""
    found: set[tuple[str, str, str | None]] = set()
    for (source, event), edge in workflow.edges.items():
        if edge.done:
            found.add((source, event, None))
        found.update((source, event, key) for key in edge.target_keys)
    return found


def _linear(n: int) -> hx.Workflow:
    steps = [hx.step(lambda ctx: "next", events=("next",), key=f"step_{i}") for i in range(n)]
    transitions: dict[tuple[hx.Step, str], object] = {
        (a, "next"): b for a, b in itertools.pairwise(steps)
    }
    transitions[(steps[-1], "next")] = hx.Done
    return hx.Workflow("linear", start=steps[0], transitions=transitions, unique=hx.Unique("x"))


def _diamond_with_awkward_names() -> hx.Workflow:
    # Keys that are mermaid keywords or start with o/x, events with quotes and arrows.
    a = hx.step(lambda ctx: 'say "hi"', events=('say "hi"', "a -> b"), key="end")
    o = hx.step(lambda ctx: "x", events=("x",), key="ops")
    x = hx.step(lambda ctx: "o", events=("o",), key="xray")
    j = hx.step(lambda ctx: "#1", events=("#1",), key="graph")
    return hx.Workflow(
        'we"ird: name',
        start=a,
        transitions={
            (a, 'say "hi"'): [o, x],
            (a, "a -> b"): hx.Route(lambda ctx: j, [j]),
            (o, "x"): j,
            (x, "o"): j,
            (j, "#1"): hx.Done,
        },
        unique=hx.Unique("x"),
    )


def _random_dag(seed: int) -> hx.Workflow:
    """A random valid workflow: every step's events lead to later steps, Done, or a Route."""
    rng = random.Random(seed)
    n = rng.randint(2, 9)
    events = [tuple(f"e{j}" for j in range(rng.randint(1, 3))) for _ in range(n)]
    steps = [hx.step(lambda ctx: "e0", events=events[i], key=f"s{i}") for i in range(n)]
    transitions: dict[tuple[hx.Step, str], object] = {}
    reached = {0}
    for i in range(n):
        for event in events[i]:
            later = list(range(i + 1, n))
            if i + 1 < n and i + 1 not in reached:
                choice: list[int] = [i + 1]  # keep every step reachable
            elif not later or rng.random() < 0.2:
                transitions[(steps[i], event)] = hx.Done
                continue
            else:
                choice = rng.sample(later, rng.randint(1, min(3, len(later))))
            reached.update(choice)
            targets = [steps[j] for j in choice]
            if rng.random() < 0.25:
                transitions[(steps[i], event)] = hx.Route(lambda ctx: [], targets)
            else:
                transitions[(steps[i], event)] = targets if len(targets) > 1 else targets[0]
    return hx.Workflow(
        f"random{seed}", start=steps[0], transitions=transitions, unique=hx.Unique("r")
    )


WORKFLOWS = [
    ORDER,
    _linear(1),
    _linear(5),
    _diamond_with_awkward_names(),
    *(_random_dag(seed) for seed in range(25)),
]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_iter_edges_covers_every_transition_once(workflow: hx.Workflow) -> None:
    drawn = [(e.source, e.event, e.target) for e in iter_edges(workflow)]
    assert len(drawn) == len(set(drawn))
    assert set(drawn) == _all_edges(workflow)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_every_edge_appears_in_ascii(workflow: hx.Workflow) -> None:
    text = workflow.to_ascii()
    blocks: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("  ") and not line.startswith("    "):
            current = line.split()[0]
            blocks[current] = []
        elif line.startswith("    "):
            blocks[current].append(line.strip())
    assert set(blocks) == set(workflow.steps)
    for source, event, target in _all_edges(workflow):
        name = "[Done]" if target is None else target
        dynamic = workflow.edges[(source, event)].route is not None
        prefix = f"..{event}..> {name}" if dynamic else f"--{event}--> {name}"
        assert any(line.startswith(prefix) for line in blocks[source]), (source, event, target)
    edge_lines = sum(len(v) for v in blocks.values())
    assert edge_lines == len(_all_edges(workflow))


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_every_edge_appears_in_dot(workflow: hx.Workflow) -> None:
    text = workflow.to_dot()
    edge_lines = [line for line in text.splitlines() if " -> " in line and "label=" in line]
    assert len(edge_lines) == len(_all_edges(workflow))
    for edge in iter_edges(workflow):
        dashed = ", style=dashed" if edge.dynamic else ""
        assert any(
            line.strip().startswith(f'"{edge.source}" -> ') and dashed in line
            for line in edge_lines
        )
    assert text.count("{") == text.count("}")  # no unescaped brace from a label


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_every_edge_appears_in_mermaid(workflow: hx.Workflow) -> None:
    text = workflow.to_mermaid()
    edges = re.findall(r"^    (s_\w+) (-->|-\.->)\|\"([^\"]*)\"\| (s_\w+|done)$", text, re.M)
    assert len(edges) == len(_all_edges(workflow))
    drawn = {(src[2:], arrow, None if dst == "done" else dst[2:]) for src, arrow, _, dst in edges}
    for edge in iter_edges(workflow):
        arrow = "-.->" if edge.dynamic else "-->"
        assert (edge.source, arrow, edge.target) in drawn
    # No raw quote may appear inside a label: it would end the label early.
    for _, _, label, _ in edges:
        assert '"' not in label


def test_awkward_names_are_escaped() -> None:
    wf = _diamond_with_awkward_names()
    mermaid = wf.to_mermaid()
    assert 's_end -->|"say #quot;hi#quot;"| s_ops' in mermaid
    assert 's_end -.->|"a -#gt; b"| s_graph' in mermaid
    assert 's_graph -->|"#35;1"| done' in mermaid
    assert 'title: "we\\"ird: name v1"' in mermaid
    dot = wf.to_dot()
    assert 'digraph "we\\"ird: name" {' in dot
    assert '"end" -> "ops" [label="say \\"hi\\""];' in dot


def test_done_only_drawn_when_used() -> None:
    wf = _linear(2)
    assert wf.to_mermaid().count('done((("Done")))') == 1
    assert wf.to_dot().count('"__done__" [label="Done"') == 1


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_layers_respect_edges(workflow: hx.Workflow) -> None:
    grouped = layers(workflow)
    depth = {key: i for i, layer in enumerate(grouped) for key in layer}
    assert grouped[0] == [workflow.start.key]
    assert sorted(depth) == sorted(workflow.steps)
    for source, targets in workflow.successors.items():
        for target in targets:
            assert depth[target] > depth[source]


@pytest.mark.parametrize("render", ["to_mermaid", "to_dot", "to_ascii"])
def test_output_is_deterministic(render: str) -> None:
    # The same definition built twice renders byte for byte the same.
    first = getattr(_diamond_with_awkward_names(), render)()
    second = getattr(_diamond_with_awkward_names(), render)()
    assert first == second
    assert first.endswith("\n")
