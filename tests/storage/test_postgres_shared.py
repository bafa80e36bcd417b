"""PostgresStorage as a SharedStorage, beyond the contract suite: real concurrency, migration.

The contract itself (test_shared_contract.py) runs on PostgreSQL too. Here:
several stores on one database (each its own connections and threads, as
separate engine processes have) claim and write concurrently while every
owner keeps heartbeating, so no claim may ever take an instance from a live
owner (the LEFT JOIN trap of RELIABILITY.md); and a database of schema 1 is
migrated in place.
"""

from __future__ import annotations

import psycopg
import pytest
import trio

from hephaestus import PostgresStorage, Status
from hephaestus.storage import LeaseLost, _postgres_listen, _postgres_schema
from hephaestus.storage._shared import Lease, Wake

from ._fs_samples import make_instance

ENGINES = 3
INSTANCES = 60
ROUNDS = 80


async def test_concurrent_claimers_never_steal_from_live_owners(pg_dsn: str) -> None:
    """Claim, write and release in a loop on three stores while all heartbeat: 0 steals."""
    stores = [PostgresStorage(pg_dsn, lease_ttl=30.0) for _ in range(ENGINES)]
    steals: list[tuple[str, str, Lease | None]] = []
    lost: list[str] = []
    claims = {"n": 0}
    async with stores[0] as first, stores[1], stores[2]:
        for n in range(INSTANCES):
            await first.put(make_instance(f"k::{n:03}", status=Status.RUNNING))
        leases = [await store.register(f"engine-{n}") for n, store in enumerate(stores)]

        async def beat(store: PostgresStorage, lease: Lease, done: trio.Event) -> None:
            while not done.is_set():
                beat = await store.heartbeat(lease)
                assert not beat.expired
                await trio.lowlevel.checkpoint()

        async def work(store: PostgresStorage, lease: Lease) -> None:
            for _ in range(ROUNDS):
                batch = await store.claim(lease, limit=5)
                for got in batch.claimed:
                    claims["n"] += 1
                    if got.previous_owner is not None:
                        steals.append((lease.engine_id, got.instance.id, got.previous_owner))
                    instance = got.instance
                    after = make_instance(
                        instance.id, status=Status.RUNNING, revision=instance.revision + 1
                    )
                    try:  # write and give it back: others claim it again at once
                        await store.put_owned(
                            lease, after, expected_revision=instance.revision, release=True
                        )
                    except LeaseLost:
                        lost.append(instance.id)

        done = trio.Event()
        async with trio.open_nursery() as beats:
            for store, lease in zip(stores, leases, strict=True):
                beats.start_soon(beat, store, lease, done)
            async with trio.open_nursery() as workers:
                for store, lease in zip(stores, leases, strict=True):
                    workers.start_soon(work, store, lease)
            done.set()
        total = sum(i.revision - 1 for i in await first.query())
    assert steals == []
    assert lost == []
    assert claims["n"] == total  # every claim was written exactly once
    assert claims["n"] > INSTANCES  # and instances really went round between engines


async def test_a_schema_1_database_is_migrated_in_place(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:  # what the first release created
        patch.setattr(_postgres_schema, "MIGRATIONS", _postgres_schema.MIGRATIONS[:1])
        async with PostgresStorage(pg_dsn) as old:
            await old.put(make_instance("k::old", status=Status.RUNNING))
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT version FROM hx_schema").fetchall() == [(1,)]
        assert conn.execute("SELECT to_regclass('hx_engines')").fetchone() == (None,)
    async with PostgresStorage(pg_dsn) as store:
        assert await store.get("k::old") == make_instance("k::old", status=Status.RUNNING)
        lease = await store.register("a")
        batch = await store.claim(lease, limit=10)
        assert [c.instance.id for c in batch.claimed] == ["k::old"]
        assert await store.owner_of("k::old") == lease
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT version FROM hx_schema").fetchall() == [
            (_postgres_schema.schema_version(),)
        ]


async def test_a_session_stuck_in_a_transaction_loses_its_locks_after_one_ttl(
    pg_dsn: str,
) -> None:
    """What an engine SIGSTOPped mid-transaction leaves: row locks, ended after one TTL."""
    async with PostgresStorage(pg_dsn, lease_ttl=1.0) as store:
        await store.put(make_instance("k::1", status=Status.RUNNING))
        stuck = store.connect()  # configured as every connection of the store is
        stuck.execute("BEGIN")
        stuck.execute("SELECT 1 FROM hx_instances WHERE id = 'k::1' FOR UPDATE")
        lease = await store.register("b")
        assert (await store.claim(lease, limit=10)).claimed == ()  # locked: skipped
        with trio.fail_after(10):  # PostgreSQL ends the idle transaction after ~1 TTL
            while not (batch := await store.claim(lease, limit=10)).claimed:
                await store.heartbeat(lease)
                await trio.sleep(0.1)
        assert [c.instance.id for c in batch.claimed] == ["k::1"]
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            stuck.execute("COMMIT")
        stuck.close()


async def test_a_claimed_snapshot_that_does_not_decode_is_quarantined_not_fatal(
    pg_dsn: str,
) -> None:
    reports: list[tuple[str, str]] = []
    async with PostgresStorage(pg_dsn, on_quarantine=lambda w, r: reports.append((w, r))) as store:
        for iid in ("k::bad", "k::good", "k::worse"):
            await store.put(make_instance(iid, status=Status.RUNNING))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE hx_instances SET snapshot = %s WHERE id IN ('k::bad', 'k::worse')",
                (b"\x93junk",),
            )
        lease = await store.register("a")
        batch = await store.claim(lease, limit=10)
        assert [c.instance.id for c in batch.claimed] == ["k::good"]
        assert sorted(w.rsplit("#", 1)[1] for w, _ in reports) == ["k::bad", "k::worse"]
        assert all("moved to the hx_quarantine table" in r for _, r in reports)
        assert (await store.claim(lease, limit=10)).claimed == ()  # nothing left to trip on
        await store.put(make_instance("k::bad2", status=Status.WAITING))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE hx_instances SET snapshot = 'x' WHERE id = 'k::bad2'")
        one = await store.claim_instance(lease, "k::bad2")
        assert (one.claimed, one.owner) == (None, None)
        assert reports[-1][0].endswith("#k::bad2")
    with psycopg.connect(pg_dsn) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT id FROM hx_quarantine")) == [
            "k::bad",
            "k::bad2",
            "k::worse",
        ]


async def test_a_notification_is_delivered_when_it_arrives_not_at_the_next_poll(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LISTEN thread hands each notification on at once (a wait would add its poll to each)."""
    monkeypatch.setattr(_postgres_listen, "_POLL_S", 30.0)
    async with PostgresStorage(pg_dsn) as store, store.listen("a") as channel:
        for n in range(3):
            await store.notify(Wake(engine_id="a", instance_id=f"k::{n}"))
            with trio.fail_after(10):  # far below the 30 s poll: it did not wait for it
                assert await channel.receive() == Wake(engine_id="a", instance_id=f"k::{n}")
