"""Every ```python block in docs/*.md runs, so the documentation cannot rot.

Blocks of one page run in order in one namespace, as a reader would type them.
A block is skipped when its fence carries a title (```python title="app.py"),
for files shown but not run, or when an HTML comment ``<!-- skip -->`` is the
line before it. Async code in a block runs through ``trio.run`` in the block.

Command output pasted into a page is checked too, where it is deterministic: a
block right after ``<!-- output: hephaestus ARGS -->`` must be what that
command prints.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")


class Block(NamedTuple):
    line: int  # 1-based line of the opening fence
    info: str
    code: str
    skipped: bool
    before: str  # the last non-blank line before the fence


def extract_blocks(text: str) -> list[Block]:
    """Return the fenced code blocks of a markdown text, nested in lists or tabs or not."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    previous = ""
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(fence) and lines[i].strip().strip(fence[0]) == ""
        ):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # the closing fence
        skipped = "title=" in info or previous == "<!-- skip -->"
        code = textwrap.dedent("\n".join(body)) + "\n"
        blocks.append(Block(start + 1, info, code, skipped, previous))
        previous = ""
    return blocks


def python_blocks(path: Path) -> list[Block]:
    return [b for b in extract_blocks(path.read_text()) if b.info.split(" ")[0] in ("python", "py")]


PAGES = sorted(DOCS.glob("*.md"))


def test_there_are_pages_with_code() -> None:
    assert PAGES
    assert sum(len([b for b in python_blocks(p) if not b.skipped]) for p in PAGES) >= 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_code_runs(page: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for block in python_blocks(page):
        if block.skipped:
            continue
        code = compile(block.code, f"{page.relative_to(DOCS.parent)}:{block.line}", "exec")
        exec(code, namespace)  # running the documentation is the point


def test_extract_blocks_handles_skips_titles_and_nesting() -> None:
    text = textwrap.dedent("""\
        intro

        ```python
        a = 1
        ```

        <!-- skip -->
        ```python
        raise SystemExit
        ```

        ```python title="app.py"
        raise SystemExit
        ```

        === "Python"

            ```python
            if a:
                b = 2
            ```

        ```sh
        ls
        ```
    """)
    blocks = extract_blocks(text)
    assert [(b.info, b.skipped) for b in blocks] == [
        ("python", False),
        ("python", True),
        ('python title="app.py"', True),
        ("python", False),
        ("sh", False),
    ]
    assert blocks[3].code == "if a:\n    b = 2\n"


def test_index_mermaid_diagram_is_what_to_mermaid_renders() -> None:
    # The diagram on the front page is pasted output: check it is still the real output.
    page = DOCS / "index.md"
    namespace: dict[str, object] = {"__name__": "docs_index"}
    for block in python_blocks(page):
        if not block.skipped:
            exec(compile(block.code, str(page), "exec"), namespace)
    [diagram] = [b.code for b in extract_blocks(page.read_text()) if b.info == "mermaid"]
    order = namespace["order"]
    assert diagram == order.to_mermaid()  # type: ignore[attr-defined]


OUTPUT_MARK = re.compile(r"<!-- output: hephaestus (?P<args>.+) -->")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pasted_command_output_is_current(page: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hephaestus.cli import main

    for block in extract_blocks(page.read_text()):
        mark = OUTPUT_MARK.fullmatch(block.before)
        if mark is None:
            continue
        capsys.readouterr()
        assert main(shlex.split(mark["args"])) == 0
        assert capsys.readouterr().out == block.code, f"{page.name}:{block.line}"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = (DOCS.parent / "mkdocs.yml").read_text()
    nav = re.findall(r"^\s+- [^:\n]+: (\S+\.md)\s*$", config, re.M)
    assert sorted(nav) == sorted(p.name for p in PAGES)
