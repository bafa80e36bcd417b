"""PostgresStorage after PostgreSQL ended its connections (an engine paused past its lease).

A process stopped with SIGSTOP longer than the server keeps its sessions
finds every connection of its store closed when it resumes. Its next requests
must not fail with ``OSError`` for that: a connection found closed before
anything was sent on it is replaced, and the request goes out on the new one.
Here the server ends them with ``pg_terminate_backend``.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import trio

import hephaestus as hx
from hephaestus import PostgresStorage, Status

from ._fs_samples import make_instance


async def terminate_store_sessions(dsn: str) -> int:
    """End every other session on the store's database, as the server does to idle ones.

    Returns once they are gone from ``pg_stat_activity`` (each has sent its
    client the reason by then).
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        pids = [
            int(pid)
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
        ]
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
        with trio.fail_after(10):
            while conn.execute(  # noqa: ASYNC110 - the server ends them in its own time
                "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            ).fetchone():
                await trio.sleep(0.01)
    return len(pids)


async def test_writes_after_the_server_ended_every_connection_succeed(pg_dsn: str) -> None:
    async with PostgresStorage(pg_dsn) as store:
        await store.put(make_instance("k::1"))
        lease = await store.register("a")
        await store.put_owned(lease, make_instance("k::2"), expected_revision=0)
        assert await terminate_store_sessions(pg_dsn) >= 2  # the writer's and the pool's
        await store.put(make_instance("k::1", revision=2), expected_revision=1)
        await store.put_owned(lease, make_instance("k::2", revision=2), expected_revision=1)
        assert (await store.get("k::1")) == make_instance("k::1", revision=2)
        assert (await store.get("k::2")) == make_instance("k::2", revision=2)


async def test_lease_calls_after_the_server_ended_every_connection_succeed(pg_dsn: str) -> None:
    async with PostgresStorage(pg_dsn, pool_size=2) as store:
        lease = await store.register("a")
        await store.put_owned(lease, make_instance("k::1"), expected_revision=0)
        async with trio.open_nursery() as nursery:  # fill the pool with open connections
            for _ in range(2):
                nursery.start_soon(store.owner_of, "k::1")
        await terminate_store_sessions(pg_dsn)
        began = trio.current_time()
        beat = await store.heartbeat(lease)
        assert trio.current_time() - began < 0.9  # dead ones skipped, no pool backoff (~1 s)
        assert not beat.expired
        assert await store.owner_of("k::1") == lease
        batch = await store.claim(lease, limit=10)
        assert batch.claimed == ()


async def test_a_resume_to_an_engine_whose_connections_were_ended_is_answered(
    pg_dsn: str,
) -> None:
    """The issue's case: the first request after the pause must not be an OSError."""
    go = hx.WaitForEvent("go", key="park")
    wf = hx.Workflow("park", start=go, transitions={(go, "go"): hx.Done}, unique=hx.Unique("p"))
    store = PostgresStorage(pg_dsn, lease_ttl=60.0)
    async with hx.open_engine(workflows=[wf], storage=store, passivate_after=None) as engine:
        iid = await engine.start(wf, "x")
        with trio.fail_after(10):  # its runner parks it in a moment (the write is in a thread)
            while (await engine.get(iid)).status is not Status.WAITING:  # noqa: ASYNC110
                await trio.sleep(0.01)
        await terminate_store_sessions(pg_dsn)
        await engine.resume(iid, "go")
        with trio.fail_after(10):
            assert (await engine.wait(iid)).status is Status.COMPLETED


@pytest.mark.parametrize("paused", ["by the store clock", "by this process's clock"])
async def test_a_renewal_after_a_pause_refreshes_the_pool_first(
    pg_dsn: str, paused: str, monkeypatch: Any
) -> None:
    """Paused past the lease: every pooled connection is checked, none fails a request later."""
    async with PostgresStorage(pg_dsn, lease_ttl=1.0) as store:
        lease = await store.register("a")
        if paused == "by the store clock":
            store.clock_skew += 5.0  # the lease expired meanwhile, by the database's clock
        else:
            store._renewed_at -= 5.0  # this process was stopped for 5 s
        await terminate_store_sessions(pg_dsn)
        checks: list[str] = []
        pool = store._pool
        assert pool is not None
        check = pool.check

        def counted_check() -> None:
            checks.append("check")
            check()

        monkeypatch.setattr(pool, "check", counted_check)
        began = trio.current_time()
        beat = await store.heartbeat(lease)
        assert beat.expired is (paused == "by the store clock")
        assert checks == ["check"]
        assert await store.owner_of("k::none") is None
        if paused == "by this process's clock":  # checked before the renewal: no dead one
            assert trio.current_time() - began < 0.9  # no dead connection met: no pool backoff
        await store.heartbeat(beat.lease)  # on time: no check
        assert checks == ["check"]
