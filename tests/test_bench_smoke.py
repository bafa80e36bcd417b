"""The benchmark suite still runs end to end (tiny N, one run): it cannot rot unnoticed.

Nothing here looks at a figure: the machine running the tests says nothing
about the engine's speed. It checks that every scenario group ran, produced
rows or said why it skipped, and wrote no report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = (
    "(scenarios 1, 2, 9)",
    "(scenarios 3, 5, 8)",
    "(scenario 4)",
    "(scenario 5)",
    "(scenario 6",
    "(scenario 7)",
)


@pytest.mark.skipif(not (ROOT / "bench" / "__main__.py").exists(), reason="no bench/ checkout")
def test_bench_smoke_runs_every_scenario(tmp_path: Path) -> None:
    report = ROOT / "docs" / "benchmarks.md"
    before = report.read_bytes() if report.exists() else None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--no-write",
            "--quiet",
            "--tmp-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for title in SECTIONS:
        assert title in proc.stdout, f"no section {title!r} in:\n{proc.stdout}"
    assert "FAILED" not in proc.stdout
    for case in ("N=5, CPU time", "resident (RSS)", "resident: until it serves"):
        assert case in proc.stdout, f"no row {case!r} in:\n{proc.stdout}"
    # passivated rows have figures, or say that this build cannot passivate
    assert "passivated (RSS)" in proc.stdout or "(not supported by this build)" in proc.stdout
    assert "SMOKE" in proc.stdout
    assert (report.read_bytes() if report.exists() else None) == before
    assert not any(tmp_path.iterdir()), "the suite left files behind"


def test_bench_markdown_renders_a_row() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from bench._harness import Config, Row, Section, Stat
        from bench._report import render_markdown
    finally:
        sys.path.remove(str(ROOT))
    section = Section(
        "demo",
        rows=[
            Row(
                "1",
                "case",
                Stat.of([1.0, 2.0, 3.0]),
                "inst/s",
                baseline=Stat.one(4.0),
                ratio=Stat.of([2.0, 4.0]),
            )
        ],
    )
    text = render_markdown([section], Config(repeats=3), 1.0, "python -m bench")
    assert "| 1 | case | 2.00 inst/s | 1.00-3.00 | 4.00 inst/s | 3.00 x | 2.00-4.00 |" in text
    assert "Python" in text
    assert "cores" in text


def test_bench_keeps_the_peers_block(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from bench._harness import Config, Row, Section, Stat
        from bench._report import peers_block, render_markdown
        from bench.peers import write_block
    finally:
        sys.path.remove(str(ROOT))
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\nold table\n", encoding="utf-8")
    peers = Section(
        "Peers",
        rows=[
            Row(
                "peer",
                "durable",
                Stat.one(700.0),
                "wf/s",
                baseline=Stat.one(70.0),
                ratio=Stat.one(10.0),
            )
        ],
    )
    write_block(report, peers, Config(repeats=1), "python -m bench.peers")
    write_block(report, peers, Config(repeats=1), "python -m bench.peers")
    kept = peers_block(report)
    assert kept is not None
    assert kept.count("| peer | durable |") == 1
    fresh = render_markdown([Section("new")], Config(), 1.0, "python -m bench", kept)
    assert "old table" not in fresh
    assert kept in fresh


def test_bench_passes_passivate_after_only_to_a_build_that_takes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from bench import _passivation
    finally:
        sys.path.remove(str(ROOT))
    monkeypatch.setattr(_passivation, "SUPPORTED", True)
    assert _passivation.modes() == ("passivated", "resident")
    assert _passivation.engine_options("passivated") == {"passivate_after": 0.0}
    assert _passivation.engine_options("resident") == {"passivate_after": None}
    monkeypatch.setattr(_passivation, "SUPPORTED", False)
    assert _passivation.modes() == ("resident",)
    assert _passivation.engine_options("resident") == {}
    with pytest.raises(ValueError, match="not supported by this build"):
        _passivation.engine_options("passivated")
    with pytest.raises(ValueError, match="choose one of"):
        _passivation.engine_options("sometimes")
