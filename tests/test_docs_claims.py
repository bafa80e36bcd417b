"""Facts the prose of the docs states about the package, checked against the package."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_install_section_names_exactly_the_declared_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    sentence = re.search(r"the dependencies are (.+?)\.\n", (ROOT / "docs/index.md").read_text())
    assert sentence is not None
    assert set(re.findall(r"`([^`]+)`", sentence.group(1))) == declared


def test_no_page_says_a_finished_id_cannot_be_started_again() -> None:
    """A finished instance's id may be started again (API.md): AlreadyRunning is for active ones."""
    for page in sorted((ROOT / "docs").glob("*.md")):
        text = " ".join(page.read_text().split())
        for match in re.finditer(r"[^.]*raises `hx\.AlreadyRunning`[^.]*\.", text):
            claim = match.group(0)
            assert "active" in claim, f"{page.name}: {claim}"
