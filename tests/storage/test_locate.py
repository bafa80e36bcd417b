"""``store_at`` tells an SQLite file from a FileStorage directory from no store; the CLI uses it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from hephaestus import FileStorage, SQLiteStorage, Status
from hephaestus.storage._errors import NotAStore
from hephaestus.storage._locate import store_at

from ._fs_samples import make_instance


async def _fill(store: FileStorage | SQLiteStorage) -> None:
    async with store:
        await store.put(make_instance("orderid::a", status=Status.WAITING))
        await store.put(make_instance("orderid::b", status=Status.COMPLETED))


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path]:
    files, db = tmp_path / "files", tmp_path / "state.sqlite"
    trio.run(_fill, FileStorage(files))
    trio.run(_fill, SQLiteStorage(db))
    return files, db


def test_each_kind_of_store_is_recognised(stores: tuple[Path, Path], tmp_path: Path) -> None:
    files, db = stores
    for read_only in (True, False):
        found = store_at(str(files), read_only=read_only)
        assert isinstance(found, FileStorage)
        assert found.read_only is read_only
        found_db = store_at(str(db), read_only=read_only)
        assert isinstance(found_db, SQLiteStorage)
        assert found_db.read_only is read_only
    empty = tmp_path / "empty-store"
    trio.run(_fill_nothing, empty)  # a new FileStorage that never stored anything
    assert isinstance(store_at(str(empty), read_only=True), FileStorage)
    copied = tmp_path / "copied"  # a copy without the lock file: its snapshots tell
    shutil.copytree(files, copied, ignore=shutil.ignore_patterns("hephaestus.lock"))
    assert isinstance(store_at(str(copied), read_only=True), FileStorage)


async def _fill_nothing(path: Path) -> None:
    async with FileStorage(path):
        pass


def test_what_is_no_store_is_refused_by_name(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "passwd").write_text("root:x:0:0\n")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    cases = {
        tmp_path / "missing": "does not exist",
        junk: "the directory is no FileStorage",
        tmp_path / "nothing": "does not exist",
        text: "not a directory",
        empty: "nor an SQLite database",
    }
    for path, message in cases.items():
        with pytest.raises(NotAStore, match=message) as info:
            store_at(str(path), read_only=True)
        assert str(path) in str(info.value)
        assert isinstance(info.value, ValueError)
    assert os.listdir(junk) == ["passwd"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hephaestus", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_list_and_show_read_an_sqlite_store_and_refuse_a_non_store(
    stores: tuple[Path, Path], tmp_path: Path
) -> None:
    _, db = stores
    listed = _cli("list", "--store", str(db), "--json", "--status", "waiting")
    assert listed.returncode == 0, listed.stderr
    assert [i["id"] for i in json.loads(listed.stdout)] == ["orderid::a"]
    shown = _cli("show", "--store", str(db), "orderid::b")
    assert shown.returncode == 0, shown.stderr
    assert "completed" in shown.stdout
    junk = tmp_path / "etc-like"
    junk.mkdir()
    (junk / "hosts").write_text("127.0.0.1 localhost\n")
    refused = _cli("list", "--store", str(junk))
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.count("\n") == 1
    assert "no store at" in refused.stderr
    assert "is no FileStorage" in refused.stderr


def test_demo_runs_on_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "demo" / "orders.sqlite"
    proc = _cli("demo", "--storage", "sqlite", "--instances", "5", "--store", str(db))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "SQLiteStorage" in proc.stdout
    listed = _cli("list", "--store", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 5
