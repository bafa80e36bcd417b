"""The command line on a PostgreSQL store: ``--store postgresql://...``.

``list``/``show`` read it; ``cancel``/``retry`` apply a change directly to an
instance no live engine holds, and send it through the shared inbox to the
owner of one that a live engine holds (here the test plays that engine:
it registers a lease, owns the instance and answers the inbox row), waiting
for the owner's answer. ``prune`` deletes finished instances.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
import trio

import hephaestus as hx
from hephaestus import PostgresStorage, Status
from hephaestus.cli import main
from hephaestus.storage._shared import Accepted, Consumed, Refused, Wake

from ._fs_samples import make_instance

DAY = 86_400.0


def one_line_error(err: str, *needles: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hephaestus: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


async def _fill(dsn: str) -> None:
    async with PostgresStorage(dsn) as store:
        await store.put(make_instance("order::1", status=Status.WAITING))
        await store.put(make_instance("order::2", status=Status.COMPLETED, updated_at=1.0))
        failed = make_instance(
            "order::3",
            status=Status.FAILED,
            error=hx.ErrorInfo(step="pay", type="RuntimeError", message="down", attempts=3),
            active=("pay",),
            updated_at=time.time(),  # recent: prune keeps it
        )
        await store.put(failed)


def test_list_and_show_read_a_postgres_store(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(_fill, pg_dsn)
    assert main(["list", "--store", pg_dsn]) == 0
    out = capsys.readouterr().out
    for iid in ("order::1", "order::2", "order::3"):
        assert iid in out
    assert main(["list", "--store", pg_dsn, "--status", "completed"]) == 0
    out = capsys.readouterr().out
    assert "order::2" in out
    assert "order::1" not in out
    assert main(["show", "--store", pg_dsn, "order::3"]) == 0
    assert "failed" in capsys.readouterr().out
    assert main(["show", "--store", pg_dsn, "order::nope"]) == 1
    one_line_error(capsys.readouterr().err, "no instance 'order::nope'")


def test_a_database_without_a_store_and_an_unreachable_server_are_one_line_errors(
    pg_dsn: str, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    assert main(["list", "--store", pg_dsn]) == 1
    one_line_error(capsys.readouterr().err, "no hephaestus store")
    nowhere = f"postgresql://u:secret@/db?host={tmp_path}&port=1"
    assert main(["list", "--store", nowhere]) == 1
    line = one_line_error(capsys.readouterr().err, "cannot connect to PostgreSQL")
    assert "secret" not in line
    assert main(["cancel", "--store", nowhere, "order::1"]) == 1
    one_line_error(capsys.readouterr().err, "cannot connect to PostgreSQL")


def test_cancel_and_retry_apply_directly_to_an_instance_nobody_holds(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(_fill, pg_dsn)
    assert main(["cancel", "--store", pg_dsn, "order::1", "--reason", "duplicate"]) == 0
    assert capsys.readouterr().out.strip() == "cancelled order::1 (it was waiting)"
    assert main(["cancel", "--store", pg_dsn, "order::1"]) == 0
    assert capsys.readouterr().out.strip() == "order::1 was already cancelled"
    assert main(["retry", "--store", pg_dsn, "order::3"]) == 0
    assert "pay will run again on the next engine that claims it" in capsys.readouterr().out
    assert main(["retry", "--store", pg_dsn, "order::2"]) == 1
    one_line_error(capsys.readouterr().err, "EventRejected")
    assert main(["cancel", "--store", pg_dsn, "order::nope"]) == 1
    one_line_error(capsys.readouterr().err, "no instance 'order::nope'")

    async def check() -> None:
        async with PostgresStorage(pg_dsn) as store:
            one = await store.get("order::1")
            three = await store.get("order::3")
            assert one is not None
            assert three is not None
            assert (one.status, three.status) == (Status.CANCELLED, Status.RUNNING)
            for iid in ("order::1", "order::2", "order::3"):
                assert await store.owner_of(iid) is None  # released: claimable by engines

    trio.run(check)


async def _cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "hephaestus", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("accept", [True, False])
async def test_cancel_of_an_instance_a_live_engine_holds_goes_through_its_inbox(
    pg_dsn: str, accept: bool
) -> None:
    async with PostgresStorage(pg_dsn) as store:
        lease = await store.register("engine-a")
        before = make_instance("order::1", status=Status.WAITING)
        await store.put_owned(lease, before, expected_revision=0)
        result: list[subprocess.CompletedProcess[bytes]] = []

        async def run_cli() -> None:
            result.append(await _cli("cancel", "--store", pg_dsn, "order::1"))

        async with store.listen("engine-a") as wakes, trio.open_nursery() as nursery:
            nursery.start_soon(run_cli)
            with trio.fail_after(30):  # the CLI's append wakes the owner
                assert await wakes.receive() == Wake(engine_id="engine-a", instance_id="order::1")
            (row,) = await store.pending_requests("order::1")
            assert isinstance(row.request.request, hx._core._engine.Cancel)
            if accept:  # the owner applies it with its next fenced write
                after = make_instance("order::1", status=Status.CANCELLED, revision=2)
                answer = Consumed(request_id=row.request.request_id, answer=Accepted())
                await store.put_owned(
                    lease, after, expected_revision=1, release=True, consumed=[answer]
                )
            else:
                refusal = Refused(error="EventRejected", message="the owner said no")
                answer = Consumed(request_id=row.request.request_id, answer=refusal)
                await store.answer_requests(lease, "order::1", [answer])
        (done,) = result
        if accept:
            assert done.returncode == 0, done.stderr
            assert done.stdout.decode().strip() == "cancelled order::1 (it was waiting)"
        else:
            assert done.returncode == 1
            one_line_error(done.stderr.decode(), "EventRejected: the owner said no")
        assert await store.owner_of("order::1") == (None if accept else lease)
        stored = await store.get("order::1")
        assert stored is not None
        assert stored.status is (Status.CANCELLED if accept else Status.WAITING)


def test_prune_deletes_finished_instances_of_a_postgres_store(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(_fill, pg_dsn)
    assert main(["prune", "--store", pg_dsn, "--older-than", "1d"]) == 0
    assert "pruned 1 " in capsys.readouterr().out

    async def left() -> list[str]:
        async with PostgresStorage(pg_dsn) as store:
            return [i.id for i in await store.query()]

    assert trio.run(left) == ["order::1", "order::3"]


def test_store_at_recognises_postgres_urls() -> None:
    from hephaestus.storage._locate import store_at

    for dsn in ("postgresql://u@h/db", "postgres://h/db"):
        for read_only in (True, False):
            store = store_at(dsn, read_only=read_only)
            assert isinstance(store, PostgresStorage)
            assert (store.dsn, store.read_only) == (dsn, read_only)


def test_retry_of_an_instance_of_a_full_limited_workflow_is_refused_until_a_slot_frees(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``retry`` counts ``max_active`` as the engines do, with the limit the store last counted."""

    def capped(name: str, status: Status, revision: int) -> hx.Instance:
        return make_instance(f"capped::{name}", workflow="capped", status=status, revision=revision)

    async def fill() -> None:
        async with PostgresStorage(pg_dsn) as store:
            lease = await store.register("engine-a")
            await store.put_limited(  # admitted: it holds the one slot
                lease, capped("busy", Status.RUNNING, 1), expected_revision=0, max_active=1
            )
            await store.put_limited(
                lease, capped("f", Status.RUNNING, 1), expected_revision=0, max_active=2
            )
            failed = make_instance(
                "capped::f",
                workflow="capped",
                status=Status.FAILED,
                revision=2,
                error=hx.ErrorInfo(step="pay", type="RuntimeError", message="down", attempts=3),
                active=("pay",),
            )
            await store.put_limited(lease, failed, expected_revision=1, max_active=1, release=True)
            await store.release_engine(lease)  # the engine is gone; "busy" stays admitted

    async def finish_busy() -> None:
        async with PostgresStorage(pg_dsn) as store:
            lease = await store.register("engine-b")
            one = await store.claim_instance(lease, "capped::busy")
            assert one.claimed is not None
            done = capped("busy", Status.COMPLETED, 2)
            await store.put_limited(lease, done, expected_revision=1, max_active=1, release=True)

    async def stored(name: str) -> tuple[Status, list[str]]:
        async with PostgresStorage(pg_dsn) as store:
            got = await store.get(f"capped::{name}")
            assert got is not None
            slots = await trio.to_thread.run_sync(_slots, pg_dsn)
            return got.status, slots

    trio.run(fill)
    assert main(["retry", "--store", pg_dsn, "capped::f"]) == 1
    one_line_error(capsys.readouterr().err, "AdmissionFull", "max_active=1")
    assert trio.run(stored, "f") == (Status.FAILED, ["capped::busy"])  # nothing changed
    trio.run(finish_busy)
    assert main(["retry", "--store", pg_dsn, "capped::f"]) == 0
    assert "pay will run again" in capsys.readouterr().out
    assert trio.run(stored, "f") == (Status.RUNNING, ["capped::f"])  # it took the free slot


def _slots(dsn: str) -> list[str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id FROM hx_instances WHERE slot IS TRUE AND status IN "
            "('pending', 'running', 'waiting') ORDER BY id"
        ).fetchall()
    return [str(row[0]) for row in rows]
