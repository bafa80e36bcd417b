"""SQLiteStorage's schema: a database written by schema 1 still reads, and migrates forward.

``fixtures/sqlite-schema1.sqlite`` was written by this release (schema 1,
snapshot format 1). Never edit or regenerate it: when the schema changes,
add a fixture next to it and keep testing this one. ``python
test_sqlite_schema.py`` writes the current schema's fixture (for a new schema
only).

Later schemas are added as migrations (``_sqlite_schema.MIGRATIONS``); the
tests here run a stand-in for the scale-out one (owner/lease columns, engines
and inbox tables) over the fixture, to show the path works: the data
survives, the writes of this release still work, and a failed migration
leaves the old schema whole.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import trio

from hephaestus import Instance, SQLiteStorage, Status
from hephaestus.storage import _sqlite_schema
from hephaestus.storage._errors import NotAStore

from .test_file_format_fixtures import FRAME1_FORMAT1

FIXTURE = Path(__file__).with_name("fixtures") / "sqlite-schema1.sqlite"
SECOND = Instance(id="k::plain", workflow="tiny", version=1, status=Status.WAITING, revision=2)

SCALE_OUT = """
    ALTER TABLE instances ADD COLUMN owner TEXT;
    ALTER TABLE instances ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE engines (engine_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL,
                          heartbeat_at REAL NOT NULL);
    CREATE TABLE inbox (instance_id TEXT NOT NULL, dedupe_key TEXT, event TEXT NOT NULL,
                        payload BLOB, UNIQUE (instance_id, dedupe_key))
"""


@pytest.fixture
def db(tmp_path: Path) -> Path:
    target = tmp_path / "old.sqlite"
    shutil.copyfile(FIXTURE, target)
    return target


def columns(db: Path, table: str) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()


def version(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


async def test_the_schema1_fixture_reads_back(db: Path) -> None:
    assert version(db) == 1
    async with SQLiteStorage(db, read_only=True) as reader:
        assert await reader.query() == [SECOND, FRAME1_FORMAT1]
    async with SQLiteStorage(db) as store:
        assert await store.get(FRAME1_FORMAT1.id) == FRAME1_FORMAT1
        assert [i.id for i in await store.query(status=Status.WAITING)] == [SECOND.id]


async def test_a_later_migration_runs_over_the_fixture_and_keeps_the_data(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite_schema, "MIGRATIONS", [*_sqlite_schema.MIGRATIONS, SCALE_OUT])
    with pytest.raises(NotAStore, match=r"older hephaestus schema 1.*open it once with an engine"):
        async with SQLiteStorage(db, read_only=True):
            pass  # pragma: no cover
    async with SQLiteStorage(db) as store:
        assert await store.query() == [SECOND, FRAME1_FORMAT1]
        updated = Instance(id=SECOND.id, workflow="tiny", version=1, revision=3)
        await store.put(updated, expected_revision=2)  # named columns: still right
        assert await store.get(SECOND.id) == updated
    assert version(db) == 2
    assert columns(db, "instances")[-2:] == ["owner", "lease_epoch"]
    assert columns(db, "inbox") == ["instance_id", "dedupe_key", "event", "payload"]
    async with SQLiteStorage(db, read_only=True) as reader:
        assert await reader.query() == [updated, FRAME1_FORMAT1]


async def test_a_failed_migration_leaves_the_old_schema_whole(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = SCALE_OUT + "; CREATE TABLE instances (id TEXT)"  # fails after the ALTERs ran
    monkeypatch.setattr(_sqlite_schema, "MIGRATIONS", [*_sqlite_schema.MIGRATIONS, broken])
    with pytest.raises(OSError, match="already exists"):
        async with SQLiteStorage(db):
            pass  # pragma: no cover
    assert version(db) == 1
    assert "owner" not in columns(db, "instances")
    assert columns(db, "engines") == []
    monkeypatch.undo()
    async with SQLiteStorage(db) as store:  # and the store still opens and locks again
        assert len(await store.query()) == 2


async def test_a_newer_schema_is_refused(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    for read_only in (False, True):
        with pytest.raises(NotAStore, match="schema 99, newer than this release"):
            async with SQLiteStorage(db, read_only=read_only):
                pass  # pragma: no cover
    assert version(db) == 99


async def test_files_that_are_no_store_are_refused_untouched(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    text = tmp_path / "notes.txt"
    text.write_bytes(b"just some text, no database")
    for path, message in ((foreign, "not a hephaestus store"), (text, "not an SQLite database")):
        before = path.read_bytes()
        for read_only in (False, True):
            with pytest.raises(NotAStore, match=message):
                async with SQLiteStorage(path, read_only=read_only):
                    pass  # pragma: no cover
        assert path.read_bytes() == before


def write_current_fixture() -> None:
    """Write the fixture of the current schema (run by hand, for a new schema only)."""
    target = FIXTURE.with_name(f"sqlite-schema{_sqlite_schema.schema_version()}.sqlite")

    async def write() -> None:
        async with SQLiteStorage(target) as store:
            await store.put(FRAME1_FORMAT1)
            await store.put(SECOND)

    trio.run(write)
    Path(f"{target}.lock").unlink()


if __name__ == "__main__":
    write_current_fixture()
