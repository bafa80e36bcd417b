"""``wait`` is a checkpoint on every path: a schedule point and a cancellation point.

Its hot path takes one schedule point, not two (waiting for the entry, or
reading the store); these tests pin that no path is left without one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

import hephaestus as hx

from .helpers import clock


@hx.step(events=("ok",), key="only")
async def _only(ctx: hx.StepContext) -> hx.StepResult:
    await trio.sleep(1)
    return "ok"


WF = hx.Workflow(
    "waited", start=_only, transitions={(_only, "ok"): hx.Done}, unique=hx.Unique("wt")
)


async def _schedules(call: Callable[[], Awaitable[object]]) -> None:
    """Assert that ``call()`` is a schedule point, whether it returns or raises.

    trio.testing.assert_checkpoints reads the same counter, but lets a block
    that raises pass unchecked.
    """
    task = trio.lowlevel.current_task()
    before = task._schedule_points
    with contextlib.suppress(hx.InstanceNotFound, hx.EventRejected):
        await call()
    assert task._schedule_points > before, "wait returned without a schedule point"


async def _cancels(call: Callable[[], Awaitable[object]]) -> None:
    """Assert that ``call()`` raises Cancelled when its scope is cancelled already."""
    with trio.CancelScope() as scope:
        scope.cancel()
        await call()
        pytest.fail("wait returned in a cancelled scope")
    assert scope.cancelled_caught


async def test_wait_for_an_instance_that_left_the_registry_is_a_checkpoint(
    autojump_clock: Any,
) -> None:
    async with hx.open_engine(workflows=[WF], clock=clock()) as engine:
        instance_id = await engine.start(WF, "gone")
        await trio.sleep(5)  # it finished and left the registry: wait reads the store
        assert instance_id not in engine._registry
        await _schedules(lambda: engine.wait(instance_id))
        await _cancels(lambda: engine.wait(instance_id))
        assert (await engine.wait(instance_id)).status is hx.Status.COMPLETED


async def test_wait_for_a_running_instance_is_a_checkpoint(autojump_clock: Any) -> None:
    async with hx.open_engine(workflows=[WF], clock=clock()) as engine:
        instance_id = await engine.start(WF, "live")
        await _cancels(lambda: engine.wait(instance_id))
        await _schedules(lambda: engine.wait(instance_id))


async def test_wait_for_an_unknown_id_is_a_checkpoint(autojump_clock: Any) -> None:
    async with hx.open_engine(workflows=[WF], clock=clock()) as engine:
        await _schedules(lambda: engine.wait("wt::nobody"))
        await _cancels(lambda: engine.wait("wt::nobody"))
        with pytest.raises(hx.InstanceNotFound):
            await engine.wait("wt::nobody")


async def test_wait_for_an_instance_of_an_unregistered_workflow_is_a_checkpoint(
    autojump_clock: Any,
) -> None:
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[WF], storage=storage, clock=clock()) as engine:
        instance_id = await engine.start(WF, "orphan")
    other = hx.Workflow(
        "other", start=_only, transitions={(_only, "ok"): hx.Done}, unique=hx.Unique("ot")
    )
    async with hx.open_engine(workflows=[other], storage=storage, clock=clock()) as engine:
        # Stored RUNNING, its workflow not registered here: an ORPHAN entry (or none).
        await _schedules(lambda: engine.wait(instance_id))
        await _cancels(lambda: engine.wait(instance_id))
        with pytest.raises(hx.EventRejected):
            await engine.wait(instance_id)
