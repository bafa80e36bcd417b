"""max_active across engines on one MemorySharedStorage: the store counts the slots.

A :class:`CountingStore` checks after every change to a row (a write, a slot
handed on) that at most ``max_active`` instances of the workflow are admitted
(stored RUNNING or WAITING, or holding a slot) and records the order in which
slots were granted, so FIFO is checked against the stored queue keys.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx
from hephaestus.storage._shared_memory import MemorySharedStorage
from hephaestus.testing import VirtualClock

from .shared_cluster import TTL, spawn

_ADMITTED = (hx.Status.RUNNING, hx.Status.WAITING)


class CountingStore(MemorySharedStorage):  # type: ignore[misc]  # final: a test-only subclass
    """A MemorySharedStorage that checks the admitted count after every row change."""

    def __init__(self, workflow: str, limit: int, **options: Any) -> None:
        super().__init__(**options)
        self.workflow = workflow
        self.limit = limit
        self.peak = 0
        self.granted: list[str] = []
        """Ids in the order they were first admitted (given a slot or stored admitted)."""
        self.created: dict[str, int] = {}
        """Id -> place of the write that first stored it PENDING (the creation order)."""
        self.over: list[tuple[str, ...]] = []
        """Every moment more than ``limit`` were admitted: the ids admitted then."""

    def _write(self, instance: hx.Instance, owner: Any) -> None:
        super()._write(instance, owner)
        if instance.workflow == self.workflow and instance.status is hx.Status.PENDING:
            self.created.setdefault(instance.id, len(self.created))
        self._check()

    def _fill(self, workflow: str, max_active: int) -> int:
        promoted = super()._fill(workflow, max_active)
        self._check()
        return promoted

    def _check(self) -> None:
        admitted = sorted(
            iid
            for iid, row in self._rows.items()
            if row.workflow == self.workflow and (row.status in _ADMITTED or row.holds_slot)
        )
        for iid in admitted:
            if iid not in self.granted:
                self.granted.append(iid)
        self.peak = max(self.peak, len(admitted))
        if len(admitted) > self.limit:
            self.over.append(tuple(admitted))


def limited_workflow(limit: int) -> tuple[hx.Workflow, dict[str, int]]:
    """A one-step workflow with ``max_active=limit`` whose step sleeps 1-3 s; runs by id."""
    runs: dict[str, int] = {}

    @hx.step(events=("done",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        runs[ctx.instance_id] = runs.get(ctx.instance_id, 0) + 1
        await trio.sleep(1 + int(ctx.initial["n"]) % 3)
        return "done"

    workflow = hx.Workflow(
        "limited",
        start=work,
        transitions={(work, "done"): hx.Done},
        unique=hx.Unique("limited"),
        max_active=limit,
    )
    return workflow, runs


async def test_three_engines_one_killed_one_paused_never_exceed_max_active(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = VirtualClock()
    store = CountingStore("limited", 3, clock=clock, lease_ttl=TTL)
    limited, _ = limited_workflow(3)
    async with trio.open_nursery() as nursery:
        nodes = [await spawn(nursery, store, [limited], clock) for _ in range(3)]
        ids = []
        for i in range(30):
            ids.append(await nodes[i % 3].engine.start(limited, f"r{i:02d}", {"n": i}))
            await trio.sleep(0.1)
        await trio.sleep(2.5)
        nodes[0].kill()  # SIGKILL with admitted instances: their slots stay taken
        nodes[1].conn.pause()  # SIGSTOP past its lease
        await trio.sleep(3 * TTL)
        nodes[1].conn.resume()
        finals = [await nodes[2].engine.wait(instance_id) for instance_id in ids]
        nursery.cancel_scope.cancel()
    assert {final.status for final in finals} == {hx.Status.COMPLETED}
    assert store.over == []
    assert store.peak == 3
    assert sorted(store.granted) == sorted(ids)
    # FIFO: slots were granted in the order the PENDING instances were stored (created).
    assert store.granted == sorted(store.granted, key=lambda iid: store.created[iid])
    assert store.slots("limited") == []


async def test_a_freed_slot_reaches_the_queue_when_its_engine_dies_after_the_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = VirtualClock()
    store = CountingStore("limited", 1, clock=clock, lease_ttl=TTL)
    limited, _ = limited_workflow(1)
    async with trio.open_nursery() as nursery:
        nodes = [await spawn(nursery, store, [limited], clock, deaf=True) for _ in range(2)]
        x = await nodes[0].engine.start(limited, "x", {"n": 2})  # its step takes 3 s
        await trio.sleep(0.5)
        assert (await nodes[0].engine.get(x)).status is hx.Status.RUNNING
        y = await nodes[1].engine.start(limited, "y", {"n": 0})
        assert (await nodes[1].engine.get(y)).status is hx.Status.PENDING
        owner = store.owner(x)
        assert owner is not None
        running, other = sorted(nodes, key=lambda node: node.engine_id != owner.engine_id)
        # x's finishing write (which hands its slot to y) commits, then its engine dies.
        running.conn.kill_after("put_limited")
        # x ends at 3 s; y is claimed by the other engine (at worst after the dead one's
        # lease expired, if its claim took y just before it died) and runs 1 s.
        with trio.fail_after(2.5 + TTL + TTL / 4 + 2.5):
            done = await other.engine.wait(y)
        assert running.conn.killed
        nursery.cancel_scope.cancel()
    assert done.status is hx.Status.COMPLETED
    assert (await store.get(x)).status is hx.Status.COMPLETED  # type: ignore[union-attr]
    assert store.granted == [x, y]
    assert store.peak == 1


async def test_cancel_of_pending_and_admitted_and_retry_needs_a_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = VirtualClock()
    store = CountingStore("flaky", 1, clock=clock, lease_ttl=TTL)
    failing = {"flaky::f": True}

    @hx.step(events=("done",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(5)
        if failing.get(ctx.instance_id):
            raise RuntimeError("boom")
        return "done"

    flaky = hx.Workflow(
        "flaky",
        start=work,
        transitions={(work, "done"): hx.Done},
        unique=hx.Unique("flaky"),
        max_active=1,
    )
    async with trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [flaky], clock)
        b = await spawn(nursery, store, [flaky], clock)
        f = await a.engine.start(flaky, "f")
        await trio.sleep(6)
        assert (await a.engine.get(f)).status is hx.Status.FAILED
        p = await a.engine.start(flaky, "p")  # takes the slot f freed
        q = await b.engine.start(flaky, "q")  # queued
        r = await b.engine.start(flaky, "r")  # queued behind q
        await trio.sleep(0.5)
        assert store.slots("flaky") == [p]
        await b.engine.cancel(q)  # a queued one leaves the queue: nothing admitted
        assert store.slots("flaky") == [p]
        # retry of a FAILED instance needs a slot: none is free, so it is refused
        with pytest.raises(hx.AdmissionFull, match="max_active=1"):
            await b.engine.retry(f)
        assert (await b.engine.get(f)).status is hx.Status.FAILED
        await a.engine.cancel(p)  # an admitted one frees its slot, which r gets
        await trio.sleep(0.5)
        assert store.slots("flaky") == [r]
        assert (await a.engine.wait(r)).status is hx.Status.COMPLETED
        failing["flaky::f"] = False
        await b.engine.retry(f)  # free now: admitted at once
        assert store.slots("flaky") == [f]
        assert (await a.engine.wait(f)).status is hx.Status.COMPLETED
        statuses = {i: (await a.engine.get(i)).status for i in (p, q, r)}
        nursery.cancel_scope.cancel()
    assert statuses == {
        p: hx.Status.CANCELLED,
        q: hx.Status.CANCELLED,
        r: hx.Status.COMPLETED,
    }
    assert store.over == []
    assert store.granted == [f, p, r]


async def test_a_slot_freed_by_a_plain_write_is_handed_on_by_a_claimer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A tool's plain put (no slot bookkeeping) ends an admitted instance: a claimer's
    # admit_pending hands the slot on, so nothing waits on a slot forever.
    clock = VirtualClock()
    store = CountingStore("limited", 1, clock=clock, lease_ttl=TTL)

    @hx.step(events=("go",))
    async def park(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Suspend()

    parked = hx.Workflow(
        "limited",
        start=park,
        transitions={(park, "go"): hx.Done},
        unique=hx.Unique("limited"),
        max_active=1,
    )
    async with trio.open_nursery() as nursery:
        node = await spawn(nursery, store, [parked], clock)
        x = await node.engine.start(parked, "x")
        y = await node.engine.start(parked, "y")
        await trio.sleep(0.5)
        assert store.slots("limited") == [x]
        stored = await store.get(x)
        assert stored is not None
        ended = hx.Instance(
            **{
                **{f: getattr(stored, f) for f in stored.__struct_fields__},
                "status": hx.Status.CANCELLED,
                "revision": stored.revision + 1,
                "active": (),
                "waiting": {},
            }
        )
        await store.put(ended, expected_revision=stored.revision)
        await trio.sleep(TTL / 4 + 0.1)  # the claimer's next round hands the slot on
        admitted = await store.get(y)
        nursery.cancel_scope.cancel()
    assert admitted is not None
    assert admitted.status is hx.Status.WAITING
    assert store.slots("limited") == [y]


async def test_an_instance_no_engine_runs_is_not_claimed_again_and_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = VirtualClock()
    store = MemorySharedStorage(clock=clock, lease_ttl=TTL)
    limited, _ = limited_workflow(2)

    @hx.step(events=("done",))
    async def haunt(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    ghost = hx.Workflow(
        "ghost", start=haunt, transitions={(haunt, "done"): hx.Done}, unique=hx.Unique("ghost")
    )
    async with store:
        async with hx.open_engine(workflows=[ghost], storage=store.connect(), clock=clock) as e:
            ghost_id = await e.start(ghost, "g")
        # The only engine that ran it is gone: it is RUNNING, with no owner.
        assert (await store.get(ghost_id)).status is hx.Status.RUNNING  # type: ignore[union-attr]
        taken: list[str] = []
        original = store._take
        stop = trio.CancelScope()

        def counting(instance_id: str, row: Any, lease: Any) -> Any:
            taken.append(instance_id)
            if len(taken) >= 100:  # claimed and released in a loop: end the test, it failed
                stop.cancel()
            return original(instance_id, row, lease)

        store._take = counting  # type: ignore[method-assign]
        with stop:
            async with trio.open_nursery() as nursery:
                nodes = [await spawn(nursery, store, [limited], clock) for _ in range(2)]
                await trio.sleep(10 * 60)
                nursery.cancel_scope.cancel()
        # Before, each engine claimed and released it at every look (every TTL/4, and at
        # once again when the other's release sent Runnable: in a loop, in virtual time).
        assert taken == []
        for node in nodes:
            assert node.events.count("runner.skip", ghost_id) == 1
            assert node.events.count("engine.claim") == 0
        assert (await store.get(ghost_id)).status is hx.Status.RUNNING  # type: ignore[union-attr]
        assert store.owner(ghost_id) is None


async def test_a_start_whose_lease_expired_during_its_write_does_not_run_a_recover(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The renewal that finds the lease expired drops the new entry while its PENDING
    # write is under way, mailing it the runner's "lease lost" fault. Forwarded as a
    # request, that Recover made the PENDING instance RUNNING outside admission (a
    # write refused with AdmissionFull, retried with backoff while the slots were taken).
    # Found by property_tests/test_shared_admission_properties.py.
    clock = VirtualClock()
    store = CountingStore("limited", 2, clock=clock, lease_ttl=TTL)
    limited, _ = limited_workflow(2)
    async with trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [limited], clock)
        b = await spawn(nursery, store, [limited], clock)
        for _ in range(2):  # past its lease: the renewal waiting meanwhile finds it expired
            a.conn.pause()
            await trio.sleep(1.5 * TTL)
            a.conn.resume()
        # while that renewal returns: z0 and z1 take the slots, z2's write is under way
        ids = [await (a, b, a)[n].engine.start(limited, f"z{n}", {"n": 4 - n}) for n in range(3)]
        finals = [await b.engine.wait(i) for i in ids]
        nursery.cancel_scope.cancel()
    assert [final.status for final in finals] == [hx.Status.COMPLETED] * 3
    assert [r.getMessage() for r in caplog.records if "AdmissionFull" in r.getMessage()] == []
    assert store.over == []
    assert store.granted == ids


@hx.step(events=("done",))
async def slow(ctx: hx.StepContext) -> hx.StepResult:
    await trio.sleep(3.0)
    return "done"


one_step = hx.Workflow(
    "one_step", start=slow, transitions={(slow, "done"): hx.Done}, unique=hx.Unique("one")
)


def drops(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if "dropped by" in r.getMessage()]


async def test_drops_after_a_pause_past_the_lease_are_info_not_warnings(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # What test_postgres_scaleout's SIGSTOP run logged as "dropped ... owned by nobody":
    # the paused engine's runner wrote after another engine had taken the instance over and
    # finished it (released: owner null). The fence did its job; that is no warning.
    caplog.set_level(logging.INFO, logger="hephaestus.engine")
    clock = VirtualClock()
    store = MemorySharedStorage(clock=clock, lease_ttl=TTL)
    async with trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [one_step], clock, passivate_after=None)
        b = await spawn(nursery, store, [one_step], clock)
        x = await a.engine.start(one_step, "x")
        await trio.sleep(0.5)
        a.conn.pause()
        done = await b.engine.wait(x)  # b took it over after the TTL and ran it again
        await trio.sleep(TTL)
        a.conn.resume()  # a's step finished meanwhile: its write is fenced
        await trio.sleep(TTL)
        nursery.cancel_scope.cancel()
    assert done.status is hx.Status.COMPLETED
    found = drops(caplog)
    assert found, "the paused engine's stale write was not fenced"
    assert {level for level, _ in found} == {logging.INFO}
    assert all("(its lease had lapsed)" in message for _, message in found)


async def test_a_drop_while_the_lease_is_live_stays_a_warning(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    clock = VirtualClock()
    store = MemorySharedStorage(clock=clock, lease_ttl=TTL)
    async with trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [one_step], clock, passivate_after=None)
        x = await a.engine.start(one_step, "x")
        await trio.sleep(2.0)  # the step ends at 3 s, while the intruder's lease is live
        assert store.owner(x) is not None
        intruder = await store.register("intruder")
        store._rows[x].owner = intruder  # taken from a live owner: what a real race would do
        await trio.sleep(3.0)
        nursery.cancel_scope.cancel()
    assert [level for level, _ in drops(caplog)] == [logging.WARNING]


def test_an_owners_admission_refusal_reaches_a_remote_caller_as_admission_full() -> None:
    # The owner stores the refusal's class name in the inbox answer; the caller's
    # engine raises the same hx exception (EventRejected for a name it lacks).
    from hephaestus._runtime._shared import _error_class

    assert _error_class("AdmissionFull") is hx.AdmissionFull
    assert _error_class("EventRejected") is hx.EventRejected
    assert _error_class("NoSuchErrorInThisRelease") is hx.EventRejected
