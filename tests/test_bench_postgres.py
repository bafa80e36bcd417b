"""The PostgreSQL tables of docs/benchmarks.md: groups of ``python -m bench`` of their own.

``python -m bench.peers`` used to put its PostgreSQL table in the peers block,
where a SQLite-only peers run replaced it (and a PostgreSQL-only one replaced
the SQLite table). Now it is the ``postgres`` group's section of the report,
kept across ``--only`` runs like every other; takeover by TTL is ``scaleout``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_postgres_and_scaleout_are_groups_of_python_m_bench() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "bench", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    assert "postgres" in names
    assert "scaleout" in names


def test_the_postgres_table_and_the_sqlite_peers_table_do_not_replace_each_other(
    tmp_path: Path,
) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from bench import postgres
        from bench._harness import Config, Row, Section, Stat
        from bench.peers import write_results
    finally:
        sys.path.remove(str(ROOT))
    report = tmp_path / "benchmarks.md"

    def table(title: str, case: str, value: float) -> Section:
        row = Row("peer", case, Stat.one(value), "wf/s", baseline=Stat.one(10.0))
        return Section(title, rows=[row])

    sqlite = "Peers: DBOS on SQLite vs SQLiteStorage and FileStorage (durable=True), same disk"
    cfg = Config(repeats=1)
    write_results(report, [table(sqlite, "sqlite one", 1.0)], cfg, "python -m bench.peers")
    write_results(
        report,
        [table(postgres.TITLE, "pg one", 2.0)],
        cfg,
        "python -m bench.peers --only postgres",
    )
    text = report.read_text(encoding="utf-8")
    assert "sqlite one" in text
    assert "pg one" in text
    write_results(
        report,
        [table(sqlite, "sqlite two", 3.0), table(postgres.TITLE, "pg two", 4.0)],
        cfg,
        "python -m bench.peers",
    )
    text = report.read_text(encoding="utf-8")
    assert "sqlite two" in text
    assert "pg two" in text
    assert "sqlite one" not in text
    assert "pg one" not in text
    assert text.count(f"## {postgres.TITLE}") == 1
    write_results(report, [table(sqlite, "sqlite three", 5.0)], cfg, "python -m bench.peers")
    text = report.read_text(encoding="utf-8")
    assert "sqlite three" in text
    assert "pg two" in text  # a SQLite-only run keeps the PostgreSQL table


def test_a_section_kept_through_several_only_runs_names_the_run_that_measured_it(
    tmp_path: Path,
) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from bench._harness import Config, Section
        from bench._report import earlier_sections, render_markdown
    finally:
        sys.path.remove(str(ROOT))
    report = tmp_path / "benchmarks.md"
    report.write_text(
        render_markdown([Section("Alpha", notes=["alpha"])], Config(), 1.0, "run-one"),
        encoding="utf-8",
    )
    for command in ("run-two", "run-three"):
        report.write_text(
            render_markdown(
                [Section(command, notes=[command])],
                Config(),
                1.0,
                command,
                None,
                earlier_sections(report),
            ),
            encoding="utf-8",
        )
    text = report.read_text(encoding="utf-8")
    alpha = text[text.index("## Alpha") : text.index("## run-two")]
    assert alpha.count("Kept from an earlier run") == 1
    assert "run-one" in alpha
    assert "run-two" not in alpha
    two = text[text.index("## run-two") : text.index("## run-three")]
    assert two.count("Kept from an earlier run") == 1
    assert "Command: `run-two`" in two
