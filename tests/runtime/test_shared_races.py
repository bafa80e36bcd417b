"""Races on the shared path: a claim meeting a release, a wake-up before the write returns.

Each test makes one interleaving certain (a store call held open under
``autojump_clock``) that the multi-process runs hit only now and then.
"""

from __future__ import annotations

from typing import Any

import trio

import hephaestus as hx

from .shared_cluster import TTL, spawn


def nap_workflow(seconds: float) -> hx.Workflow:
    nap = hx.Wait(seconds, key="nap")
    return hx.Workflow(
        "nap", start=nap, transitions={(nap, "timeout"): hx.Done}, unique=hx.Unique("nap")
    )


async def test_a_claim_while_the_release_returns_keeps_the_instance_held(
    autojump_clock: Any,
) -> None:
    """The store says "owned by A" only while A holds the instance with its timers armed.

    A passivates the instance and releases it; before the release returns,
    the timer falls due and A's own claimer claims it back. A must then keep
    it (and fire the timer), not forget it while the store names A its owner.
    """
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=TTL)
    wf = nap_workflow(1.0)
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        release = a.conn.release_instances
        slowed = [True]

        async def slow_release(lease: hx.Lease, instance_ids: Any) -> None:
            await release(lease, instance_ids)  # committed: the row has no owner now
            if slowed[0]:
                slowed[0] = False
                await trio.sleep(2.0)  # the timer falls due and A's claimer looks meanwhile

        a.conn.release_instances = slow_release  # type: ignore[method-assign]
        iid = await a.engine.start(wf, "x")
        with trio.fail_after(10 * TTL):
            done = await a.engine.wait(iid)
        assert done.status is hx.Status.COMPLETED
        assert not slowed[0]  # the race was run
        nursery.cancel_scope.cancel()


async def test_wait_wakes_on_finished_that_comes_before_the_write_returns(
    autojump_clock: Any,
) -> None:
    """PostgreSQL may deliver Finished before the runner takes in its own write's result.

    wait() woken by it must read the store (terminal already), not the
    registry's older snapshot, and must not sleep until the next poll.
    """
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=TTL)
    wf = nap_workflow(1.0)
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock, passivate_after=None)  # stays resident
        put_owned = a.conn.put_owned
        committed: list[float] = []

        async def slow_put(lease: hx.Lease, instance: hx.Instance, **kwargs: Any) -> None:
            await put_owned(lease, instance, **kwargs)  # Finished is sent from here
            if instance.status.is_terminal:
                committed.append(trio.current_time())
                await trio.sleep(3 * TTL)  # the reply reaches the runner late

        a.conn.put_owned = slow_put  # type: ignore[method-assign]
        iid = await a.engine.start(wf, "x")
        done = await a.engine.wait(iid)
        assert done.status is hx.Status.COMPLETED
        assert committed
        assert trio.current_time() - committed[0] < TTL / 8  # not the next poll, TTL/4 on
        nursery.cancel_scope.cancel()


