"""SQLiteStorage beyond the protocol suite: group commit, fences in a batch, faults, readers.

The protocol itself (round trips, queries, paging, compare-and-set, locking,
read-only) is tested in test_storage_protocol.py against every adapter.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx
from hephaestus import RevisionConflict, SQLiteStorage, Status
from hephaestus.storage import _sqlite_writer

from ._fs_samples import make_instance


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite"


def rows(db: Path) -> dict[str, int]:
    """id -> revision, read with a plain sqlite3 connection."""
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT id, revision FROM instances").fetchall())
    finally:
        conn.close()


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


async def test_group_commit_really_groups(db: Path) -> None:
    async with SQLiteStorage(db) as store:
        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(store.put, make_instance(f"orderid::g{n:03}"))
        assert store.commits <= 10, store.commits  # 100 puts in flight: a handful of commits
        assert len(await store.query()) == 100
        before = store.commits
        for n in range(5):  # one at a time: one commit each
            await store.put(make_instance(f"orderid::s{n}"))
        assert store.commits == before + 5


@hx.step(events=("ok",))
async def one(ctx: hx.StepContext) -> hx.StepResult:
    return "ok"


@hx.step(events=("ok",))
async def two(ctx: hx.StepContext) -> hx.StepResult:
    return "ok"


@hx.step(events=("ok",))
async def three(ctx: hx.StepContext) -> hx.StepResult:
    return "ok"


LINEAR = hx.Workflow(
    "linear3",
    start=one,
    transitions={(one, "ok"): two, (two, "ok"): three, (three, "ok"): hx.Done},
    unique=hx.Unique("n"),
)


async def test_an_engine_with_100_in_flight_commits_far_less_than_it_puts(db: Path) -> None:
    puts = {"n": 0}

    def count(event: hx.TelemetryEvent) -> None:
        if event.name in ("workflow.start", "workflow.transition"):
            puts["n"] += 1

    store = SQLiteStorage(db, durable=False)
    async with hx.open_engine(workflows=[LINEAR], storage=store, telemetry=count) as engine:

        async def run(n: int) -> None:
            await engine.wait(await engine.start(LINEAR, str(n)))

        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(run, n)
    assert puts["n"] >= 300
    assert store.commits * 4 <= puts["n"], (store.commits, puts["n"])


async def test_a_conflicting_row_fails_alone_and_the_rest_of_its_batch_commits(db: Path) -> None:
    async with SQLiteStorage(db) as store:
        for n in range(20):
            await store.put(make_instance(f"orderid::c{n:02}", revision=1))
        # Hold SQLite's write lock from outside so that every put below queues up
        # behind the writer's BEGIN and they commit together.
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        commits = store.commits
        outcomes: dict[str, str] = {}

        async def put(n: int) -> None:
            iid = f"orderid::c{n:02}"
            try:
                await store.put(make_instance(iid, revision=2), expected_revision=1 + n % 2)
            except RevisionConflict as exc:
                outcomes[iid] = str(exc)
            else:
                outcomes[iid] = "ok"

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(put, n)
            await trio.testing.wait_all_tasks_blocked()
            blocker.execute("ROLLBACK")
            blocker.close()
        assert store.commits - commits <= 2  # one batch, or the first put alone and the rest
        for n in range(20):
            iid = f"orderid::c{n:02}"
            if n % 2:
                assert "at revision 1, not the expected 2" in outcomes[iid]
            else:
                assert outcomes[iid] == "ok"
    assert rows(db) == {f"orderid::c{n:02}": 1 if n % 2 else 2 for n in range(20)}


class _FailingConnection:
    """Wraps the writer's connection; makes COMMIT fail with an SQLite error code."""

    def __init__(self, conn: sqlite3.Connection, code: int, *, after: bool) -> None:
        self._conn = conn
        self.code = code
        self.after = after  # run the real COMMIT first (the data is there, unacknowledged)
        self.armed = True

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.armed:
            self.armed = False
            if self.after:
                self._conn.execute(sql)
            exc = sqlite3.OperationalError("injected")
            exc.sqlite_errorcode = self.code
            exc.sqlite_errorname = f"code {self.code}"
            raise exc
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _inject(store: SQLiteStorage, code: int, *, after: bool = False) -> _FailingConnection:
    writer = store._writer
    assert writer is not None
    failing = _FailingConnection(writer._conn, code, after=after)
    writer._conn = failing  # type: ignore[assignment]
    return failing


