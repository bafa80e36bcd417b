"""The SharedStorage contract, one suite for every shared store.

Each test gets a :class:`SharedCase`: an open store whose lease TTL is
``TTL`` and an ``advance(seconds)`` that moves the store's clock forward (the
memory store reads a manual clock; a SQL store can shift the time its
queries use as "now", or sleep). To run the suite on another store, add its
name to ``SHARED_KINDS`` and a branch to ``open_case`` (``request`` is there
for session fixtures such as a database DSN).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx
from hephaestus import Instance, RevisionConflict, Status, Storage, Timer
from hephaestus._core._engine import Cancel, Deliver
from hephaestus.storage import LeaseLost, MemorySharedStorage, SharedStorage
from hephaestus.storage._shared import (
    Accepted,
    Consumed,
    Finished,
    InboxRequest,
    Lease,
    Notification,
    Refused,
    Replied,
    Runnable,
    Wake,
    decode_answer,
    decode_notification,
    decode_request,
    encode_answer,
    encode_notification,
    encode_request,
    next_deadline,
)

from ._fs_samples import make_instance

TTL = 10.0
T0 = 1_767_225_600.0

SHARED_KINDS = ["memory", "postgres"]


@dataclass
class SharedCase:
    """An open shared store and a way to move its clock."""

    store: Any
    advance: Callable[[float], Awaitable[None]]
    """Move the store's clock forward by that many seconds."""
    now: Callable[[], float]
    """The store's clock."""
    settle: Callable[[], Awaitable[None]]
    """Wait until notifications sent so far reached their listeners' channels."""