async def test_a_retry_whose_claim_is_lost_before_its_write_gets_the_normal_answer(
    autojump_clock: Any,
) -> None:
    """LeaseLost never reaches a caller: the retry is routed again and answered as usual.

    A claims the failed instance for a retry, then is paused past its lease
    before the write; B retries it meanwhile and it completes. A's write is
    fenced; A renews and asks again, so its caller hears what any second
    retry hears (EventRejected: the instance is not failed any more).
    """
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=TTL)
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
        assert (await a.engine.wait(iid)).status is hx.Status.FAILED
        put_owned = a.conn.put_owned
        pause_once = [True]

        async def pause_then_put(lease: hx.Lease, instance: hx.Instance, **kwargs: Any) -> None:
            if pause_once[0]:
                pause_once[0] = False
                a.conn.pause()  # SIGSTOP between the claim and the write
            await put_owned(lease, instance, **kwargs)

        a.conn.put_owned = pause_then_put  # type: ignore[method-assign]
        outcome: list[BaseException | None] = []
        answered = trio.Event()

        async def retry_on_a() -> None:
            try:
                await a.engine.retry(iid)
                outcome.append(None)
            except hx.HephaestusError as exc:
                outcome.append(exc)
            answered.set()

        nursery.start_soon(retry_on_a)
        await trio.sleep(2 * TTL)  # a's lease expires
        await b.engine.retry(iid)
        assert (await b.engine.wait(iid)).status is hx.Status.COMPLETED
        a.conn.resume()
        with trio.fail_after(4 * TTL):
            await answered.wait()
        assert not pause_once[0]  # the race was run
        assert isinstance(outcome[0], hx.EventRejected), outcome
        assert (await store.get(iid)).status is hx.Status.COMPLETED  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_a_claim_that_ran_before_the_release_commits_lets_it_go(
    autojump_clock: Any,
) -> None:
    """A claim answered before the release committed must not keep the instance.

    The release unowns it after that claim, so keeping the entry would leave
    this engine holding an instance the store says nobody owns: its timer's
    write would be fenced and the instance dropped.
    """
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=TTL)
    wf = nap_workflow(1.0)
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        shared = a.engine.shared
        assert shared is not None
        release = a.conn.release_instances
        raced = [False]

        async def claim_then_release(lease: hx.Lease, instance_ids: Any) -> None:
            if not raced[0]:
                raced[0] = True
                [iid] = instance_ids
                one = await a.conn.claim_instance(lease, iid)  # still ours: nothing changes
                assert one.claimed is not None
                assert shared.adopt(one.claimed) is not None
            await release(lease, instance_ids)

        a.conn.release_instances = claim_then_release  # type: ignore[method-assign]
        iid = await a.engine.start(wf, "x")
        await trio.sleep(0.5)
        assert raced[0]
        assert store.owner(iid) is None
        assert a.engine._registry.get(iid) is None  # let go, as the store says
        assert (await a.engine.wait(iid)).status is hx.Status.COMPLETED
        assert a.events.named("runner.drop") == []
        nursery.cancel_scope.cancel()


async def test_a_timer_read_across_a_lost_lease_writes_nothing_under_the_new_one(
    autojump_clock: Any,
) -> None:
    """A passive instance's timer, read under epoch 1 and dropped meanwhile, is not written.

    Its lease expires while the snapshot is read; the engine renews as epoch 2
    and claims the instance back. The stale read must not write under epoch 2
    (it would release the row under the new owner, whose own write is then
    fenced: "owned by nobody", and the instance dropped a second time).
    """
    from hephaestus._runtime._lease import renew

    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=TTL)
    wf = nap_workflow(1.0)
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock)
        shared = a.engine.shared
        assert shared is not None
        get = a.conn.get
        reading = trio.Event()
        slow = [True]

        async def slow_get(instance_id: str) -> Any:
            if slow[0] and clock.now() >= 1.0:
                reading.set()
                await trio.sleep(0.5)  # the lease is lost and taken back meanwhile
            return await get(instance_id)

        a.conn.get = slow_get  # type: ignore[method-assign]
        iid = await a.engine.start(wf, "x")
        await reading.wait()  # the claimer took the due instance; its timer is being read
        assert store.owner(iid) == shared.lease
        old = shared.lease
        store._engines[old.engine_id] = (old.epoch, -float("inf"))  # its lease expired
        await renew(shared, old)  # drops everything, epoch 2
        assert shared.lease.epoch == old.epoch + 1
        one = await shared.claim_instance(iid)
        assert one.claimed is not None
        assert shared.adopt(one.claimed) is not None  # its timer fires again under epoch 2
        done = await a.engine.wait(iid)
        slow[0] = False
        assert done.status is hx.Status.COMPLETED
        await trio.sleep(1)
        assert store.fenced_writes == 0  # only the epoch-2 fire wrote, and it was not fenced
        nursery.cancel_scope.cancel()