async def _put_many(store: SQLiteStorage, ids: list[str], revision: int) -> list[BaseException]:
    errors: list[BaseException] = []

    async def put(iid: str) -> None:
        try:
            await store.put(make_instance(iid, revision=revision))
        except OSError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for iid in ids:
            nursery.start_soon(put, iid)
    return errors


async def test_disk_full_fails_the_batch_and_the_store_heals(db: Path) -> None:
    ids = [f"orderid::f{n}" for n in range(10)]
    async with SQLiteStorage(db) as store:
        await _put_many(store, ids, 1)
        _inject(store, 13)  # SQLITE_FULL
        errors = await _put_many(store, ids, 2)
        failed = len(errors)
        assert failed >= 1
        assert all(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in errors)
        assert "disk is full" in str(errors[0])
        # no acknowledgement without the data, the others untouched:
        stored = {i.id: i.revision for i in await store.query()}
        assert sum(stored[iid] == 1 for iid in ids) == failed
        await _put_many(store, ids, 3)  # the fault is gone: writes succeed again, no reopen
        assert all(i.revision == 3 for i in await store.query() if i.id in ids)
    assert integrity(db) == "ok"


@pytest.mark.parametrize("after", [False, True])
async def test_an_io_error_refuses_writes_until_reopened(db: Path, after: bool) -> None:
    ids = [f"orderid::e{n}" for n in range(10)]
    async with SQLiteStorage(db) as store:
        await _put_many(store, ids, 1)
        _inject(store, 10 | (4 << 8), after=after)  # SQLITE_IOERR_FSYNC
        errors = await _put_many(store, ids, 2)
        assert errors
        assert all(e.errno == errno.EIO for e in errors if isinstance(e, OSError))
        assert "may be damaged" in str(errors[0])
        with pytest.raises(OSError, match=r"accepts no more writes.*Reopen"):
            await store.put(make_instance("orderid::later"))
        with pytest.raises(OSError, match="accepts no more writes"):
            await store.delete("orderid::e1")
        stored = {i.id: i.revision for i in await store.query()}  # reads still work
        acknowledged = len(ids) - len(errors)
        assert sum(stored[iid] == 2 for iid in ids) >= acknowledged  # never an ack without data
    async with SQLiteStorage(db) as store:  # reopened: writable again
        await store.put(make_instance("orderid::later"))
        assert await store.get("orderid::later") is not None
    assert integrity(db) == "ok"


async def test_a_reader_during_a_write_storm_sees_every_acknowledged_write(db: Path) -> None:
    acked: dict[str, int] = {}
    reports: list[str] = []
    writers, revisions = 10, 30
    async with SQLiteStorage(db) as store:
        await store.put(make_instance("orderid::seed"))
        async with SQLiteStorage(
            db, read_only=True, on_quarantine=lambda w, r: reports.append(r)
        ) as reader:
            done = trio.Event()

            async def write(w: int) -> None:
                iid = f"orderid::w{w}"
                for rev in range(1, revisions + 1):
                    await store.put(
                        make_instance(iid, revision=rev, metadata={"pad": "x" * 2000 * w}),
                        expected_revision=rev - 1,
                    )
                    acked[iid] = rev

            async def read() -> int:
                polls = 0
                while not done.is_set():
                    before = dict(acked)
                    seen = {i.id: i for i in await reader.query()}
                    for iid, rev in before.items():  # no acknowledgement without the data
                        assert seen[iid].revision >= rev
                    for iid, instance in seen.items():  # nothing torn: each decodes whole
                        if iid != "orderid::seed":
                            w = int(iid.removeprefix("orderid::w"))
                            assert instance.metadata == {"pad": "x" * 2000 * w}
                    polls += 1
                return polls

            polls: list[int] = []
            async with trio.open_nursery() as nursery:

                async def reading() -> None:
                    polls.append(await read())

                nursery.start_soon(reading)
                async with trio.open_nursery() as inner:
                    for w in range(writers):
                        inner.start_soon(write, w)
                done.set()
    assert reports == []
    assert polls[0] >= 2
    assert rows(db) == {"orderid::seed": 1} | {f"orderid::w{w}": revisions for w in range(writers)}