class ManualClock:
    """A clock that moves only when told."""

    def __init__(self, start: float = T0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t


@asynccontextmanager
async def open_case(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[SharedCase]:
    """Open a store of ``kind`` with lease TTL ``TTL``; yield it with its clock controls."""
    if kind == "postgres":  # the database's clock, shifted by the store's clock_skew
        async with hx.PostgresStorage(request.getfixturevalue("pg_dsn"), lease_ttl=TTL) as pg:

            async def shift(seconds: float) -> None:
                pg.clock_skew += seconds
                await trio.lowlevel.checkpoint()

            async def flush() -> None:
                await pg.flush_notifications()

            yield SharedCase(
                store=pg, advance=shift, now=lambda: time.time() + pg.clock_skew, settle=flush
            )
        return
    assert kind == "memory", kind
    clock = ManualClock()

    async def advance(seconds: float) -> None:
        clock.t += seconds
        await trio.lowlevel.checkpoint()

    async with MemorySharedStorage(clock=clock, lease_ttl=TTL) as store:
        yield SharedCase(
            store=store,
            advance=advance,
            now=clock.now,
            settle=trio.testing.wait_all_tasks_blocked,
        )


@pytest.fixture(params=SHARED_KINDS)
async def case(request: pytest.FixtureRequest) -> AsyncIterator[SharedCase]:
    async with open_case(request.param, request) as opened:
        yield opened


def running(iid: str, revision: int = 1, **fields: Any) -> Instance:
    return make_instance(iid, revision=revision, status=Status.RUNNING, **fields)


def waiting(iid: str, revision: int = 1, deadline: float | None = None) -> Instance:
    timers = (
        () if deadline is None else (Timer(id="t1", kind="timeout", step="s", deadline=deadline),)
    )
    return make_instance(iid, revision=revision, status=Status.WAITING, timers=timers)


def resume_request(iid: str, rid: str, sender: str = "b") -> InboxRequest:
    return InboxRequest(
        instance_id=iid, request_id=rid, sender=sender, request=Deliver(event="go"), at=1.0
    )


def claimed_ids(batch: Any) -> list[str]:
    return [c.instance.id for c in batch.claimed]


async def drain(
    case: SharedCase, channel: trio.abc.ReceiveChannel[Notification]
) -> list[Notification]:
    """Return what ``channel`` received so far, once the store's deliveries settled."""
    await case.settle()
    got: list[Notification] = []
    while True:
        try:
            got.append(channel.receive_nowait())  # type: ignore[attr-defined]
        except trio.WouldBlock:
            return got


# --- the protocol and the codecs ---------------------------------------------------------------


async def test_a_shared_store_is_both_protocols(case: SharedCase) -> None:
    assert isinstance(case.store, SharedStorage)
    assert isinstance(case.store, Storage)
    assert case.store.lease_ttl == TTL
    assert (hx.SharedStorage, hx.MemorySharedStorage, hx.LeaseLost) == (
        SharedStorage,
        MemorySharedStorage,
        LeaseLost,
    )


def test_wire_formats_round_trip() -> None:
    for note in (
        Wake(engine_id="a", instance_id="k::1"),
        Replied(engine_id="a", instance_id="k::1", request_id="r"),
        Finished(instance_id="k::1"),
        Runnable(),
    ):
        assert decode_notification(encode_notification(note)) == note
    request = InboxRequest(
        instance_id="k::1", request_id="r", sender="a", request=Cancel(reason="x"), at=2.0
    )
    assert decode_request(encode_request(request)) == request
    for answer in (
        Accepted(),
        Accepted(value="t3"),
        Accepted(value=True),
        Refused(error="E", message="m"),
    ):
        assert decode_answer(encode_answer(answer)) == answer
    assert next_deadline(waiting("k::1")) is None
    assert next_deadline(waiting("k::1", deadline=5.0)) == 5.0


# --- engines and leases ------------------------------------------------------------------------


async def test_register_starts_a_new_epoch_each_time(case: SharedCase) -> None:
    a1 = await case.store.register("a")
    b1 = await case.store.register("b")
    a2 = await case.store.register("a")
    assert (a1, b1, a2) == (
        Lease(engine_id="a", epoch=1),
        Lease(engine_id="b", epoch=1),
        Lease(engine_id="a", epoch=2),
    )


async def test_heartbeat_renews_a_live_lease_by_the_store_clock(case: SharedCase) -> None:
    lease = await case.store.register("a")
    for _ in range(5):  # 5 * 0.6 TTL: alive only because every beat renews it
        await case.advance(TTL * 0.6)
        beat = await case.store.heartbeat(lease)
        assert (beat.lease, beat.expired) == (lease, False)
        assert beat.expires_at == pytest.approx(case.now() + TTL)


async def test_a_heartbeat_after_the_ttl_starts_a_new_epoch(case: SharedCase) -> None:
    lease = await case.store.register("a")
    await case.store.put_owned(lease, running("k::1"), expected_revision=0)
    await case.advance(TTL)
    beat = await case.store.heartbeat(lease)
    assert beat.expired
    assert beat.lease == Lease(engine_id="a", epoch=2)
    # The old epoch's instance is no longer held, not even by the new epoch of "a".
    assert await case.store.owner_of("k::1") is None
    with pytest.raises(LeaseLost):
        await case.store.claim(lease, limit=10)
    batch = await case.store.claim(beat.lease, limit=10)
    assert claimed_ids(batch) == ["k::1"]
    assert batch.claimed[0].previous_owner == lease


# --- claims ------------------------------------------------------------------------------------


async def test_claim_takes_only_unheld_instances_with_work(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    now = case.now()
    await store.put(running("k::run"))
    await store.put(waiting("k::idle"))
    await store.put(waiting("k::due", deadline=now - 1))
    await store.put(waiting("k::later", deadline=now + 50))
    await store.put(waiting("k::later2", deadline=now + 30))
    await store.put(make_instance("k::done", status=Status.COMPLETED))
    await store.put(waiting("k::mail"))
    await store.append_request(resume_request("k::mail", "r1"))
    batch = await store.claim(a, limit=100)
    assert claimed_ids(batch) == ["k::due", "k::mail", "k::run"]
    assert all(c.previous_owner is None for c in batch.claimed)
    assert batch.next_due == pytest.approx(now + 30)
    for iid in claimed_ids(batch):
        assert await store.owner_of(iid) == a
    assert await store.owner_of("k::idle") is None
    # Claimed ones are held now: a second claim finds nothing to do.
    again = await store.claim(a, limit=100)
    assert claimed_ids(again) == []
    # The claim changed neither snapshot nor revision.
    assert batch.claimed[2].instance == running("k::run")
    assert await store.get("k::run") == running("k::run")


async def test_a_due_deadline_is_judged_by_the_store_clock(case: SharedCase) -> None:
    a = await case.store.register("a")
    await case.store.put(waiting("k::1", deadline=case.now() + 5))
    assert claimed_ids(await case.store.claim(a, limit=10)) == []
    await case.advance(5)
    await case.store.heartbeat(a)
    assert claimed_ids(await case.store.claim(a, limit=10)) == ["k::1"]


async def test_claim_respects_the_limit_and_goes_by_id(case: SharedCase) -> None:
    a = await case.store.register("a")
    for n in (5, 3, 1, 4, 2):
        await case.store.put(running(f"k::{n}"))
    assert claimed_ids(await case.store.claim(a, limit=2)) == ["k::1", "k::2"]
    assert claimed_ids(await case.store.claim(a, limit=2)) == ["k::3", "k::4"]
    assert claimed_ids(await case.store.claim(a, limit=2)) == ["k::5"]
    with pytest.raises(ValueError, match="limit"):
        await case.store.claim(a, limit=0)


async def test_no_claim_steals_from_a_live_owner(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    b = await store.register("b")
    for n in range(20):
        await store.put_owned(a, running(f"k::{n:02}"), expected_revision=0)
    for _ in range(3):  # a keeps beating; b keeps claiming
        await case.advance(TTL / 2)
        await store.heartbeat(a)
        await store.heartbeat(b)
        assert claimed_ids(await store.claim(b, limit=100)) == []
        assert (await store.claim_instance(b, "k::00")).owner == a
    assert [await store.owner_of(f"k::{n:02}") for n in range(20)] == [a] * 20


async def test_a_dead_owners_instances_are_taken_over(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    b = await store.register("b")
    await store.put_owned(a, running("k::1"), expected_revision=0)
    await case.advance(TTL * 0.75)
    await store.heartbeat(b)  # a is silent from now on
    await case.advance(TTL * 0.5)
    await store.heartbeat(b)
    batch = await store.claim(b, limit=10)
    assert claimed_ids(batch) == ["k::1"]
    assert batch.claimed[0].previous_owner == a
    assert await store.owner_of("k::1") == b


async def test_concurrent_claimers_take_each_instance_once(case: SharedCase) -> None:
    store = case.store
    leases = [await store.register(name) for name in "abcd"]
    for n in range(60):
        await store.put(running(f"k::{n:02}"))
    taken: dict[str, list[str]] = {}

    async def claimer(lease: Lease) -> None:
        while True:
            batch = await store.claim(lease, limit=7)
            if not batch.claimed:
                return
            for c in batch.claimed:
                taken.setdefault(c.instance.id, []).append(lease.engine_id)

    async with trio.open_nursery() as nursery:
        for lease in leases:
            nursery.start_soon(claimer, lease)
    assert sorted(taken) == [f"k::{n:02}" for n in range(60)]
    assert [iid for iid, who in taken.items() if len(who) != 1] == []


async def test_claim_instance_three_cases(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    b = await store.register("b")
    await store.put(waiting("k::free"))
    await store.put_owned(a, waiting("k::held"), expected_revision=0)
    one = await store.claim_instance(b, "k::free")
    assert one.owner is None
    assert one.claimed is not None
    assert one.claimed.instance == waiting("k::free")
    assert one.claimed.previous_owner is None
    assert (await store.claim_instance(b, "k::free")).claimed is not None  # its own: fine
    held = await store.claim_instance(b, "k::held")
    assert (held.claimed, held.owner) == (None, a)
    nothing = await store.claim_instance(b, "k::nope")
    assert (nothing.claimed, nothing.owner) == (None, None)
    await case.advance(TTL)
    with pytest.raises(LeaseLost):
        await store.claim_instance(b, "k::free")


# --- fenced writes -----------------------------------------------------------------------------


async def test_put_owned_creates_owned_and_fences_by_owner_then_revision(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    b = await store.register("b")
    await store.put_owned(a, running("k::1", 1), expected_revision=0)
    assert await store.owner_of("k::1") == a
    with pytest.raises(RevisionConflict):
        await store.put_owned(a, running("k::1", 2), expected_revision=0)
    await store.put_owned(a, running("k::1", 2), expected_revision=1)
    with pytest.raises(RevisionConflict):
        await store.put_owned(a, running("k::1", 3), expected_revision=1)
    with pytest.raises(LeaseLost):  # right revision, wrong owner
        await store.put_owned(b, running("k::1", 3), expected_revision=2)
    with pytest.raises(LeaseLost):  # wrong owner and wrong revision: ownership first
        await store.put_owned(b, running("k::1", 3), expected_revision=1)
    with pytest.raises(LeaseLost):  # gone
        await store.put_owned(a, running("k::gone", 2), expected_revision=1)
    assert await store.get("k::1") == running("k::1", 2)
    assert await store.get("k::gone") is None


async def test_a_paused_engines_writes_are_fenced_after_a_takeover(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    await store.put_owned(a, running("k::1", 1), expected_revision=0)
    await case.advance(TTL + 1)  # a is paused past its lease
    # Nobody claimed it yet: a's write harms no one and succeeds.
    await store.put_owned(a, running("k::1", 2), expected_revision=1)
    b = await store.register("b")
    assert claimed_ids(await store.claim(b, limit=10)) == ["k::1"]
    await store.put_owned(b, running("k::1", 3), expected_revision=2)
    with pytest.raises(LeaseLost):  # a wakes up and writes what it computed
        await store.put_owned(a, running("k::1", 3, metadata={"stale": True}), expected_revision=2)
    assert await store.get("k::1") == running("k::1", 3)
    # A new epoch of the same engine is another lease: still fenced.
    beat = await store.heartbeat(a)
    assert beat.expired
    with pytest.raises(LeaseLost):
        await store.put_owned(beat.lease, running("k::1", 4), expected_revision=3)


async def test_put_owned_release_and_next_deadline(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    b = await store.register("b")
    await store.put_owned(a, running("k::1", 1), expected_revision=0)
    await store.put_owned(
        a, waiting("k::1", 2, deadline=case.now() + 3), expected_revision=1, release=True
    )
    assert await store.owner_of("k::1") is None
    with pytest.raises(LeaseLost):  # released: a must claim it again before writing
        await store.put_owned(a, running("k::1", 3), expected_revision=2)
    batch = await store.claim(b, limit=10)
    assert claimed_ids(batch) == []
    assert batch.next_due == pytest.approx(case.now() + 3)
    await case.advance(3)
    await store.heartbeat(b)
    assert claimed_ids(await store.claim(b, limit=10)) == ["k::1"]


async def test_plain_put_keeps_the_owner(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    await store.put_owned(a, running("k::1", 1), expected_revision=0)
    await store.put(running("k::1", 2), expected_revision=1)
    assert await store.owner_of("k::1") == a
    with pytest.raises(RevisionConflict):  # a's next write sees the change
        await store.put_owned(a, running("k::1", 2), expected_revision=1)


# --- the inbox ---------------------------------------------------------------------------------


async def test_append_request_is_once_per_request_id(case: SharedCase) -> None:
    store = case.store
    await store.put(waiting("k::1"))
    first = await store.append_request(resume_request("k::1", "dedupe:x"))
    assert (first.duplicate, first.owner, first.row.consumed) == (False, None, False)
    again = await store.append_request(resume_request("k::1", "dedupe:x", sender="c"))
    assert again.duplicate
    assert again.row == first.row  # the first sender's row, unchanged
    other = await store.append_request(resume_request("k::1", "r2"))
    assert other.row.seq > first.row.seq
    pending = await store.pending_requests("k::1")
    assert [r.request.request_id for r in pending] == ["dedupe:x", "r2"]
    assert await store.get_request("k::1", "dedupe:x") == first.row
    assert await store.get_request("k::1", "nope") is None
    assert await store.pending_requests("k::other") == []


async def test_append_to_an_unknown_instance_is_refused_and_stores_nothing(
    case: SharedCase,
) -> None:
    got = await case.store.append_request(resume_request("k::nope", "r1"))
    assert got.row.consumed
    assert isinstance(got.row.answer, Refused)
    assert got.row.answer.error == "InstanceNotFound"
    assert await case.store.get_request("k::nope", "r1") is None


async def test_append_wakes_the_live_owner_only(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    await store.register("b")
    await store.put_owned(a, waiting("k::1"), expected_revision=0)
    async with store.listen("a") as to_a, store.listen("b") as to_b:
        got = await store.append_request(resume_request("k::1", "r1"))
        assert got.owner == a
        assert await drain(case, to_a) == [Wake(engine_id="a", instance_id="k::1")]
        assert await drain(case, to_b) == []
        dup = await store.append_request(resume_request("k::1", "r1"))
        assert dup.duplicate
        assert dup.owner == a
        assert await drain(case, to_a) == []  # no second wake for a duplicate


async def test_put_owned_consumes_rows_and_replies_to_their_senders(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    await store.put_owned(a, waiting("k::1", 1), expected_revision=0)
    await store.append_request(resume_request("k::1", "r1", sender="b"))
    await store.append_request(resume_request("k::1", "r2", sender="c"))
    async with store.listen("b") as to_b, store.listen("c") as to_c:
        await store.put_owned(
            a,
            running("k::1", 2),
            expected_revision=1,
            consumed=[Consumed(request_id="r1", answer=Accepted())],
        )
        assert await drain(case, to_b) == [
            Replied(engine_id="b", instance_id="k::1", request_id="r1")
        ]
        assert await drain(case, to_c) == []
    row = await store.get_request("k::1", "r1")
    assert row is not None
    assert (row.consumed, row.answer) == (True, Accepted())
    assert [r.request.request_id for r in await store.pending_requests("k::1")] == ["r2"]


async def test_a_fenced_write_that_fails_consumes_nothing(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    b = await store.register("b")
    await store.put_owned(a, waiting("k::1", 1), expected_revision=0)
    await store.append_request(resume_request("k::1", "r1"))
    with pytest.raises(LeaseLost):
        await store.put_owned(
            b,
            running("k::1", 2),
            expected_revision=1,
            consumed=[Consumed(request_id="r1", answer=Accepted())],
        )
    with pytest.raises(LeaseLost):
        await store.answer_requests(b, "k::1", [Consumed(request_id="r1", answer=Accepted())])
    assert [r.request.request_id for r in await store.pending_requests("k::1")] == ["r1"]


async def test_answer_requests_keeps_the_first_answer(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    await store.put_owned(a, waiting("k::1"), expected_revision=0)
    await store.append_request(resume_request("k::1", "r1"))
    refused = Refused(error="EventRejected", message="no step waits for 'go'")
    await store.answer_requests(a, "k::1", [Consumed(request_id="r1", answer=refused)])
    await store.answer_requests(a, "k::1", [Consumed(request_id="r1", answer=Accepted())])
    row = await store.get_request("k::1", "r1")
    assert row is not None
    assert row.answer == refused
    assert await store.pending_requests("k::1") == []
    assert await store.get("k::1") == waiting("k::1")  # the snapshot is untouched


async def test_delete_removes_the_inbox_rows(case: SharedCase) -> None:
    store = case.store
    await store.put(waiting("k::1"))
    await store.append_request(resume_request("k::1", "r1"))
    await store.delete("k::1")
    assert await store.get_request("k::1", "r1") is None
    assert await store.pending_requests("k::1") == []


# --- notifications and releases ----------------------------------------------------------------


async def test_terminal_writes_and_releases_are_broadcast(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    await store.put_owned(a, running("k::1", 1), expected_revision=0)
    await store.put_owned(a, running("k::2", 1), expected_revision=0)
    async with store.listen("x") as to_x:
        done = make_instance("k::1", revision=2, status=Status.COMPLETED)
        await store.put_owned(a, done, expected_revision=1, release=True)
        assert await drain(case, to_x) == [Finished(instance_id="k::1")]
        await store.release_instances(a, ["k::2", "k::1", "k::nope"])
        assert await drain(case, to_x) == [Runnable()]
        assert await store.owner_of("k::2") is None
        await store.notify(Wake(engine_id="x", instance_id="k::2"))
        await store.notify(Wake(engine_id="y", instance_id="k::2"))
        assert await drain(case, to_x) == [Wake(engine_id="x", instance_id="k::2")]
    # After leaving, nothing is delivered and nothing breaks.
    await store.notify(Runnable())


async def test_release_engine_frees_its_instances_at_once(case: SharedCase) -> None:
    store = case.store
    a = await store.register("a")
    b = await store.register("b")
    await store.put_owned(a, running("k::1"), expected_revision=0)
    await store.put_owned(b, running("k::2"), expected_revision=0)
    async with store.listen("b") as to_b:
        await store.release_engine(a)
        assert Runnable() in await drain(case, to_b)
    assert await store.owner_of("k::1") is None
    assert await store.owner_of("k::2") == b
    assert claimed_ids(await store.claim(b, limit=10)) == ["k::1"]
    await store.release_engine(a)  # again: harmless
    beat = await store.heartbeat(a)
    assert beat.expired
    assert beat.lease.epoch == 2


async def test_pending_instances_lists_what_a_lease_must_serve(case: SharedCase) -> None:
    store = case.store
    if not hasattr(store, "pending_instances"):
        pytest.skip("pending_instances is optional")
    a = await store.register("a")
    b = await store.register("b")
    for iid, lease in (("k::1", a), ("k::2", a), ("k::3", b)):
        await store.put_owned(lease, waiting(iid), expected_revision=0)
    await store.append_request(resume_request("k::2", "r1"))
    await store.append_request(resume_request("k::3", "r2"))
    await store.append_request(resume_request("k::1", "r3"))
    await store.answer_requests(a, "k::1", [Consumed(request_id="r3", answer=Accepted())])
    assert await store.pending_instances(a) == ["k::2"]
    assert await store.pending_instances(b) == ["k::3"]
    assert await store.pending_instances(Lease(engine_id="a", epoch=9)) == []
