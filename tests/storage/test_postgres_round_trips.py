"""PostgresStorage's writes cost one round trip per batch, and say everything in one statement.

A batch is ``BEGIN``, one statement per write and ``COMMIT`` in one pipeline,
synced once (before: ``BEGIN``, a sync, the statements' follow-ups, the
pipeline's closing sync and ``COMMIT``, four round trips). A fenced write's
inbox rows and notifications are part of its statement and depend on its row
having been written, which the notification tests here check on PostgreSQL.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import psycopg
import psycopg._pipeline
import pytest
import trio

from hephaestus import PostgresStorage, Status
from hephaestus.storage import LeaseLost
from hephaestus.storage._shared import (
    Accepted,
    Consumed,
    Finished,
    InboxRequest,
    Notification,
    Replied,
    Runnable,
)

from ._fs_samples import make_instance


@pytest.fixture
def writer_round_trips(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count, in the writer threads, what goes to the server and waits for its answer.

    ``transaction``: a ``with conn.transaction()`` outside a pipeline (a BEGIN
    and a COMMIT round trip); ``pipeline``: a pipeline closed (its sync);
    ``sync``: an explicit pipeline sync; ``outside``: a statement run outside
    a pipeline.
    """
    seen: Counter[str] = Counter()

    def mine() -> bool:
        return threading.current_thread().name.startswith("hephaestus-pg-writer")

    def counted(kind: str, original: Any, *, outside_only: bool = False) -> Any:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if mine() and not (outside_only and getattr(self, "_pipeline", None) is not None):
                seen[kind] += 1
            return original(self, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        psycopg.Connection, "transaction", counted("transaction", psycopg.Connection.transaction)
    )
    pipeline_exit = psycopg._pipeline.Pipeline.__exit__
    monkeypatch.setattr(psycopg._pipeline.Pipeline, "__exit__", counted("pipeline", pipeline_exit))
    monkeypatch.setattr(
        psycopg._pipeline.Pipeline, "sync", counted("sync", psycopg._pipeline.Pipeline.sync)
    )
    monkeypatch.setattr(
        psycopg.Connection,
        "execute",
        counted("outside", psycopg.Connection.execute, outside_only=True),
    )
    return seen


def round_trips(seen: Counter[str]) -> int:
    return 2 * seen["transaction"] + seen["pipeline"] + seen["sync"] + seen["outside"]


def _request(iid: str, rid: str, sender: str) -> InboxRequest:
    from hephaestus._core._engine import Deliver

    return InboxRequest(
        instance_id=iid, request_id=rid, sender=sender, request=Deliver(event="go"), at=1.0
    )


async def _drain(
    store: PostgresStorage, channel: trio.abc.ReceiveChannel[Notification]
) -> list[Notification]:
    assert await store.flush_notifications()
    got: list[Notification] = []
    while True:
        try:
            got.append(channel.receive_nowait())  # type: ignore[attr-defined]
        except trio.WouldBlock:
            return got


async def test_every_kind_of_write_is_one_round_trip(
    pg_dsn: str, writer_round_trips: Counter[str]
) -> None:
    async with PostgresStorage(pg_dsn) as store:
        lease = await store.register("a")
        await store.put(make_instance("k::plain"))  # the writer connects: not counted below
        writer_round_trips.clear()
        await store.put(make_instance("k::plain", revision=2), expected_revision=1)
        assert round_trips(writer_round_trips) == 1, writer_round_trips
        await store.put_owned(lease, make_instance("k::1"), expected_revision=0)
        assert round_trips(writer_round_trips) == 2, writer_round_trips
        await store.append_request(_request("k::1", "r1", sender="b"))
        done = make_instance("k::1", revision=2, status=Status.COMPLETED)
        consumed = [Consumed(request_id="r1", answer=Accepted())]
        await store.put_owned(lease, done, expected_revision=1, release=True, consumed=consumed)
        assert round_trips(writer_round_trips) == 3, writer_round_trips
        assert store.commits == 4
        row = await store.get_request("k::1", "r1")
        assert row is not None
        assert (row.consumed, row.answer) == (True, Accepted())
        assert await store.get("k::1") == done
        assert await store.owner_of("k::1") is None


async def test_a_refused_fenced_write_changes_and_sends_nothing(pg_dsn: str) -> None:
    async with PostgresStorage(pg_dsn) as store:
        a = await store.register("a")
        b = await store.register("b")
        await store.put_owned(a, make_instance("k::1"), expected_revision=0)
        await store.append_request(_request("k::1", "r1", sender="c"))
        async with store.listen("c") as to_c:
            done = make_instance("k::1", revision=2, status=Status.COMPLETED)
            consumed = [Consumed(request_id="r1", answer=Accepted())]
            with pytest.raises(LeaseLost):
                await store.put_owned(b, done, expected_revision=1, release=True, consumed=consumed)
            assert await _drain(store, to_c) == []
            assert [r.request.request_id for r in await store.pending_requests("k::1")] == ["r1"]
            assert await store.get("k::1") == make_instance("k::1")
            await store.put_owned(a, done, expected_revision=1, release=True, consumed=consumed)
            assert await _drain(store, to_c) == [
                Replied(engine_id="c", instance_id="k::1", request_id="r1"),
                Finished(instance_id="k::1"),
            ]


async def test_a_release_is_runnable_only_for_rows_its_write_did_not_consume(pg_dsn: str) -> None:
    async with PostgresStorage(pg_dsn) as store:
        a = await store.register("a")
        for iid in ("k::1", "k::2"):
            await store.put_owned(a, make_instance(iid, status=Status.WAITING), expected_revision=0)
        await store.append_request(_request("k::1", "r1", sender="c"))
        await store.append_request(_request("k::2", "r1", sender="c"))
        await store.append_request(_request("k::2", "r2", sender="c"))
        async with store.listen("x") as to_x:
            parked = make_instance("k::1", revision=2, status=Status.WAITING)
            only = [Consumed(request_id="r1", answer=Accepted())]
            await store.put_owned(a, parked, expected_revision=1, release=True, consumed=only)
            assert await _drain(store, to_x) == []  # its one pending row was this write's
            parked = make_instance("k::2", revision=2, status=Status.WAITING)
            await store.put_owned(a, parked, expected_revision=1, release=True, consumed=only)
            assert await _drain(store, to_x) == [Runnable()]  # r2 is still pending