async def test_a_put_cancelled_while_its_batch_commits_still_reports_the_commit(db: Path) -> None:
    async with SQLiteStorage(db) as store:
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the writer's transaction waits for this
        finished: list[str] = []
        scope = trio.CancelScope()

        async def put() -> None:
            with scope:
                await store.put(make_instance("orderid::x", revision=1), expected_revision=0)
                finished.append("returned")  # a cancelled put still returns once committed

        async with trio.open_nursery() as nursery:
            nursery.start_soon(put)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert finished == []  # still waiting for its commit, not cancelled
            blocker.execute("ROLLBACK")
            blocker.close()
        assert finished == ["returned"]
        assert (await store.get("orderid::x")) == make_instance("orderid::x", revision=1)

        with trio.CancelScope() as early:  # cancelled before it is queued: nothing stored
            early.cancel()
            await store.put(make_instance("orderid::y"))
        assert await store.get("orderid::y") is None


async def test_queued_writes_commit_before_close_returns(db: Path) -> None:
    store = SQLiteStorage(db)
    await store.aopen()
    async with trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(store.put, make_instance(f"orderid::q{n}"))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(store.aclose)
    assert len(rows(db)) == 50
    assert not store.is_open


async def test_next_deadline_and_status_columns_follow_the_snapshot(db: Path) -> None:
    timers = (
        hx.Timer(id="t1", kind="timeout", step="a", deadline=50.0),
        hx.Timer(id="t2", kind="retry", step="b", deadline=20.0),
    )
    async with SQLiteStorage(db) as store:
        await store.put(make_instance("orderid::t", status=Status.WAITING, timers=timers))
        await store.put(make_instance("orderid::u", status=Status.COMPLETED))
    conn = sqlite3.connect(db)
    got = conn.execute(
        "SELECT id, workflow, version, status, revision, next_deadline FROM instances ORDER BY id"
    ).fetchall()
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT id, snapshot FROM instances WHERE status IN (?, ?) "
        "AND id > ? ORDER BY id LIMIT ?",
        ("waiting", "running", "a", 10),
    ).fetchall()
    conn.close()
    assert got == [
        ("orderid::t", "order", 1, "waiting", 1, 20.0),
        ("orderid::u", "order", 1, "completed", 1, None),
    ]
    assert any("instances_by_status" in str(row) for row in plan), plan


async def test_bad_snapshots_are_quarantined(db: Path) -> None:
    reports: list[tuple[str, str]] = []
    async with SQLiteStorage(db, on_quarantine=lambda w, r: reports.append((w, r))) as store:
        await store.put(make_instance("orderid::good"))
        await store.put(make_instance("orderid::bad"))
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute(
            "UPDATE instances SET snapshot = ? WHERE id = ?", (b"\x93junk", "orderid::bad")
        )
        conn.close()
        async with SQLiteStorage(
            db, read_only=True, on_quarantine=lambda w, r: reports.append((w, r))
        ) as reader:
            assert [i.id for i in await reader.query()] == ["orderid::good"]
        assert "left in place" in reports[-1][1]
        assert await store.get("orderid::bad") is None
        assert reports[-1][0] == f"{db}#orderid::bad"
        assert "moved to the quarantine table" in reports[-1][1]
        assert [i.id for i in await store.query()] == ["orderid::good"]
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT id, snapshot FROM quarantine").fetchall() == [
        ("orderid::bad", b"\x93junk")
    ]
    conn.close()


async def test_text_sqlite_cannot_store_is_refused_before_anything_is_queued(db: Path) -> None:
    async with SQLiteStorage(db) as store:
        with pytest.raises(ValueError, match="not valid Unicode"):
            await store.put(make_instance("orderid::\udc80"))
        with pytest.raises(ValueError, match="must not be empty"):
            await store.put(make_instance(""))
        assert store.commits == 0


def test_the_writer_maps_sqlite_errors() -> None:
    def error(code: int) -> sqlite3.Error:
        exc = sqlite3.OperationalError("x")
        exc.sqlite_errorcode = code
        return exc

    for code, number, damaged in (
        (13, errno.ENOSPC, False),  # SQLITE_FULL
        (10 | (3 << 8), errno.EIO, True),  # SQLITE_IOERR_WRITE
        (11, errno.EIO, True),  # SQLITE_CORRUPT
        (26, errno.EIO, True),  # SQLITE_NOTADB
        (8, errno.EROFS, False),  # SQLITE_READONLY
        (5, errno.EIO, False),  # SQLITE_BUSY
    ):
        got, bad = _sqlite_writer.fault(error(code), "a write")
        assert (got.errno, bad) == (number, damaged), code
    assert _sqlite_writer.fault(MemoryError(), "a write")[1] is True


