"""Schedules on shared storage: several engines run one schedule, and each tick runs once.

Counting instances is not enough: a tick started twice replaces its finished
first run under the same id, so these tests count step runs and first writes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx

from .shared_cluster import spawn

HOUR = 3600.0


def counted(runs: Counter[str]) -> hx.Workflow:
    @hx.step(events=("ok",))
    async def tick(ctx: hx.StepContext) -> hx.StepResult:
        runs[ctx.instance_id] += 1
        return "ok"

    return hx.Workflow(
        "tick", start=tick, transitions={(tick, "ok"): hx.Done}, unique=hx.Unique("tick")
    )


@pytest.mark.parametrize("engines", [2, 3, 5])
async def test_each_tick_runs_once_whatever_the_engines_race(
    autojump_clock: Any, engines: int
) -> None:
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=120.0)
    runs: Counter[str] = Counter()
    wf = counted(runs)
    hourly = hx.Schedule(wf, cron="0 * * * *", catch_up="all")
    async with store, trio.open_nursery() as nursery:
        nodes = [
            await spawn(nursery, store, [wf], clock, schedules=[hourly]) for _ in range(engines)
        ]
        await trio.sleep(6 * HOUR + 60)
        ticks = await nodes[0].engine.list(workflow=wf)
        nursery.cancel_scope.cancel()
    starts = Counter(str(e.instance_id) for n in nodes for e in n.events.named("workflow.start"))
    assert len(ticks) == 6
    assert {i.status for i in ticks} == {hx.Status.COMPLETED}
    assert runs == Counter({i.id: 1 for i in ticks})
    assert starts == Counter({i.id: 1 for i in ticks})


async def test_a_tick_finished_elsewhere_while_an_engine_looked_is_not_run_again(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Engine B reads the tick's id (nothing yet) and is slow to act on it; engine A starts
    and finishes the tick meanwhile. B's start must find the finished instance, not replace
    it: a finished id may be started again by hand, but never by a schedule."""
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=120.0)
    runs: Counter[str] = Counter()
    wf = counted(runs)
    hourly = hx.Schedule(wf, cron="0 * * * *")
    async with store, trio.open_nursery() as nursery:
        fast = await spawn(nursery, store, [wf], clock, schedules=[hourly])
        slow = await spawn(nursery, store, [wf], clock, schedules=[hourly])
        real_get = slow.conn.get

        async def stale_get(instance_id: str) -> hx.Instance | None:
            found = await real_get(instance_id)
            if instance_id.startswith("tick::"):
                await trio.sleep(1.0)  # the answer is a second old when it arrives
            return found

        monkeypatch.setattr(slow.conn, "get", stale_get)
        await trio.sleep(HOUR + 60)
        (only,) = await fast.engine.list(workflow=wf)
        nursery.cancel_scope.cancel()
    assert runs == Counter({only.id: 1})
    assert only.revision == 2  # started and completed once; never replaced
    ticks = [e for n in (fast, slow) for e in n.events.named("schedule.tick")]
    assert sorted(e.metadata["started"] for e in ticks) == [False, True]
