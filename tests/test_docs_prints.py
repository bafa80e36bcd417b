"""Pages that show what their examples print: the printed text must be the real output.

On ``subworkflows.md`` and ``max-active.md`` a python block followed by
"prints" and a ``text`` block must print exactly that text, and the pasted
mermaid diagram must be what ``to_mermaid`` renders.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from test_docs import DOCS, extract_blocks

PAGES = ("subworkflows.md", "max-active.md")


def run_page(page: Path) -> tuple[dict[str, object], list[tuple[str, str, int]]]:
    """Run the page's python blocks; return the namespace and (expected, printed, line)."""
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    checks: list[tuple[str, str, int]] = []
    blocks = extract_blocks(page.read_text())
    for index, block in enumerate(blocks):
        if block.info.split(" ")[0] != "python" or block.skipped:
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block.code, f"{page.name}:{block.line}", "exec"), namespace)
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        if following is not None and following.info == "text" and following.before == "prints":
            checks.append((following.code, out.getvalue(), block.line))
    return namespace, checks


@pytest.mark.parametrize("name", PAGES)
def test_printed_output_is_the_real_output(name: str) -> None:
    _, checks = run_page(DOCS / name)
    assert checks
    for expected, printed, line in checks:
        assert printed == expected, f"{name}:{line}"


def test_the_subworkflow_diagram_is_what_to_mermaid_renders() -> None:
    page = DOCS / "subworkflows.md"
    namespace, _ = run_page(page)
    [diagram] = [b.code for b in extract_blocks(page.read_text()) if b.info == "mermaid"]
    assert diagram == namespace["order"].to_mermaid()  # type: ignore[attr-defined]
