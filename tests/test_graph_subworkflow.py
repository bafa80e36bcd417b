"""The graph renderers draw an hx.SubWorkflow step as a subroutine linking to its child."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import hephaestus as hx

FLOWS = textwrap.dedent("""
    import hephaestus as hx

    @hx.step(events=("ok",))
    async def work(ctx):
        return "ok"

    child = hx.Workflow(
        "child", start=work, transitions={(work, "ok"): hx.Done}, unique=hx.Unique("c")
    )
    sub = hx.SubWorkflow(child, key="sub")
    named = hx.SubWorkflow("other", key="named")

    @hx.step(events=("ok",))
    async def after(ctx):
        return "ok"

    parent = hx.Workflow(
        "parent",
        start=sub,
        transitions={
            (sub, "completed"): after,
            (sub, "failed"): named,
            (sub, "cancelled"): hx.Done,
            (named, "completed"): hx.Done,
            (named, "failed"): hx.Done,
            (named, "cancelled"): hx.Done,
            (after, "ok"): hx.Done,
        },
        unique=hx.Unique("p"),
    )
""")


def parent() -> hx.Workflow:
    space: dict[str, object] = {}
    exec(compile(FLOWS, "flows.py", "exec"), space)
    workflow = space["parent"]
    assert isinstance(workflow, hx.Workflow)
    return workflow


MERMAID = """\
---
title: "parent v1"
---
flowchart TD
    s_sub[["sub"]]
    s_after["after"]
    s_named[["named"]]
    c_sub[/"workflow child v1"/]
    s_sub -.->|"starts"| c_sub
    c_named[/"workflow other"/]
    s_named -.->|"starts"| c_named
    done((("Done")))
"""


def test_mermaid_draws_a_subroutine_and_its_child() -> None:
    text = parent().to_mermaid()
    assert text.startswith(MERMAID)
    assert '    s_sub -->|"failed"| s_named\n' in text
    assert text.endswith("    classDef child stroke-dasharray:4 2\n    class c_sub,c_named child\n")


def test_dot_draws_a_component_and_its_child() -> None:
    text = parent().to_dot()
    assert '    "sub" [penwidth=2, shape=component];\n' in text
    assert '    "named" [shape=component];\n' in text
    assert (
        '    "__child__sub" [label="workflow child v1", shape=folder, style=dashed];\n'
        '    "sub" -> "__child__sub" [label="starts", style=dotted];\n'
    ) in text
    assert '"__child__named" [label="workflow other"' in text


def test_ascii_names_the_child() -> None:
    text = parent().to_ascii()
    assert (
        "  sub  (start; subworkflow: child v1)\n"
        "    ==starts==> workflow child v1\n"
        "    --completed--> after\n"
    ) in text
    assert "  named  (subworkflow: other)\n    ==starts==> workflow other\n" in text
    assert text.endswith(", ==starts==> child of an hx.SubWorkflow\n")


def test_a_workflow_without_children_draws_no_child_nodes() -> None:
    work = hx.step(lambda ctx: "ok", events=("ok",), key="work")
    plain = hx.Workflow(
        "plain", start=work, transitions={(work, "ok"): hx.Done}, unique=hx.Unique("x")
    )
    assert "starts" not in plain.to_mermaid() + plain.to_dot() + plain.to_ascii()


def test_the_cli_ascii_graph_shows_the_child(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(FLOWS)
    proc = subprocess.run(
        [sys.executable, "-m", "hephaestus", "graph", "flows:parent", "--format", "ascii"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == parent().to_ascii()
