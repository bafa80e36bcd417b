"""Printed output pasted into the docs is what the code prints.

A ```text block right after a line ``prints`` must be exactly what the
python block before it wrote to stdout, the page's blocks run in order in
one namespace as tests/test_docs.py runs them.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from test_docs import DOCS, extract_blocks

PAGES = sorted(p for p in DOCS.glob("*.md") if "\nprints\n" in p.read_text())


def test_some_pages_show_printed_output() -> None:
    assert {p.name for p in PAGES} >= {"concurrency-limits.md", "schedules.md"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_printed_output_is_real(page: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    printed = ""
    checked = 0
    for block in extract_blocks(page.read_text()):
        if block.info.split(" ")[0] in ("python", "py") and not block.skipped:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(block.code, f"{page.name}:{block.line}", "exec"), namespace)
            printed = out.getvalue()
        elif block.info == "text" and block.before == "prints":
            assert block.code == printed, f"{page.name}:{block.line}"
            checked += 1
    assert checked == page.read_text().count("\nprints\n")
