"""A new instance whose first write committed but whose reply was lost still runs.

On shared storage a new instance is written owned by this engine's lease. If
the connection fails after the commit, ``start`` raises the storage's error
and forgets the instance, but the store says this (live) engine owns it, so
no other engine claims it: it would wait, unrun, until this engine exits. The
engine checks such ids again and claims back the ones the store gives it.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import hephaestus as hx

from .helpers import event_workflow
from .shared_cluster import TTL, spawn


async def test_a_start_whose_reply_was_lost_is_run_by_its_engine(autojump_clock: Any) -> None:
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=TTL)
    wf = event_workflow()
    async with store, trio.open_nursery() as nursery:
        node = await spawn(nursery, store, [wf], clock)
        node.conn.lose_reply("put_owned")
        with pytest.raises(OSError, match="reply was lost"):
            await node.engine.start(wf, "x")
        owner = store.owner("ev::x")
        assert owner is not None
        assert owner.engine_id == node.engine_id  # it landed, under this engine's lease
        with pytest.raises(hx.AlreadyRunning):  # the caller's retry finds it stored
            await node.engine.start(wf, "x")
        await trio.sleep(TTL / 2)  # the claimer looks at once; get() reads, it claims nothing
        assert (await node.engine.get("ev::x")).status is hx.Status.WAITING  # it got a runner
        await node.engine.resume("ev::x", "go", {"by": "me"})
        done = await node.engine.wait("ev::x")
        nursery.cancel_scope.cancel()
    assert [h.step for h in done.history] == ["prepare", "approve", "finish"]
