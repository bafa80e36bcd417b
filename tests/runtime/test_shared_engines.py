"""Several engines sharing one store: ownership, requests across engines, kills and pauses.

Every test runs its engines in one trio run under ``autojump_clock``, each on
its own connection to one MemorySharedStorage (``shared_cluster``), so a test
can kill (SIGKILL) or pause (SIGSTOP) one engine and watch the others.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx
from hephaestus.storage._shared_memory import ConnectionKilled

from .helpers import all_tasks, event_workflow, fan_expected, fan_workflow
from .shared_cluster import TTL, Node, spawn


def counting_workflow(runs: Counter[tuple[str, str]], *, delay: float = 1.0) -> hx.Workflow:
    """a -> b -> c, each step sleeping ``delay`` s and counting its runs per instance."""

    def make(key: str) -> hx.Step:
        async def body(ctx: hx.StepContext) -> hx.StepResult:
            runs[(ctx.instance_id, key)] += 1
            await trio.sleep(delay)
            return hx.Emit("ok", {"step": key, "n": ctx.initial["n"]})

        return hx.step(body, events=("ok",), key=key)

    a, b, c = make("a"), make("b"), make("c")
    return hx.Workflow(
        "count",
        start=a,
        transitions={(a, "ok"): b, (b, "ok"): c, (c, "ok"): hx.Done},
        unique=hx.Unique("cnt"),
    )


def in_flight(node: Node) -> set[tuple[str, str]]:
    """Steps whose start ``node`` reported without a stop or exception."""
    open_: Counter[tuple[str, str]] = Counter()
    for event in node.events.events:
        key = (event.instance_id or "", event.step or "")
        if event.name == "step.start":
            open_[key] += 1
        elif event.name in ("step.stop", "step.exception", "step.suspend"):
            open_[key] -= 1
    return {key for key, n in open_.items() if n > 0}


def store_and_clock() -> tuple[hx.MemorySharedStorage, hx.testing.VirtualClock]:
    clock = hx.testing.VirtualClock()
    return hx.MemorySharedStorage(clock=clock, lease_ttl=TTL), clock


async def test_a_single_engine_storage_gets_no_shared_tasks(autojump_clock: Any) -> None:
    before = {t.name for t in all_tasks()}
    async with hx.open_engine(workflows=[fan_workflow()], storage=hx.MemoryStorage()) as engine:
        assert engine.shared is None
        names = {t.name for t in all_tasks()} - before
        assert not any("claim" in n or "heartbeat" in n or "listen" in n for n in names), names


async def test_one_engine_runs_it_every_engine_sees_it(autojump_clock: Any) -> None:
    store, clock = store_and_clock()
    wf = fan_workflow()
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        b = await spawn(nursery, store, [wf], clock)
        iid = await a.engine.start(wf, "x", {"n": 3})
        done = await b.engine.wait(iid)  # b runs nothing of it, and still sees it finish
        assert done.status is hx.Status.COMPLETED
        assert done.results == fan_expected(3)
        assert (await b.engine.get(iid)).results == fan_expected(3)
        assert [i.id for i in await b.engine.list(status=hx.Status.COMPLETED)] == [iid]
        assert b.events.count("step.start") == 0
        assert store.owner(iid) is None  # finished instances have no owner
        nursery.cancel_scope.cancel()


async def test_start_is_unique_across_engines(autojump_clock: Any) -> None:
    store, clock = store_and_clock()
    wf = event_workflow()
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        b = await spawn(nursery, store, [wf], clock)
        iid = await a.engine.start(wf, "x")
        with pytest.raises(hx.AlreadyRunning):
            await b.engine.start(wf, "x")
        await a.engine.cancel(iid)
        # Finished: another engine may start the id again, and then runs it.
        assert await b.engine.start(wf, "x") == iid
        await trio.testing.wait_all_tasks_blocked()
        assert (await a.engine.get(iid)).status is hx.Status.WAITING
        with pytest.raises(hx.AlreadyRunning):
            await a.engine.start(wf, "x")
        nursery.cancel_scope.cancel()


async def test_requests_to_a_non_owner_are_answered_by_the_owner(autojump_clock: Any) -> None:
    store, clock = store_and_clock()
    wf = event_workflow()
    async with store, trio.open_nursery() as nursery:
        owner = await spawn(nursery, store, [wf], clock, passivate_after=None)  # stays resident
        other = await spawn(nursery, store, [wf], clock)
        iid = await owner.engine.start(wf, "x")
        await trio.sleep(1)
        assert store.owner(iid) is not None
        assert store.owner(iid) == owner.conn.store.owner(iid)
        # Refusals come back typed, and change nothing.
        with pytest.raises(hx.UndeclaredEvent):
            await other.engine.resume(iid, "bogus")
        with pytest.raises(hx.EventRejected, match="approve"):
            await other.engine.schedule_resume(iid, "nope", 5.0)
        with pytest.raises(hx.InstanceNotFound):
            await other.engine.resume("ev::missing", "go")
        timer = await other.engine.schedule_resume(iid, "approve", 600.0)
        assert isinstance(timer, str)
        assert await other.engine.cancel_timer(iid, timer) is True
        assert await other.engine.cancel_timer(iid, timer) is False
        before = await other.engine.get(iid)
        assert before.status is hx.Status.WAITING
        await other.engine.resume(iid, "go", {"by": "other"})
        # Returned once persisted: the stored snapshot has it already.
        stored = await store.get(iid)
        assert stored is not None
        assert stored.results["approve"] == {"by": "other"}
        done = await other.engine.wait(iid)
        assert done.results["finish"] == {"approved": "other"}
        # The owner applied all of it; the other engine ran nothing.
        assert owner.events.count("step.resume") == 1
        assert other.events.count("step.start") == 0
        assert other.events.count("engine.claim") == 0
        with pytest.raises(hx.EventRejected):
            await other.engine.cancel(iid)  # completed: refused as on one engine
        nursery.cancel_scope.cancel()


async def test_cancel_through_the_owner(autojump_clock: Any) -> None:
    store, clock = store_and_clock()
    wf = event_workflow()
    async with store, trio.open_nursery() as nursery:
        owner = await spawn(nursery, store, [wf], clock, passivate_after=None)
        other = await spawn(nursery, store, [wf], clock)
        iid = await owner.engine.start(wf, "x")
        await trio.sleep(1)
        await other.engine.cancel(iid, "no longer needed")
        assert (await store.get(iid)).status is hx.Status.CANCELLED  # type: ignore[union-attr]
        await other.engine.cancel(iid)  # idempotent
        assert (await owner.engine.wait(iid)).cancel_reason == "no longer needed"
        nursery.cancel_scope.cancel()


async def test_an_unowned_instance_is_claimed_by_the_receiving_engine(autojump_clock: Any) -> None:
    store, clock = store_and_clock()
    wf = event_workflow()
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)  # passivates at once: releases it
        b = await spawn(nursery, store, [wf], clock)
        iid = await a.engine.start(wf, "x")
        await trio.sleep(1)
        assert store.owner(iid) is None
        await b.engine.resume(iid, "go", {"by": "b"})
        assert (await a.engine.wait(iid)).results["finish"] == {"approved": "b"}
        assert b.events.count("step.resume") == 1
        assert a.events.count("step.resume") == 0
        nursery.cancel_scope.cancel()


async def test_retry_from_another_engine(autojump_clock: Any) -> None:
    store, clock = store_and_clock()
    failures = [1]

    @hx.step(events=("ok",))
    async def flaky(ctx: hx.StepContext) -> hx.StepResult:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("first time")
        return "ok"

    wf = hx.Workflow(
        "flaky", start=flaky, transitions={(flaky, "ok"): hx.Done}, unique=hx.Unique("fl")
    )
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        b = await spawn(nursery, store, [wf], clock)
        iid = await a.engine.start(wf, "x")
        assert (await b.engine.wait(iid)).status is hx.Status.FAILED
        await b.engine.retry(iid)
        assert (await a.engine.wait(iid)).status is hx.Status.COMPLETED
        with pytest.raises(hx.EventRejected):
            await a.engine.retry(iid)
        with pytest.raises(hx.InstanceNotFound):
            await a.engine.retry("fl::missing")
        nursery.cancel_scope.cancel()


async def test_a_killed_engines_instances_are_taken_over(autojump_clock: Any) -> None:
    store, clock = store_and_clock()
    runs: Counter[tuple[str, str]] = Counter()
    wf = counting_workflow(runs, delay=1.0)
    async with store, trio.open_nursery() as nursery:
        nodes = [await spawn(nursery, store, [wf], clock) for _ in range(3)]
        ids = [await nodes[n % 3].engine.start(wf, f"i{n}", {"n": n}) for n in range(30)]
        await trio.sleep(1.5)  # every instance is in its second step
        victim = nodes[0]
        flying = in_flight(victim)
        mine = {iid for iid in ids if store.owner(iid) == victim.engine.shared.lease}  # type: ignore[union-attr]
        assert mine
        assert flying
        killed_at = trio.current_time()
        victim.kill()
        taken: dict[str, float] = {}

        def took(event: hx.TelemetryEvent) -> None:
            if event.name == "engine.takeover":
                taken.setdefault(event.instance_id or "", trio.current_time())

        for node in nodes[1:]:
            node.events.hooks.append(took)
        finals = [await nodes[1].engine.wait(iid) for iid in ids]
        assert [f.status for f in finals] == [hx.Status.COMPLETED] * 30  # nothing lost
        assert [f.results["c"] for f in finals] == [{"step": "c", "n": n} for n in range(30)]
        assert set(taken) == mine  # every instance of the victim, and only those
        assert max(taken.values()) - killed_at <= 2 * TTL
        twice = {key for key, n in runs.items() if n > 1}
        assert twice <= flying  # only steps in flight on the killed engine ran again
        assert max(runs.values()) <= 2
        nursery.cancel_scope.cancel()


async def test_a_paused_engine_is_fenced_and_rejoins_under_a_new_epoch(
    autojump_clock: Any,
) -> None:
    store, clock = store_and_clock()
    runs: Counter[tuple[str, str]] = Counter()
    wf = counting_workflow(runs, delay=1.0)
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        b = await spawn(nursery, store, [wf], clock)
        ids = [await a.engine.start(wf, f"i{n}", {"n": n}) for n in range(10)]
        await trio.sleep(0.5)
        flying = in_flight(a)
        assert len(flying) == 10
        a.conn.pause()  # SIGSTOP: a's steps finish, but nothing of it reaches the store
        await trio.sleep(3 * TTL)
        assert b.events.count("engine.takeover") == 10
        stored = [await store.get(i) for i in ids]
        assert [s.status for s in stored if s is not None] == [hx.Status.COMPLETED] * 10
        assert store.fenced_writes == 0
        a.conn.resume()  # SIGCONT: a's stale writes meet the fence
        finals = [await a.engine.wait(iid) for iid in ids]
        assert finals == stored  # nothing a computed while paused overwrote anything
        assert store.fenced_writes >= 1  # it did try
        assert a.events.count("runner.drop") == 10  # and dropped every instance it held
        assert store.engines()[a.engine_id][0] == 2  # it came back under a new epoch
        assert {key for key, n in runs.items() if n > 1} <= flying
        for final in finals:  # nothing applied twice: one completion per step
            assert [h.step for h in final.history] == ["a", "b", "c"]
        # a serves again: new work can land on it.
        more = [await a.engine.start(wf, f"j{n}", {"n": n}) for n in range(3)]
        assert [(await b.engine.wait(i)).status for i in more] == [hx.Status.COMPLETED] * 3
        nursery.cancel_scope.cancel()


async def test_a_resume_retried_after_the_receiver_died_is_delivered_once(
    autojump_clock: Any,
) -> None:
    store, clock = store_and_clock()
    wf = event_workflow()
    async with store, trio.open_nursery() as nursery:
        owner = await spawn(nursery, store, [wf], clock, passivate_after=None)
        receiver = await spawn(nursery, store, [wf], clock)
        retrier = await spawn(nursery, store, [wf], clock)
        iid = await owner.engine.start(wf, "x")
        await trio.sleep(1)
        # The receiver commits the inbox row and dies before it can answer its caller.
        receiver.conn.kill_after("append_request")
        with pytest.raises(ConnectionKilled):
            await receiver.engine.resume(iid, "go", {"by": "webhook"}, dedupe_key="hook-1")
        receiver.kill()
        await retrier.engine.resume(iid, "go", {"by": "webhook"}, dedupe_key="hook-1")
        done = await retrier.engine.wait(iid)
        assert [h.step for h in done.history] == ["prepare", "approve", "finish"]
        assert owner.events.count("step.resume") == 1
        nursery.cancel_scope.cancel()


async def test_a_resume_retried_after_the_claiming_receiver_died_is_delivered_once(
    autojump_clock: Any,
) -> None:
    store, clock = store_and_clock()
    wf = event_workflow()
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        receiver = await spawn(nursery, store, [wf], clock)
        retrier = await spawn(nursery, store, [wf], clock)
        iid = await a.engine.start(wf, "x")
        await trio.sleep(1)
        assert store.owner(iid) is None  # passivated: the receiver claims and applies it
        receiver.conn.kill_after("put_owned")
        with pytest.raises(ConnectionKilled):
            await receiver.engine.resume(iid, "go", {"by": "webhook"}, dedupe_key="hook-1")
        receiver.kill()
        await retrier.engine.resume(iid, "go", {"by": "webhook"}, dedupe_key="hook-1")
        done = await retrier.engine.wait(iid)
        assert [h.step for h in done.history] == ["prepare", "approve", "finish"]
        assert done.dedupe_keys == ("hook-1",)
        nursery.cancel_scope.cancel()


async def test_no_claim_steals_from_a_live_owner(autojump_clock: Any) -> None:
    store, clock = store_and_clock()
    runs: Counter[tuple[str, str]] = Counter()
    wf = counting_workflow(runs, delay=0.7 * TTL)  # steps longer than a heartbeat period
    async with store, trio.open_nursery() as nursery:
        nodes = [await spawn(nursery, store, [wf], clock) for _ in range(4)]
        ids = [await nodes[n % 4].engine.start(wf, f"i{n}", {"n": n}) for n in range(40)]
        finals = [await nodes[0].engine.wait(iid) for iid in ids]
        assert [f.status for f in finals] == [hx.Status.COMPLETED] * 40
        steals = sum(node.events.count("engine.takeover") for node in nodes)
        assert steals == 0
        assert set(runs.values()) == {1}
        nursery.cancel_scope.cancel()


async def test_a_due_timer_of_a_released_instance_fires_on_some_engine(
    autojump_clock: Any,
) -> None:
    store, clock = store_and_clock()
    wf = event_workflow()  # approve times out after an hour
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        b = await spawn(nursery, store, [wf], clock)
        iid = await a.engine.start(wf, "x")
        started = clock.now()
        a.stop()  # a graceful exit: its lease is released
        done = await b.engine.wait(iid)
        assert done.history[-1].event == "timeout"
        assert done.history[-1].at >= started + 3600  # never early
        assert done.history[-1].at <= started + 3600 + TTL
        nursery.cancel_scope.cancel()
