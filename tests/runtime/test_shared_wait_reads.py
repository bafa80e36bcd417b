"""``wait`` on a shared store: an instance this engine runs is waited for without reading the store.

Its end is this engine's own fenced write, so the terminal snapshot the runner
stored is the answer: no read after the ``Finished`` notification (one fewer
round trip per workflow on PostgreSQL). Other instances are still read.
"""

from __future__ import annotations

from typing import Any

import trio

import hephaestus as hx

from .shared_cluster import TTL, spawn


def _three_steps() -> hx.Workflow:
    @hx.step(events=("ok",), key="a")
    async def a(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    @hx.step(events=("ok",), key="b")
    async def b(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(0.1)  # the caller is waiting by then (less than a poll)
        return "ok"

    @hx.step(events=("ok",), key="c")
    async def c(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    return hx.Workflow(
        "three",
        start=a,
        transitions={(a, "ok"): b, (b, "ok"): c, (c, "ok"): hx.Done},
        unique=hx.Unique("three"),
    )


def _count_gets(node: Any) -> list[str]:
    seen: list[str] = []
    get = node.conn.get

    async def counting_get(instance_id: str) -> hx.Instance | None:
        seen.append(instance_id)
        found: hx.Instance | None = await get(instance_id)
        return found

    node.conn.get = counting_get
    return seen


def _left_behind(node: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the engine still keeps for waits once they returned: nothing."""
    shared = node.engine.shared
    assert shared is not None
    return shared._finished, getattr(shared, "_waiting", {})


async def test_wait_for_an_instance_run_here_reads_nothing(autojump_clock: Any) -> None:
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=TTL)
    wf = _three_steps()
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock, passivate_after=None)
        reads = _count_gets(a)
        iid = await a.engine.start(wf, "x")
        began = trio.current_time()
        done = await a.engine.wait(iid)
        assert done.status is hx.Status.COMPLETED
        assert done == await store.get(iid)  # what the runner stored, and it is stored
        assert trio.current_time() - began < 0.1 + TTL / 8  # woken by the runner, no poll
        assert reads == []
        assert _left_behind(a) == ({}, {})
        nursery.cancel_scope.cancel()


async def test_wait_for_an_instance_another_engine_runs_still_reads_it(
    autojump_clock: Any,
) -> None:
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=TTL)
    wf = _three_steps()
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock, passivate_after=None)
        b = await spawn(nursery, store, [wf], clock, passivate_after=None)
        reads = _count_gets(b)
        iid = await a.engine.start(wf, "x")
        done = await b.engine.wait(iid)
        assert done.status is hx.Status.COMPLETED
        assert reads  # b learns of the end from the store
        assert _left_behind(b) == ({}, {})
        nursery.cancel_scope.cancel()


async def test_several_waits_on_one_instance_all_return_and_leave_nothing_behind(
    autojump_clock: Any,
) -> None:
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=TTL)
    wf = _three_steps()
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [wf], clock, passivate_after=None)
        iid = await a.engine.start(wf, "x")
        results: list[hx.Status] = []

        async def waiter() -> None:
            results.append((await a.engine.wait(iid)).status)

        async with trio.open_nursery() as waiters:
            for _ in range(3):
                waiters.start_soon(waiter)
        assert results == [hx.Status.COMPLETED] * 3
        assert _left_behind(a) == ({}, {})
        nursery.cancel_scope.cancel()
