"""max_active across engines on PostgreSQL: real concurrency, and the migration from schema 2.

The contract (test_shared_admission_contract.py) runs on PostgreSQL too. Here
three engines, each on its own PostgresStorage (its own connections and
threads, as separate processes have), start and finish instances of one
``max_active`` workflow at once, while a checker counts the admitted rows
with its own connection at random moments.
"""

from __future__ import annotations

import random

import psycopg
import pytest
import trio

import hephaestus as hx
from hephaestus import PostgresStorage, Status
from hephaestus.storage import _postgres_schema

from ._fs_samples import make_instance

LIMIT = 3
ENGINES = 3
STARTS = 60

_ADMITTED = (
    "SELECT count(*) FROM hx_instances WHERE workflow = 'capped' AND "
    "(status IN ('running', 'waiting') OR (status = 'pending' AND slot IS TRUE))"
)


@hx.step(events=("done",))
async def work(ctx: hx.StepContext) -> hx.StepResult:
    await trio.sleep(float(ctx.initial["seconds"]))  # the step's work takes that long
    return "done"


capped = hx.Workflow(
    "capped",
    start=work,
    transitions={(work, "done"): hx.Done},
    unique=hx.Unique("capped"),
    max_active=LIMIT,
)


async def test_three_engines_never_admit_more_than_max_active(pg_dsn: str) -> None:
    rng = random.Random(14)
    seen: list[int] = []
    done = trio.Event()

    async def check() -> None:
        # One connection of its own: a connection per look made too few looks on a busy box.
        def connect() -> psycopg.Connection[tuple[int]]:
            return psycopg.connect(pg_dsn, autocommit=True)

        with await trio.to_thread.run_sync(connect) as conn:

            def count() -> int:
                row = conn.execute(_ADMITTED).fetchone()
                assert row is not None
                return int(row[0])

            while not done.is_set():
                seen.append(await trio.to_thread.run_sync(count))
                await trio.sleep(rng.uniform(0.0, 0.005))

    async def engine_run(n: int, ids: list[str]) -> None:
        store = PostgresStorage(pg_dsn, lease_ttl=2.0)
        async with hx.open_engine(workflows=[capped], storage=store) as engine:
            for i in range(n, STARTS, ENGINES):
                seconds = rng.uniform(0.0, 0.05)
                ids.append(await engine.start(capped, f"c{i:03d}", {"seconds": seconds}))
                await trio.sleep(rng.uniform(0.0, 0.01))
            with trio.fail_after(120):
                for instance_id in list(ids):
                    assert (await engine.wait(instance_id)).status is Status.COMPLETED

    ids: list[str] = []
    async with PostgresStorage(pg_dsn):
        pass  # the schema, before the checker reads it
    async with trio.open_nursery() as checker:
        checker.start_soon(check)
        async with trio.open_nursery() as engines:
            for n in range(ENGINES):
                engines.start_soon(engine_run, n, ids)
        done.set()
    with psycopg.connect(pg_dsn) as conn:
        statuses = conn.execute(
            "SELECT status, count(*) FROM hx_instances WHERE workflow = 'capped' GROUP BY status"
        ).fetchall()
        slots = conn.execute(
            "SELECT count(*) FROM hx_instances WHERE slot IS TRUE AND status = 'pending'"
        ).fetchone()
    assert sorted(ids) == [f"capped::c{i:03d}" for i in range(STARTS)]
    assert statuses == [("completed", STARTS)]
    assert slots == (0,)
    assert len(seen) > 20
    assert max(seen) <= LIMIT
    assert max(seen) == LIMIT  # the limit was reached, so it was really tested


async def test_a_schema_2_database_is_migrated_to_admission_slots(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:  # what the release before max_active across engines had
        patch.setattr(_postgres_schema, "MIGRATIONS", _postgres_schema.MIGRATIONS[:2])
        async with PostgresStorage(pg_dsn) as old:
            lease = await old.register("a")
            for name, status in (("a", Status.RUNNING), ("q", Status.PENDING)):
                instance = make_instance(f"capped::{name}", workflow="capped", status=status)
                await old.put_owned(lease, instance, expected_revision=0, release=True)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT version FROM hx_schema").fetchall() == [(2,)]
        assert conn.execute("SELECT to_regclass('hx_admission')").fetchone() == (None,)
    async with PostgresStorage(pg_dsn) as store:
        lease = await store.register("b")
        assert [c.instance.id for c in (await store.claim(lease, limit=10)).claimed] == [
            "capped::a"
        ]
        # The old RUNNING row keeps going (it takes a slot); the old PENDING row, written
        # without a queue key, queues and gets the slot a finished one frees.
        running = make_instance("capped::a", workflow="capped", status=Status.WAITING, revision=2)
        await store.put_limited(lease, running, expected_revision=1, max_active=1)
        finished = make_instance(
            "capped::a", workflow="capped", status=Status.COMPLETED, revision=3
        )
        await store.put_limited(lease, finished, expected_revision=2, max_active=1, release=True)
        assert [c.instance.id for c in (await store.claim(lease, limit=10)).claimed] == [
            "capped::q"
        ]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT version FROM hx_schema").fetchall() == [
            (_postgres_schema.schema_version(),)
        ]
        assert conn.execute("SELECT slot FROM hx_instances WHERE id = 'capped::q'").fetchone() == (
            True,
        )
