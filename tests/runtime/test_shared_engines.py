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


def work_then_approve(*, step_seconds: float) -> hx.Workflow:
    """A step taking ``step_seconds``, then a wait for the event "go"."""

    @hx.step(events=("ok",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(step_seconds)
        return "ok"

    approve = hx.WaitForEvent("go", key="approve")
    return hx.Workflow(
        "late",
        start=work,
        transitions={(work, "ok"): approve, (approve, "go"): hx.Done},
        unique=hx.Unique("late"),
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


def store_and_clock(ttl: float = TTL) -> tuple[hx.MemorySharedStorage, hx.testing.VirtualClock]:
    clock = hx.testing.VirtualClock()
    return hx.MemorySharedStorage(clock=clock, lease_ttl=ttl), clock


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
        answered = owner.conn.calls["answer_requests"]
        await other.engine.resume(iid, "go", {"by": "other"})
        # The row was consumed by the write that applied it, not by a write of its own.
        assert owner.conn.calls["answer_requests"] == answered
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
        # A lost lease is neither a crash nor a storage fault: no restart, no retried write.
        assert a.events.count("runner.crash") == a.events.count("storage.error") == 0
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


async def test_an_engine_that_finds_its_lease_expired_drops_its_instances_first(
    autojump_clock: Any,
) -> None:
    store, clock = store_and_clock()
    bodies: Counter[str] = Counter()

    def slow(key: str) -> hx.Step:
        async def body(ctx: hx.StepContext) -> hx.StepResult:
            bodies[f"{key} started"] += 1
            try:
                await trio.sleep(10 * TTL)
            except trio.Cancelled:
                bodies[f"{key} cancelled"] += 1
                raise
            return "ok"

        return hx.step(body, events=("ok",), key=key)

    left, right = slow("left"), slow("right")  # two at once: not inline, cancellable

    @hx.step(events=("ok",))
    async def split(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    wf = hx.Workflow(
        "par",
        start=split,
        transitions={(split, "ok"): [left, right], (left, "ok"): hx.Done, (right, "ok"): hx.Done},
        unique=hx.Unique("par"),
    )
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        iid = await a.engine.start(wf, "x")
        await trio.sleep(1)
        assert bodies == {"left started": 1, "right started": 1}
        a.conn.pause()
        await trio.sleep(1.5 * TTL)  # a's lease expires; nobody else is there to take over
        a.conn.resume()
        await trio.sleep(TTL)
        # a noticed, dropped the instance (cancelling its steps) and then, under its new
        # epoch, claimed it again like any other engine would: the steps run again.
        assert bodies["left cancelled"] == bodies["right cancelled"] == 1
        assert bodies["left started"] == bodies["right started"] == 2
        names = [
            (e.name, e.metadata["epoch"])
            for e in a.events.events
            if e.name.startswith(("runner.drop", "engine."))
        ]
        assert names[:2] == [("runner.drop", 1), ("engine.lease", 2)]
        assert ("engine.claim", 2) in names
        assert (await a.engine.wait(iid)).status is hx.Status.COMPLETED
        nursery.cancel_scope.cancel()


async def test_a_request_to_an_owner_that_died_is_applied_by_the_caller(
    autojump_clock: Any,
) -> None:
    store, clock = store_and_clock()
    wf = event_workflow()
    async with store, trio.open_nursery() as nursery:
        owner = await spawn(nursery, store, [wf], clock, passivate_after=None)
        caller = await spawn(nursery, store, [wf], clock)
        iid = await owner.engine.start(wf, "x")
        await trio.sleep(1)
        owner.kill()  # its lease is still live for up to a TTL: the request waits in the inbox
        sent = trio.current_time()
        await caller.engine.resume(iid, "go", {"by": "caller"})
        assert trio.current_time() - sent <= 1.5 * TTL
        assert caller.events.count("engine.takeover", iid) == 1
        assert (await caller.engine.wait(iid)).results["finish"] == {"approved": "caller"}
        nursery.cancel_scope.cancel()


async def test_wait_get_list_and_delete_read_the_shared_store(autojump_clock: Any) -> None:
    store, clock = store_and_clock()
    wf = fan_workflow()
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        b = await spawn(nursery, store, [wf], clock)
        ids = [await a.engine.start(wf, f"v{n}", {"n": n}) for n in range(5)]
        for iid in ids:
            await b.engine.wait(iid)
        page = await b.engine.list(limit=2, after=ids[0])
        assert [i.id for i in page] == ids[1:3]
        assert len(await b.engine.list(workflow=wf, status=hx.Status.COMPLETED)) == 5
        with pytest.raises(hx.InstanceNotFound):
            await b.engine.wait("fan::missing")
        with pytest.raises(hx.InstanceNotFound):
            await b.engine.get("fan::missing")
        await b.engine.delete(ids[0])
        with pytest.raises(hx.InstanceNotFound):
            await a.engine.get(ids[0])
        await trio.sleep(1)
        assert await b.engine.prune(older_than=0.5) == 4
        assert await a.engine.list() == []
        nursery.cancel_scope.cancel()


async def test_wait_ends_with_engine_closed_when_the_engine_closes(autojump_clock: Any) -> None:
    store, clock = store_and_clock()
    wf = event_workflow()
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        iid = await a.engine.start(wf, "x")
        outcome: list[BaseException] = []

        async def waiter() -> None:
            try:
                await a.engine.wait(iid)
            except hx.EngineClosed as exc:
                outcome.append(exc)

        nursery.start_soon(waiter)
        await trio.sleep(5)
        a.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert len(outcome) == 1
        nursery.cancel_scope.cancel()


async def test_claims_are_reported(autojump_clock: Any) -> None:
    store, clock = store_and_clock()
    runs: Counter[tuple[str, str]] = Counter()
    wf = counting_workflow(runs)
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        ids = [await a.engine.start(wf, f"i{n}", {"n": n}) for n in range(3)]
        await trio.sleep(0.5)
        a.stop()  # a clean exit: released at once, so no takeover and no waiting for a TTL
        b = await spawn(nursery, store, [wf], clock)
        for iid in ids:
            await b.engine.wait(iid)
        claims = b.events.named("engine.claim")
        assert sum(e.measurements["instances"] for e in claims) == 3
        assert claims[0].metadata["engine"] == b.engine_id
        assert b.events.count("engine.takeover") == 0
        nursery.cancel_scope.cancel()


async def test_a_row_served_after_a_takeover_is_consumed_by_the_write_applying_it(
    autojump_clock: Any,
) -> None:
    store, clock = store_and_clock()
    wf = work_then_approve(step_seconds=5)
    async with store, trio.open_nursery() as nursery:
        owner = await spawn(nursery, store, [wf], clock)
        caller = await spawn(nursery, store, [wf], clock)
        iid = await owner.engine.start(wf, "x")
        await trio.sleep(1)
        owner.kill()  # mid-step: the caller's early event waits in the shared inbox
        await caller.engine.resume(iid, "go", {"early": True})
        # The caller took the instance over (its step runs again there) and applied its
        # own row: queued in the instance's inbox, in the same write that consumed the row.
        assert caller.conn.calls["answer_requests"] == 0
        done = await caller.engine.wait(iid)
        assert done.results["approve"] == {"early": True}
        nursery.cancel_scope.cancel()


async def test_without_notifications_everything_still_completes_by_polling(
    autojump_clock: Any,
) -> None:
    store, clock = store_and_clock()
    wf = event_workflow()
    ev_wf = fan_workflow()
    async with store, trio.open_nursery() as nursery:
        # Every engine misses every notification: wake-ups, replies, finished instances.
        owner = await spawn(nursery, store, [wf, ev_wf], clock, passivate_after=None, deaf=True)
        other = await spawn(nursery, store, [wf, ev_wf], clock, deaf=True)
        iid = await owner.engine.start(wf, "x")
        await trio.sleep(1)
        sent = trio.current_time()
        await other.engine.resume(iid, "go", {"by": "other"})  # owner serves it on a poll
        assert trio.current_time() - sent <= 2 * TTL
        assert owner.events.count("step.resume") == 1
        assert (await other.engine.wait(iid)).results["finish"] == {"approved": "other"}
        fan = await owner.engine.start(ev_wf, "y", {"n": 2})
        assert (await other.engine.wait(fan)).results == fan_expected(2)
        nursery.cancel_scope.cancel()


async def test_a_caller_cancelled_after_the_row_is_stored_still_has_it_applied(
    autojump_clock: Any,
) -> None:
    store, clock = store_and_clock()
    wf = event_workflow()
    async with store, trio.open_nursery() as nursery:
        # Deaf: it serves the row on its next poll, not at once.
        owner = await spawn(nursery, store, [wf], clock, passivate_after=None, deaf=True)
        other = await spawn(nursery, store, [wf], clock)
        iid = await owner.engine.start(wf, "x")
        await trio.sleep(1)
        appended = other.conn.calls["append_request"]
        with trio.move_on_after(0.01) as scope:
            await other.engine.resume(iid, "go", {"by": "impatient"})
        assert scope.cancelled_caught
        assert other.conn.calls["append_request"] == appended + 1
        done = await owner.engine.wait(iid)
        assert done.results["finish"] == {"approved": "impatient"}
        nursery.cancel_scope.cancel()


async def test_three_engines_many_instances_one_killed_nothing_lost(autojump_clock: Any) -> None:
    """The issue's scenario in memory: steps, a durable timer, resumes sent to random engines."""
    store, clock = store_and_clock()
    runs: Counter[tuple[str, str]] = Counter()

    @hx.step(events=("ok",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        runs[(ctx.instance_id, "work")] += 1
        await trio.sleep(1.0)
        return hx.Emit("ok", {"n": ctx.initial["n"]})

    @hx.step(events=("ok",))
    async def finish(ctx: hx.StepContext) -> hx.StepResult:
        runs[(ctx.instance_id, "finish")] += 1
        await trio.sleep(0.5)
        return hx.Emit("ok", {"total": ctx.results["work"]["n"] + ctx.results["approve"]["v"]})

    approve = hx.WaitForEvent("go", key="approve", timeout=600)
    cool = hx.Wait(3.0, key="cool")
    wf = hx.Workflow(
        "big",
        start=work,
        transitions={
            (work, "ok"): approve,
            (approve, "go"): cool,
            (approve, "timeout"): hx.Done,
            (cool, "timeout"): finish,
            (finish, "ok"): hx.Done,
        },
        unique=hx.Unique("big"),
    )
    count = 500
    async with store, trio.open_nursery() as nursery:
        nodes = [await spawn(nursery, store, [wf], clock) for _ in range(3)]
        ids = [await nodes[n % 3].engine.start(wf, f"i{n}", {"n": n}) for n in range(count)]
        await trio.sleep(1.5)
        for n, iid in enumerate(ids[: count // 2]):  # half resumed before the kill
            await nodes[(7 * n) % 3].engine.resume(iid, "go", {"v": n}, dedupe_key=f"go-{n}")
        await trio.sleep(3.2)  # the first half in their last step, on whichever engine
        victim = nodes[0]
        flying = in_flight(victim)
        mine = {iid for iid in ids if store.owner(iid) == victim.engine.shared.lease}  # type: ignore[union-attr]
        assert len(mine) > 10
        assert len(flying) > 10
        killed_at = trio.current_time()
        victim.kill()
        survivors = nodes[1:]
        taken: dict[str, float] = {}

        def took(event: hx.TelemetryEvent) -> None:
            if event.name == "engine.takeover":
                taken.setdefault(event.instance_id or "", trio.current_time())

        for node in survivors:
            node.events.hooks.append(took)
        for n, iid in enumerate(ids[count // 2 :], start=count // 2):
            await survivors[n % 2].engine.resume(iid, "go", {"v": n}, dedupe_key=f"go-{n}")
        finals = [await survivors[0].engine.wait(iid) for iid in ids]
        assert [f.status for f in finals] == [hx.Status.COMPLETED] * count  # 0 lost
        assert [f.results["finish"]["total"] for f in finals] == [2 * n for n in range(count)]
        assert {key for key, n in runs.items() if n > 1} <= flying
        assert set(taken) == mine
        assert max(taken.values()) - killed_at <= 2 * TTL
        for final in finals:  # every step completed once, the event delivered once
            assert [h.step for h in final.history] == ["work", "approve", "cool", "finish"]
        nursery.cancel_scope.cancel()


async def test_closing_an_engine_whose_store_hangs_takes_at_most_a_ttl(
    autojump_clock: Any,
) -> None:
    store, clock = store_and_clock()
    wf = event_workflow()
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        await a.engine.start(wf, "x")
        await trio.sleep(1)
        a.conn.pause()  # every call hangs from now on, the lease release too
        stopped = trio.current_time()
        a.stop()
        await a.closed.wait()
        assert trio.current_time() - stopped <= TTL
        a.conn.resume()
        nursery.cancel_scope.cancel()


async def test_a_row_applied_through_a_backing_off_runner_is_consumed_by_its_write(
    autojump_clock: Any,
) -> None:
    store, clock = store_and_clock()
    wf = work_then_approve(step_seconds=1)
    async with store, trio.open_nursery() as nursery:
        owner = await spawn(nursery, store, [wf], clock, passivate_after=None)
        other = await spawn(nursery, store, [wf], clock)
        iid = await owner.engine.start(wf, "x")
        await trio.sleep(0.5)
        owner.conn.fail_next("put_owned")  # the step's outcome: the runner backs off
        await trio.sleep(0.55)
        assert owner.events.count("storage.error") == 1
        # The request reaches the owner while its runner takes requests by mail only.
        await other.engine.resume(iid, "go", {"by": "other"})
        assert owner.conn.calls["answer_requests"] == 0  # consumed by the write applying it
        assert (await other.engine.wait(iid)).results["approve"] == {"by": "other"}
        nursery.cancel_scope.cancel()


async def test_a_released_instance_timer_fires_on_time(autojump_clock: Any) -> None:
    store, clock = store_and_clock()
    nap = hx.Wait(0.1, key="nap")  # falls due before any claimer looks again
    wf = hx.Workflow(
        "nap", start=nap, transitions={(nap, "timeout"): hx.Done}, unique=hx.Unique("nap")
    )
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        b = await spawn(nursery, store, [wf], clock)
        await trio.sleep(TTL / 8)  # the claimers just looked: the next look is TTL/8 away
        iid = await a.engine.start(wf, "x")
        started = clock.now()
        await trio.sleep(0.05)
        assert store.owner(iid) is None  # released while it sleeps
        done = await b.engine.wait(iid)
        fired = done.history[-1].at
        assert started + 0.1 <= fired <= started + 0.1 + 0.01
        nursery.cancel_scope.cancel()


async def test_schedules_start_each_tick_once_across_engines(autojump_clock: Any) -> None:
    store, clock = store_and_clock(ttl=120.0)  # hours of virtual time: fewer heartbeats

    @hx.step(events=("ok",))
    async def tick(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    wf = hx.Workflow(
        "tick", start=tick, transitions={(tick, "ok"): hx.Done}, unique=hx.Unique("tick")
    )
    hourly = hx.Schedule(wf, cron="0 * * * *")
    async with store, trio.open_nursery() as nursery:
        nodes = [await spawn(nursery, store, [wf], clock, schedules=[hourly]) for _ in range(3)]
        await trio.sleep(5 * 3600 + 60)
        nodes[0].kill()  # one of them dies; the others go on
        await trio.sleep(5 * 3600)
        ticks = await nodes[1].engine.list(workflow=wf)
        assert len(ticks) == 10  # every hourly tick, each exactly once
        assert {i.status for i in ticks} == {hx.Status.COMPLETED}
        errors = [e for n in nodes[1:] for e in n.events.named("storage.error")]
        assert errors == []
        nursery.cancel_scope.cancel()


async def test_a_child_that_ends_on_one_engine_tells_its_parent_held_by_another(
    autojump_clock: Any,
) -> None:
    store, clock = store_and_clock()
    nap = hx.Wait(5.0, key="nap")
    child = hx.Workflow(
        "child", start=nap, transitions={(nap, "timeout"): hx.Done}, unique=hx.Unique("child")
    )
    sub = hx.SubWorkflow(child, key="sub")
    parent = hx.Workflow(
        "parent",
        start=sub,
        transitions={
            (sub, "completed"): hx.Done,
            (sub, "failed"): hx.Done,
            (sub, "cancelled"): hx.Done,
        },
        unique=hx.Unique("parent"),
    )
    async with store, trio.open_nursery() as nursery:
        starter = await spawn(nursery, store, [parent, child], clock)
        holder = await spawn(nursery, store, [parent, child], clock, passivate_after=None)
        runner = await spawn(nursery, store, [parent, child], clock, passivate_after=None)
        pid = await starter.engine.start(parent, "p")
        await trio.sleep(1)
        [kid] = await starter.engine.list(workflow=child)
        # Any request makes an engine take an unowned instance; these two keep theirs resident.
        assert await holder.engine.cancel_timer(pid, "no-such-timer") is False
        assert await runner.engine.cancel_timer(kid.id, "no-such-timer") is False
        assert store.owner(pid) == holder.engine.shared.lease  # type: ignore[union-attr]
        assert store.owner(kid.id) == runner.engine.shared.lease  # type: ignore[union-attr]
        # The child ends on the runner, which tells the parent through the holder's inbox.
        done = await starter.engine.wait(pid)
        assert done.status is hx.Status.COMPLETED
        assert done.results["sub"]["results"] == {"nap": {}}
        assert holder.events.count("step.stop", pid) == 1
        nursery.cancel_scope.cancel()
