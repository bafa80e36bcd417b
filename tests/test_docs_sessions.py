"""Shell sessions pasted into the docs are replayed, so their output cannot rot.

A ```console block right after ``<!-- session -->`` is a session. Every ``$ ``
line in it is run, in a temporary directory that all sessions of one page
share, in page order, and that holds a copy of ``docs/examples/shop.py``; the
lines up to the next ``$ `` must be what the command printed (stdout, then
stderr). Timestamps differ from run to run, so they are compared as
placeholders. ``$ hephaestus ARGS`` runs the real entry point in process; any
other command (``python shop.py ...``, with ``NAME=value`` words before it as
its environment) runs as a subprocess.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from test_docs import DOCS, extract_blocks

from hephaestus.cli import main

EXAMPLES = DOCS / "examples"
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")


class Step(NamedTuple):
    line: int
    command: str
    expected: str


def sessions(page: Path) -> list[list[Step]]:
    """Return the sessions of ``page``: each a list of commands with their expected output."""
    found = []
    for block in extract_blocks(page.read_text()):
        if block.before != "<!-- session -->":
            continue
        assert block.info == "console", f"{page.name}:{block.line}: a session is a console block"
        steps: list[Step] = []
        for offset, text in enumerate(block.code.splitlines()):
            if text.startswith("$ "):
                steps.append(Step(block.line + 1 + offset, text[2:], ""))
            else:
                assert steps, f"{page.name}:{block.line}: a session starts with a '$ ' line"
                last = steps[-1]
                steps[-1] = last._replace(expected=last.expected + text + "\n")
        found.append(steps)
    return found


def normalise(text: str) -> str:
    return _TIME.sub("<time>", text)


PAGES = [p for p in sorted(DOCS.glob("*.md")) if sessions(p)]


def test_there_are_sessions() -> None:
    assert {p.name for p in PAGES} >= {"cli.md", "operations.md"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pasted_sessions_replay(
    page: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for example in EXAMPLES.glob("*.py"):
        shutil.copy(example, tmp_path / example.name)
    monkeypatch.chdir(tmp_path)
    for session in sessions(page):
        for step in session:
            words = shlex.split(step.command)
            env = {}
            while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            if words[0] == "hephaestus":
                assert not env, f"{page.name}:{step.line}: no environment for in-process runs"
                capsys.readouterr()
                main(words[1:])
                out, err = capsys.readouterr()
                printed = out + err
            else:
                assert words[0] == "python", f"{page.name}:{step.line}: {step.command}"
                proc = subprocess.run(
                    [sys.executable, *words[1:]],
                    capture_output=True,
                    text=True,
                    env={**os.environ, **env},
                    cwd=tmp_path,
                    timeout=60,
                    check=False,
                )
                printed = proc.stdout + proc.stderr
            assert normalise(printed) == normalise(step.expected), (
                f"{page.name}:{step.line}: $ {step.command}"
            )


def test_a_session_block_is_parsed_into_commands_and_output(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "<!-- session -->\n```console\n$ hephaestus --version\nhephaestus 1\n$ python x.py\n```\n"
    )
    [[first, second]] = sessions(page)
    assert first == Step(3, "hephaestus --version", "hephaestus 1\n")
    assert second == Step(5, "python x.py", "")
    assert normalise("at 2026-12-01T09:33:50.052+00:00.") == "at <time>."
