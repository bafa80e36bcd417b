"""Many concurrent instances on one engine."""

from __future__ import annotations

from typing import Any

import trio

import hephaestus as hx

from .helpers import Recorder, clock, fan_expected, fan_workflow


async def test_thousand_concurrent_fan_out_fan_in_instances(autojump_clock: Any) -> None:
    wf = fan_workflow(delay=1.0)
    storage = hx.MemoryStorage()
    recorder = Recorder()
    finals: dict[str, hx.Instance] = {}
    n = 1000
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder
    ) as engine:
        ids: dict[int, str] = {}

        async def start(i: int) -> None:
            ids[i] = await engine.start(wf, f"i{i}", {"n": i})

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(start, i)
        assert len(set(ids.values())) == n
        assert len(engine._registry) == n  # every one has its runner

        async def wait(iid: str) -> None:
            finals[iid] = await engine.wait(iid)

        async with trio.open_nursery() as nursery:
            for iid in ids.values():
                nursery.start_soon(wait, iid)
        assert engine._registry == {}  # finished runners leave the registry
        stored = await storage.query(status=hx.Status.COMPLETED)
        assert len(stored) == n
    for i, iid in ids.items():
        final = finals[iid]
        assert final.status is hx.Status.COMPLETED, final
        assert final.results == fan_expected(i)
        assert sorted(final.completed) == ["join", "left", "right", "split"]
        assert all(h.attempt == 1 for h in final.history)
    assert recorder.count("runner.crash") == 0
    assert recorder.count("step.start") == 4 * n
