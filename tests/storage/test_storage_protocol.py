"""The Storage protocol, one suite for every adapter: Memory, File, SQLite and PostgresStorage.

Each test gets ``kind`` and an ``opener``: ``opener()`` returns a new storage
object on the same place (for MemoryStorage the same object, whose data
outlives ``aclose``), so "reopen" means what a process restart means for
that adapter. Adapter-specific behaviour (files on disk, quarantine, SQL
faults) lives in the adapter's own test modules.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from hephaestus import (
    FileStorage,
    Instance,
    MemoryStorage,
    PostgresStorage,
    RevisionConflict,
    SQLiteStorage,
    Status,
    Storage,
    StorageLocked,
)

from ._fs_samples import make_instance, varied_instances

KINDS = ["memory", "files", "sqlite", "postgres"]
DURABLE = ["files", "sqlite"]

Opener = Callable[..., Any]


def opener_for(kind: str, tmp_path: Path, pg_dsn: str = "") -> Opener:
    memory = MemoryStorage()

    def open_store(**options: Any) -> Any:
        if kind == "memory":
            return memory
        if kind == "postgres":  # a server: nothing to choose about durability
            options.pop("durable", None)
            return PostgresStorage(pg_dsn, **options)
        if kind == "files":
            return FileStorage(tmp_path / "store", **options)
        return SQLiteStorage(tmp_path / "store.sqlite", **options)

    return open_store


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def opener(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Opener:
    pg_dsn = request.getfixturevalue("pg_dsn") if kind == "postgres" else ""
    return opener_for(kind, tmp_path, pg_dsn)


async def _fill(store: Storage) -> None:
    await store.put(make_instance("orderid::a", workflow="order", status=Status.RUNNING))
    await store.put(make_instance("orderid::b", workflow="order", status=Status.COMPLETED))
    await store.put(make_instance("payid::c", workflow="payment", status=Status.WAITING))
    await store.put(make_instance("orderid::d", workflow="order", status=Status.WAITING))


def test_is_a_storage(opener: Opener) -> None:
    assert isinstance(opener(), Storage)


async def test_round_trip_of_every_shape(opener: Opener) -> None:
    instances = varied_instances()
    async with opener() as store:
        for instance in instances:
            await store.put(instance)
        for instance in instances:
            assert await store.get(instance.id) == instance
    async with opener() as store:  # and after reopening
        for instance in instances:
            assert await store.get(instance.id) == instance
        assert await store.query() == sorted(instances, key=lambda i: i.id)


async def test_get_of_a_missing_id_is_none(opener: Opener) -> None:
    async with opener() as store:
        assert await store.get("orderid::nope") is None


async def test_put_replaces(opener: Opener) -> None:
    async with opener() as store:
        await store.put(make_instance(revision=1))
        await store.put(make_instance(revision=2, status=Status.COMPLETED))
        got = await store.get("orderid::abc-1")
        assert got is not None
        assert (got.revision, got.status) == (2, Status.COMPLETED)
        assert [i.id for i in await store.query()] == ["orderid::abc-1"]


async def test_query_filters_by_workflow_and_status(opener: Opener) -> None:
    instances = [
        make_instance("orderid::a", workflow="order", status=Status.RUNNING),
        make_instance("orderid::b", workflow="order", status=Status.COMPLETED),
        make_instance("payid::c", workflow="payment", status=Status.WAITING),
        make_instance("orderid::d", workflow="order", status=Status.WAITING),
    ]
    async with opener() as store:
        await _fill(store)
        for workflow in (None, "order", "payment", "nothing"):
            for status in (None, Status.WAITING, "completed", [Status.RUNNING, Status.WAITING], ()):
                wanted = (
                    None
                    if status is None
                    else {Status(s) for s in ([status] if isinstance(status, str) else status)}
                )
                expected = sorted(
                    (
                        i
                        for i in instances
                        if (workflow is None or i.workflow == workflow)
                        and (wanted is None or i.status in wanted)
                    ),
                    key=lambda i: i.id,
                )
                got = await store.query(workflow=workflow, status=status)
                assert got == expected, (workflow, status)
        with pytest.raises(ValueError, match="status must be one of"):
            await store.query(status="sleeping")


async def test_query_follows_status_changes_and_reopen(opener: Opener) -> None:
    async with opener() as store:
        await _fill(store)
        await store.put(make_instance("orderid::a", status=Status.COMPLETED, revision=2))
        ids = [i.id for i in await store.query(status=Status.COMPLETED)]
        assert ids == ["orderid::a", "orderid::b"]
    async with opener() as store:
        assert [i.id for i in await store.query(status=Status.COMPLETED)] == ids
        assert [i.id for i in await store.query(workflow="payment")] == ["payid::c"]


async def test_query_page_walks_every_match_in_id_order(opener: Opener) -> None:
    instances = [
        make_instance(
            f"orderid::{n:03}",
            workflow="order" if n % 3 else "payment",
            status=Status.WAITING if n % 2 else Status.COMPLETED,
        )
        for n in range(50)
    ]
    async with opener(durable=False) as store:
        for instance in reversed(instances):
            await store.put(instance)
        for workflow in (None, "order"):
            for status in (None, Status.WAITING, [Status.WAITING, Status.COMPLETED]):
                expected = await store.query(workflow=workflow, status=status)
                for limit in (1, 7, 50, None):
                    pages: list[Instance] = []
                    after: str | None = None
                    while True:
                        page = await store.query_page(
                            workflow=workflow, status=status, after=after, limit=limit
                        )
                        assert limit is None or len(page) <= limit
                        pages.extend(page)
                        if not page or limit is None or len(page) < limit:
                            break
                        after = page[-1].id
                    assert pages == expected, (workflow, status, limit)
        assert await store.query_page(limit=0) == []
        assert await store.query_page(status=()) == []
        assert [i.id for i in await store.query_page(after="orderid::047")] == [
            "orderid::048",
            "orderid::049",
        ]
        assert await store.query_page(after="orderid::047", workflow="payment") == [instances[48]]
        with pytest.raises(ValueError, match="limit"):
            await store.query_page(limit=-1)
        with pytest.raises(ValueError, match="status must be one of"):
            await store.query_page(status="sleeping")


async def test_delete(opener: Opener) -> None:
    async with opener() as store:
        await _fill(store)
        await store.delete("orderid::a")
        await store.delete("orderid::a")  # again: fine
        await store.delete("never::there")
        assert await store.get("orderid::a") is None
        assert "orderid::a" not in [i.id for i in await store.query()]
    async with opener() as store:
        assert await store.get("orderid::a") is None
        assert len(await store.query()) == 3


async def test_expected_revision_is_compare_and_set(opener: Opener) -> None:
    async with opener() as store:
        with pytest.raises(RevisionConflict, match="revision 0, not the expected 1"):
            await store.put(make_instance(revision=2), expected_revision=1)
        assert await store.get("orderid::abc-1") is None
        await store.put(make_instance(revision=1), expected_revision=0)
        await store.put(make_instance(revision=2), expected_revision=1)
        with pytest.raises(RevisionConflict, match="at revision 2, not the expected 1"):
            await store.put(make_instance(revision=3), expected_revision=1)
        got = await store.get("orderid::abc-1")
        assert got is not None
        assert got.revision == 2
        await store.delete("orderid::abc-1")
        await store.put(make_instance(revision=1), expected_revision=0)  # deleted counts as 0
    async with opener() as store:  # what the store knows survives reopening
        with pytest.raises(RevisionConflict):
            await store.put(make_instance(revision=2), expected_revision=0)
        await store.put(make_instance(revision=2), expected_revision=1)


async def test_concurrent_compare_and_set_lets_exactly_one_win(opener: Opener) -> None:
    wins: list[int] = []
    async with opener() as store:

        async def attempt(n: int) -> None:
            try:
                await store.put(make_instance(revision=1, metadata={"n": n}), expected_revision=0)
            except RevisionConflict:
                return
            wins.append(n)

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(attempt, n)
        assert len(wins) == 1
        got = await store.get("orderid::abc-1")
        assert got is not None
        assert got.metadata == {"n": wins[0]}


async def test_many_concurrent_durable_puts(opener: Opener) -> None:
    async with opener() as store:
        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(store.put, make_instance(f"orderid::n{n}", revision=n + 1))
        assert len(await store.query()) == 100
    async with opener() as store:
        for n in range(100):
            got = await store.get(f"orderid::n{n}")
            assert got is not None
            assert got.revision == n + 1


async def test_hostile_ids_are_stored_as_they_are(opener: Opener) -> None:
    ids = ["../../escape", "/etc/passwd", "..", ".", "a/b", "ünï::cødé", "Case", "case", "x" * 600]
    async with opener() as store:
        for n, iid in enumerate(ids):
            await store.put(make_instance(iid, revision=n + 1))
    async with opener() as store:
        for n, iid in enumerate(ids):
            got = await store.get(iid)
            assert got is not None
            assert (got.id, got.revision) == (iid, n + 1)
        assert [i.id for i in await store.query()] == sorted(ids)


async def test_use_outside_open_is_an_error(opener: Opener) -> None:
    store = opener()
    with pytest.raises(RuntimeError, match="not open"):
        await store.get("x")
    async with store:
        await store.put(make_instance())
    await store.aclose()  # twice: harmless
    with pytest.raises(RuntimeError, match="not open"):
        await store.put(make_instance())
    async with store:  # the same object can be reopened
        assert await store.get("orderid::abc-1") == make_instance()


@pytest.mark.parametrize("kind", DURABLE)
async def test_second_opener_in_this_process_is_refused(opener: Opener, tmp_path: Path) -> None:
    async with opener():
        with pytest.raises(StorageLocked, match=rf"locked by process {os.getpid()}") as info:
            async with opener():
                pass  # pragma: no cover
        assert str(tmp_path / "store") in str(info.value)
    async with opener():  # released on close
        pass


@pytest.mark.parametrize("kind", DURABLE)
async def test_read_only_takes_no_lock_and_refuses_writes(opener: Opener) -> None:
    async with opener() as writer:
        await _fill(writer)
        async with opener(read_only=True) as reader:
            assert [i.id for i in await reader.query(workflow="order")] == [
                "orderid::a",
                "orderid::b",
                "orderid::d",
            ]
            await writer.put(make_instance("orderid::e"))  # the reader sees new writes
            assert await reader.get("orderid::e") == make_instance("orderid::e")
            assert len(await reader.query()) == 5
            assert [i.id for i in await reader.query_page(after="orderid::d", limit=1)] == [
                "orderid::e"
            ]
            with pytest.raises(RuntimeError, match="read-only"):
                await reader.put(make_instance("orderid::f"))
            with pytest.raises(RuntimeError, match="read-only"):
                await reader.delete("orderid::a")


@pytest.mark.parametrize("kind", DURABLE)
async def test_read_only_on_a_missing_store(opener: Opener, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no store at"):
        async with opener(read_only=True):
            pass  # pragma: no cover
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", DURABLE)
def test_an_empty_path_is_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="needs the path"):
        (FileStorage if kind == "files" else SQLiteStorage)("")
