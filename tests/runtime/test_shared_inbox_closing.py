"""An inbox request its owner could not apply because that engine was closing stays pending.

``EngineClosed`` says something about the engine that met it, not about the
request: stored as the request's answer it would be final (under a dedupe key,
for every later try too), although the event was never applied. The row must
stay pending for whoever holds the instance next.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import hephaestus as hx
from hephaestus._core._engine import Input

from .helpers import event_workflow
from .shared_cluster import TTL, spawn


async def test_a_request_met_by_engine_closed_is_applied_later_not_answered_with_it(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=TTL)
    wf = event_workflow()
    async with store, trio.open_nursery() as nursery:
        owner = await spawn(nursery, store, [wf], clock, passivate_after=None)
        sender = await spawn(nursery, store, [wf], clock)
        iid = await owner.engine.start(wf, "x")
        await trio.sleep(1)
        held = store.owner(iid)
        assert held is not None
        assert held.engine_id == owner.engine_id
        applied_here = owner.engine._request_here
        tries: list[Input] = []

        async def closing_the_first_time(instance_id: str, event: Input) -> Any:
            tries.append(event)
            if len(tries) == 1:
                raise hx.EngineClosed("the engine closed before the request was acknowledged")
            return await applied_here(instance_id, event)

        monkeypatch.setattr(owner.engine, "_request_here", closing_the_first_time)
        with trio.fail_after(4 * TTL):
            await sender.engine.resume(iid, "go", {"by": "webhook"}, dedupe_key="hook-1")
        done = await sender.engine.wait(iid)
        nursery.cancel_scope.cancel()
    assert len(tries) == 2
    assert [h.step for h in done.history] == ["prepare", "approve", "finish"]
    assert done.dedupe_keys == ("hook-1",)
