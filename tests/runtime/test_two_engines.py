"""Two engines in one process, on separate storages, never touch each other."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import hephaestus as hx

from .helpers import Recorder, clock, event_workflow


async def test_two_engines_are_independent(autojump_clock: Any) -> None:
    wf = event_workflow()
    first_store, second_store = hx.MemoryStorage(), hx.MemoryStorage()
    first_events, second_events = Recorder(), Recorder()
    async with (
        hx.open_engine(
            workflows=[wf], storage=first_store, clock=clock(), telemetry=first_events
        ) as first,
        hx.open_engine(
            workflows=[wf], storage=second_store, clock=clock(), telemetry=second_events
        ) as second,
    ):
        one = await first.start(wf, "same")
        two = await second.start(wf, "same")
        assert one == two  # the same id, in two separate worlds
        await trio.testing.wait_all_tasks_blocked()
        parked = await second.get(two)
        assert parked.status is hx.Status.WAITING

        await first.resume(one, "go", {"by": "first"})
        done = await first.wait(one)
        assert done.results["finish"] == {"approved": "first"}
        await trio.testing.wait_all_tasks_blocked()
        assert await second.get(two) == parked  # untouched
        assert await second_store.get(two) == parked
        assert second_events.count("step.resume") == 0

        # The second engine still has its own instance to resume, and the first
        # engine's finished instance does not make the id free over there.
        try:
            await second.start(wf, "same")
        except hx.AlreadyRunning:
            pass
        else:
            raise AssertionError("the second engine's instance is still active")
        await second.resume(two, "go", {"by": "second"})
        assert (await second.wait(two)).results["finish"] == {"approved": "second"}
        assert (await first.get(one)).results["finish"] == {"approved": "first"}

        # Cancelling on one does not reach the other.
        three = await first.start(wf, "other")
        four = await second.start(wf, "other")
        await trio.testing.wait_all_tasks_blocked()
        await first.cancel(three)
        assert (await second.get(four)).status is hx.Status.WAITING
        try:
            await second.resume("ev::only-in-first", "go")
        except hx.InstanceNotFound:
            pass
        else:
            raise AssertionError("ids of the first engine must be unknown to the second")
    assert {e.instance_id for e in first_events.events} <= {one, three}
    assert {e.instance_id for e in second_events.events} <= {two, four}


async def test_closing_one_engine_leaves_the_other_running(autojump_clock: Any) -> None:
    wf = event_workflow()
    async with hx.open_engine(workflows=[wf], clock=clock()) as survivor:
        kept = await survivor.start(wf, "kept")
        async with hx.open_engine(workflows=[wf], clock=clock()) as doomed:
            await doomed.start(wf, "gone")
            await trio.testing.wait_all_tasks_blocked()
        await survivor.resume(kept, "go", {"by": "me"})
        assert (await survivor.wait(kept)).status is hx.Status.COMPLETED
