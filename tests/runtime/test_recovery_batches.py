"""Recovery starts the runners of many resident instances in batches, serving requests meanwhile.

Every runner's first step runs in the scheduler batch it was started in, so
starting 100,000 at once made the first request after ``open_engine`` wait
for all of them (or not, depending on Trio's random batch order): 0.95 s or
3.4 s in bench/recovery.py. Started 1,000 per schedule point, a request is
served after at most a batch or two, and every instance still gets its
runner; an engine closed meanwhile starts and ends the rest.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx

from .helpers import Recorder, all_tasks, event_workflow

N = 3_500  # four batches
LATE = 10_000  # ten batches: "ev::i9999" is the last id, in the last


async def _parked_store(wf: hx.Workflow, n_instances: int = N) -> hx.MemoryStorage:
    store = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=store) as engine:
        for n in range(n_instances):
            await engine.start(wf, f"i{n}")
        await trio.testing.wait_all_tasks_blocked()
    return store


async def test_a_request_is_served_before_every_recovered_runner_started(
    autojump_clock: Any,
) -> None:
    wf = event_workflow()
    store = await _parked_store(wf)
    events = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=store, passivate_after=None, telemetry=events
    ) as engine:
        assert (await engine.get(f"ev::i{N - 1}")).status is hx.Status.WAITING
        early = sum(1 for task in all_tasks() if task.name.endswith(".supervise"))
        paused_meanwhile = not gc.isenabled()  # the cyclic GC waits for the last batch
        await engine.resume(f"ev::i{N - 1}", "go", {"by": "me"})  # its runner may not run yet
        assert (await engine.wait(f"ev::i{N - 1}")).status is hx.Status.COMPLETED
        await trio.testing.wait_all_tasks_blocked()
        assert events.count("runner.init") == N
        assert gc.isenabled()  # restored once every runner started
        await engine.resume("ev::i0", "go", {"by": "me"})
        assert (await engine.wait("ev::i0")).status is hx.Status.COMPLETED
    assert 0 < early <= N // 2  # served while runners were still starting, a batch or two in
    assert paused_meanwhile
    assert events.count("runner.crash") == 0


async def test_an_engine_closed_during_recovery_ends_every_runner(autojump_clock: Any) -> None:
    wf = event_workflow()
    store = await _parked_store(wf, LATE)
    last = f"ev::i{LATE - 1}"  # ids are recovered in order: its runner is in the last batch
    stop = trio.Event()

    async def run_engine(task_status: trio.TaskStatus[hx.Engine]) -> None:
        async with hx.open_engine(workflows=[wf], storage=store, passivate_after=None) as engine:
            task_status.started(engine)
            await stop.wait()

    with trio.fail_after(60):  # a runner never started would leave its waiter hanging
        async with trio.open_nursery() as nursery:
            engine = await nursery.start(run_engine)

            async def close_engine() -> None:  # runs once wait() below blocks
                stop.set()

            nursery.start_soon(close_engine)
            with pytest.raises(hx.EngineClosed):
                await engine.wait(last)
    async with hx.open_engine(workflows=[wf], storage=store) as engine:
        assert (await engine.get(last)).status is hx.Status.WAITING