def test_a_durable_store_uses_wal_and_synchronous_full(db: Path) -> None:
    async def main() -> tuple[Any, ...]:
        async with SQLiteStorage(db) as store:
            writer = store._writer
            assert writer is not None
            conn = writer._conn
            return (
                conn.execute("PRAGMA journal_mode").fetchone()[0],
                conn.execute("PRAGMA synchronous").fetchone()[0],
            )

    assert trio.run(main) == ("wal", 2)
    assert os.path.exists(f"{db}.lock")


def test_rlimit_fsize_fails_a_write_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    db = tmp_path / "full.sqlite"
    child = Path(__file__).with_name("_sqlite_full_child.py")
    proc = subprocess.run(
        [sys.executable, str(child), str(db)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    acked: dict[str, int] = {}
    for line in lines:
        if line.startswith("ack "):
            _, iid, revision = line.split()
            acked[iid] = int(revision)
    errors = [line for line in lines if line.startswith("error ")]
    assert len(errors) == 1, lines[-5:]
    # EFBIG is no ENOSPC: SQLite reports SQLITE_IOERR_WRITE, so the store refuses
    # writes until it is reopened, and then takes them again.
    assert "SQLITE_IOERR_WRITE" in errors[0]
    assert lines[-2].startswith("refused ")
    assert "Reopen" in lines[-2]
    assert lines[-1] == "reopened"
    assert integrity(db) == "ok"
    stored = rows(db)
    for iid, acked_revision in acked.items():
        assert stored[iid] >= acked_revision, iid
    assert "orderid::after" in stored


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and mount rights: skipped without them)."""
    where = tmp_path / "tiny"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


async def test_a_really_full_disk_fails_the_batch_and_the_store_heals(tiny_disk: Path) -> None:
    db = tiny_disk / "state.sqlite"
    pad = {"pad": os.urandom(6_000).hex()}
    acked: dict[str, int] = {}
    async with SQLiteStorage(db) as store:
        filler = tiny_disk / "filler"
        filler.write_bytes(b"\0" * (1024 * 1024 - 150_000 - db.stat().st_size))  # ~150 KiB left
        error: OSError | None = None
        for n in range(1_000):
            iid = f"orderid::d{n % 10}"
            try:
                await store.put(make_instance(iid, revision=n + 1, metadata=pad))
            except OSError as exc:
                error = exc
                break
            acked[iid] = n + 1
        assert error is not None
        assert error.errno == errno.ENOSPC
        assert "disk is full" in str(error)
        stored = {i.id: i.revision for i in await store.query()}
        assert all(stored[iid] == rev for iid, rev in acked.items())
        filler.unlink()  # space again: the same store takes writes, no reopen
        await store.put(make_instance("orderid::after", metadata=pad))
        assert await store.get("orderid::after") is not None
    assert integrity(db) == "ok"


async def test_a_fenced_put_may_change_the_workflow_and_version_columns(db: Path) -> None:
    async with SQLiteStorage(db) as store:
        await store.put(make_instance("orderid::m", workflow="order"), expected_revision=0)
        changed = hx.Instance(id="orderid::m", workflow="payment", version=3, revision=2)
        await store.put(changed, expected_revision=1)
        assert [i.id for i in await store.query(workflow="payment")] == ["orderid::m"]
        assert await store.query(workflow="order") == []
        with pytest.raises(RevisionConflict, match="at revision 2, not the expected 1"):
            await store.put(make_instance("orderid::m", revision=3), expected_revision=1)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT workflow, version, revision FROM instances").fetchall() == [
        ("payment", 3, 2)
    ]
    conn.close()


def test_a_store_opened_in_another_trio_run_refuses_writes_instead_of_hanging(db: Path) -> None:
    store = SQLiteStorage(db)
    trio.run(store.aopen)
    with pytest.raises(RuntimeError, match=r"opened in another trio\.run"):
        trio.run(store.put, make_instance())

    async def close() -> None:
        await store.aclose()

    trio.run(close)
    assert rows(db) == {}
