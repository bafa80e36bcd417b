"""PostgresStorage beyond the protocol suite: group commit, fences in a batch, faults, schema.

The protocol itself (round trips, queries, paging, compare-and-set) is tested
in test_storage_protocol.py against every adapter. Every test here gets a new
database of its own (the ``pg_dsn`` fixture of the root conftest).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import psycopg
import pytest
import trio
import trio.testing

import hephaestus as hx
from hephaestus import PostgresStorage, RevisionConflict, Status
from hephaestus.storage import _postgres_schema
from hephaestus.storage._errors import NotAStore
from hephaestus.storage._postgres import redact

from ._fs_samples import make_instance


def rows(dsn: str) -> dict[str, int]:
    """id -> revision, read with a plain psycopg connection."""
    with psycopg.connect(dsn) as conn:
        return {str(i): int(r) for i, r in conn.execute("SELECT id, revision FROM hx_instances")}


async def test_group_commit_really_groups(pg_dsn: str) -> None:
    async with PostgresStorage(pg_dsn) as store:
        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(store.put, make_instance(f"orderid::g{n:03}"))
        assert store.commits <= 20, store.commits  # 100 puts in flight: a handful of commits
        assert len(await store.query()) == 100
        before = store.commits
        for n in range(5):  # one at a time: one commit each
            await store.put(make_instance(f"orderid::s{n}"))
        assert store.commits == before + 5


async def test_a_conflicting_row_fails_alone_and_the_rest_of_its_batch_commits(
    pg_dsn: str,
) -> None:
    async with PostgresStorage(pg_dsn) as store:
        for n in range(20):
            await store.put(make_instance(f"orderid::c{n:02}", revision=1))
        # Hold a lock on the table from outside, so that every put below queues
        # up behind the writer's blocked transaction and they commit together.
        blocker = psycopg.connect(pg_dsn)
        blocker.execute("LOCK TABLE hx_instances IN EXCLUSIVE MODE")
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
            blocker.rollback()
            blocker.close()
        assert store.commits - commits <= 2  # one batch, or the first put alone and the rest
        for n in range(20):
            iid = f"orderid::c{n:02}"
            if n % 2:
                assert "at revision 1, not the expected 2" in outcomes[iid]
            else:
                assert outcomes[iid] == "ok"
    assert rows(pg_dsn) == {f"orderid::c{n:02}": 1 if n % 2 else 2 for n in range(20)}


async def test_two_stores_on_one_database_fence_each_other(pg_dsn: str) -> None:
    async with PostgresStorage(pg_dsn) as one, PostgresStorage(pg_dsn) as two:
        await one.put(make_instance(revision=1), expected_revision=0)
        with pytest.raises(RevisionConflict, match="at revision 1, not the expected 0"):
            await two.put(make_instance(revision=1), expected_revision=0)
        await two.put(make_instance(revision=2), expected_revision=1)
        with pytest.raises(RevisionConflict):
            await one.put(make_instance(revision=2), expected_revision=1)
        got = await one.get("orderid::abc-1")
        assert got is not None
        assert got.revision == 2


async def test_a_lost_connection_fails_its_batch_and_the_store_heals(pg_dsn: str) -> None:
    """The connection dies while its batch is in the server: that batch fails, the next heals.

    (A connection the server ended while it was idle is replaced before a
    batch goes out on it: test_postgres_reconnect.py.)
    """
    async with PostgresStorage(pg_dsn) as store:
        await store.put(make_instance("orderid::a"))
        blocker = psycopg.connect(pg_dsn)
        blocker.execute("LOCK TABLE hx_instances IN EXCLUSIVE MODE")  # the batch waits for it
        failed: list[BaseException] = []

        async def put_b() -> None:
            try:
                await store.put(make_instance("orderid::b"))
            except OSError as exc:
                failed.append(exc)

        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(put_b)
                with trio.fail_after(10):
                    while not admin.execute(  # noqa: ASYNC110 - the server's state, not ours
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    ).fetchall():
                        await trio.sleep(0.01)
        blocker.close()
        assert len(failed) == 1
        assert "nothing of it was stored" in str(failed[0])
        await store.put(make_instance("orderid::c"))  # a new connection
        assert [i.id for i in await store.query()] == ["orderid::a", "orderid::c"]


async def test_a_put_cancelled_while_its_batch_commits_still_reports_the_commit(
    pg_dsn: str,
) -> None:
    async with PostgresStorage(pg_dsn) as store:
        await store.put(make_instance("orderid::w"))
        blocker = psycopg.connect(pg_dsn)
        blocker.execute("LOCK TABLE hx_instances IN EXCLUSIVE MODE")
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
            blocker.rollback()
            blocker.close()
        assert finished == ["returned"]
        assert (await store.get("orderid::x")) == make_instance("orderid::x", revision=1)


async def test_queued_writes_commit_before_close_returns(pg_dsn: str) -> None:
    store = PostgresStorage(pg_dsn)
    await store.aopen()
    async with trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(store.put, make_instance(f"orderid::q{n}"))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(store.aclose)
    assert len(rows(pg_dsn)) == 50
    assert not store.is_open


async def test_columns_follow_the_snapshot_and_queries_use_the_indexes(pg_dsn: str) -> None:
    timers = (
        hx.Timer(id="t1", kind="timeout", step="a", deadline=50.0),
        hx.Timer(id="t2", kind="retry", step="b", deadline=20.0),
    )
    async with PostgresStorage(pg_dsn) as store:
        await store.put(make_instance("orderid::t", status=Status.WAITING, timers=timers))
        await store.put(make_instance("orderid::u", status=Status.COMPLETED))
    with psycopg.connect(pg_dsn) as conn:
        got = conn.execute(
            "SELECT id, workflow, version, status, revision, next_deadline FROM hx_instances "
            "ORDER BY id"
        ).fetchall()
        conn.execute("SET enable_seqscan = off")  # two rows: make the planner show its index
        plan = conn.execute(
            "EXPLAIN SELECT id, snapshot FROM hx_instances WHERE status = ANY(%s) "
            "AND id > %s ORDER BY id LIMIT 10",
            (["waiting", "running"], "a"),
        ).fetchall()
        due = conn.execute(
            "EXPLAIN SELECT id FROM hx_instances WHERE next_deadline <= 30"
        ).fetchall()
    assert got == [
        ("orderid::t", "order", 1, "waiting", 1, 20.0),
        ("orderid::u", "order", 1, "completed", 1, None),
    ]
    assert any("hx_instances_by_status" in str(row) for row in plan), plan
    assert any("hx_instances_by_deadline" in str(row) for row in due), due


async def test_bad_snapshots_are_quarantined(pg_dsn: str) -> None:
    reports: list[tuple[str, str]] = []
    async with PostgresStorage(pg_dsn, on_quarantine=lambda w, r: reports.append((w, r))) as store:
        await store.put(make_instance("orderid::good"))
        await store.put(make_instance("orderid::bad"))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE hx_instances SET snapshot = %s WHERE id = %s",
                (b"\x93junk", "orderid::bad"),
            )
        async with PostgresStorage(
            pg_dsn, read_only=True, on_quarantine=lambda w, r: reports.append((w, r))
        ) as reader:
            assert [i.id for i in await reader.query()] == ["orderid::good"]
        assert "left in place" in reports[-1][1]
        assert await store.get("orderid::bad") is None
        assert reports[-1][0].endswith("#orderid::bad")
        assert "moved to the hx_quarantine table" in reports[-1][1]
        assert [i.id for i in await store.query()] == ["orderid::good"]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT id, snapshot FROM hx_quarantine").fetchall() == [
            ("orderid::bad", b"\x93junk")
        ]


async def test_text_postgres_cannot_store_is_refused_before_anything_is_queued(
    pg_dsn: str,
) -> None:
    async with PostgresStorage(pg_dsn) as store:
        with pytest.raises(ValueError, match="not valid Unicode"):
            await store.put(make_instance("orderid::\udc80"))
        with pytest.raises(ValueError, match="NUL character"):
            await store.put(make_instance("orderid::a\x00b"))
        with pytest.raises(ValueError, match="NUL character"):
            await store.put(make_instance("orderid::a", workflow="or\x00der"))
        with pytest.raises(ValueError, match="must not be empty"):
            await store.put(make_instance(""))
        assert store.commits == 0
        await store.put(make_instance("orderid::a"))
        # What cannot be stored is simply not there, for every reader.
        assert await store.get("orderid::a\x00b") is None
        assert await store.get("orderid::\udc80") is None
        await store.delete("orderid::a\x00b")
        assert await store.query(workflow="or\x00der") == []
        assert [i.id for i in await store.query_page(after="orderid::\x00")] == ["orderid::a"]
        assert await store.query_page(after="orderid::a\x00") == []


async def test_read_only_creates_nothing_and_refuses_writes(pg_dsn: str) -> None:
    with pytest.raises(NotAStore, match="no hephaestus store"):
        async with PostgresStorage(pg_dsn, read_only=True):
            pass  # pragma: no cover
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass('hx_schema')").fetchone() == (None,)
    async with PostgresStorage(pg_dsn) as writer:
        await writer.put(make_instance("orderid::a"))
        async with PostgresStorage(pg_dsn, read_only=True) as reader:
            assert [i.id for i in await reader.query()] == ["orderid::a"]
            await writer.put(make_instance("orderid::b"))
            assert await reader.get("orderid::b") == make_instance("orderid::b")
            with pytest.raises(RuntimeError, match="read-only"):
                await reader.put(make_instance("orderid::c"))
            with pytest.raises(RuntimeError, match="read-only"):
                await reader.delete("orderid::a")


async def test_the_schema_is_versioned_and_a_newer_one_is_refused(pg_dsn: str) -> None:
    async with trio.open_nursery() as nursery:  # several openers of a new database at once
        for _ in range(4):
            nursery.start_soon(_open_and_close, pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM hx_schema").fetchall() == [
            (_postgres_schema.schema_version(),)
        ]
        conn.execute("UPDATE hx_schema SET version = version + 1")
    for read_only in (False, True):
        with pytest.raises(NotAStore, match="newer than this release"):
            async with PostgresStorage(pg_dsn, read_only=read_only):
                pass  # pragma: no cover


async def _open_and_close(dsn: str) -> None:
    async with PostgresStorage(dsn) as store:
        await store.put(make_instance())


async def test_an_unreachable_server_is_an_oserror_that_hides_the_password(tmp_path: Any) -> None:
    dsn = f"postgresql://someone:s3cret@/db?host={tmp_path}&port=1"
    store = PostgresStorage(dsn)
    assert "s3cret" not in repr(store)
    with pytest.raises(OSError, match="cannot connect to PostgreSQL") as info:
        await store.aopen()
    assert "s3cret" not in str(info.value)
    assert not store.is_open


def test_redact_hides_passwords_in_both_dsn_forms() -> None:
    assert redact("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact("host=h password=pw dbname=d") == "host=h password=*** dbname=d"
    assert redact("host=h password='p w' dbname=d") == "host=h password=*** dbname=d"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"dsn": ""}, "needs a connection string"),
        ({"pool_size": 0}, "pool_size"),
        ({"pool_size": True}, "pool_size"),
        ({"lease_ttl": 0}, "lease_ttl"),
        ({"lease_ttl": float("nan")}, "lease_ttl"),
        ({"lease_ttl": float("inf")}, "lease_ttl"),
    ],
)
def test_bad_arguments_are_refused_in_the_constructor(options: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"dsn": "postgresql:///x", **options}
    with pytest.raises(ValueError, match=match):
        PostgresStorage(**arguments)


def test_without_psycopg_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what an import finds when it is missing
    with pytest.raises(ImportError, match=r"psycopg is not installed.*hephaestus-trio\[postgres\]"):
        PostgresStorage("postgresql:///x")


def test_importing_hephaestus_does_not_import_psycopg() -> None:
    code = "import sys, hephaestus; print('psycopg' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@hx.step(events=("ok",))
async def one(ctx: hx.StepContext) -> hx.StepResult:
    return "ok"


@hx.step(events=("ok",))
async def two(ctx: hx.StepContext) -> hx.StepResult:
    return "ok"


LINEAR = hx.Workflow(
    "linear2",
    start=one,
    transitions={(one, "ok"): two, (two, "ok"): hx.Done},
    unique=hx.Unique("n"),
)


async def test_an_engine_runs_on_it_and_a_new_engine_sees_what_it_stored(pg_dsn: str) -> None:
    store = PostgresStorage(pg_dsn)
    async with hx.open_engine(workflows=[LINEAR], storage=store) as engine:

        async def run(n: int) -> None:
            await engine.wait(await engine.start(LINEAR, str(n)))

        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(run, n)
    assert not store.is_open  # open_engine opened it, so it closed it
    async with hx.open_engine(workflows=[LINEAR], storage=PostgresStorage(pg_dsn)) as engine:
        done = await engine.list(status=Status.COMPLETED)
        assert len(done) == 50
