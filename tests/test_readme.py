"""The README's example must run as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_one_example_of_at_most_forty_lines() -> None:
    blocks = python_blocks()
    assert len(blocks) == 1
    assert len(blocks[0].splitlines()) <= 40


def test_readme_example_runs_and_prints_the_completed_order() -> None:
    result = subprocess.run(
        [sys.executable, "-c", python_blocks()[0]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "completed {'tracking': '1Z999'}"


def test_readme_first_screen_gives_the_demo_and_test_commands() -> None:
    first_screen = "\n".join(README.read_text().splitlines()[:24])
    assert "hephaestus demo" in first_screen
    assert "nox" in first_screen


def test_ci_runs_the_readme_test_command() -> None:
    readme_line = next(
        line for line in README.read_text().splitlines() if line.endswith("# run the tests")
    )
    command = readme_line.split("#")[0].strip()
    ci_script = (README.parent / ".ci" / "run").read_text()
    assert command in ci_script.splitlines()
