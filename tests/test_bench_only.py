"""``python -m bench --only`` rewrites its own sections of the report and keeps the others."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_an_only_run_keeps_the_sections_it_did_not_run(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from bench._harness import Config, Section
        from bench._report import earlier_sections, markdown_section, render_markdown
    finally:
        sys.path.remove(str(ROOT))
    report = tmp_path / "benchmarks.md"
    first = render_markdown(
        [Section("Alpha", notes=["alpha one"]), Section("Beta", notes=["beta one"])],
        Config(repeats=5),
        60.0,
        "python -m bench",
    )
    report.write_text(first, encoding="utf-8")
    kept = earlier_sections(report)
    assert "python -m bench" in kept[0]
    assert [block.splitlines()[0] for block in kept[1]] == ["## Alpha", "## Beta"]
    second = render_markdown(
        [Section("Beta", notes=["beta two"]), Section("Gamma")],
        Config(repeats=3),
        6.0,
        "python -m bench --only beta,gamma",
        None,
        kept,
    )
    titles = [line for line in second.splitlines() if line.startswith("## ")]
    assert titles == ["## Alpha", "## Beta", "## Gamma"]
    assert "alpha one" in second
    assert "beta one" not in second
    assert "beta two" in second
    assert second.count("Kept from an earlier run") == 1  # Alpha only
    assert markdown_section(Section("Gamma")) in second
