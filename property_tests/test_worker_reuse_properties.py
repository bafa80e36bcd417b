"""Running instances in runner tasks that ran others before changes nothing observable.

An engine that passivates keeps finished runners' tasks for the next
instance (``_runtime/_workers.py``); one that does not (``passivate_after=None``)
gives every runner a task of its own. The workflow here never waits, so
passivation itself does nothing: the same schedule of starts (each under a
context variable's value), cancels at any moment (inline step code running or
not) and idle time must end every instance the same way in both, and every
step must see the same context value.
"""

from __future__ import annotations

import contextvars
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hephaestus as hx

TAG: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="-")


def chain() -> hx.Workflow:
    """first (1.1 s, sets the variable) -> second (2.3 s, reports what it sees) -> Done.

    Actions come at multiples of 0.5 s, so no step ends at the very moment of
    an action (whichever trio ran first then would decide the reply).
    """

    @hx.step(events=("ok",))
    async def first(ctx: hx.StepContext) -> hx.StepResult:
        seen = TAG.get()
        await trio.sleep(1.1)
        TAG.set(f"set by {ctx.instance_id}")  # stays with this instance's steps
        return hx.Emit("ok", {"seen": seen})

    @hx.step(events=("ok",))
    async def second(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(2.3)
        return hx.Emit("ok", {"seen": TAG.get()})

    return hx.Workflow(
        "chain",
        start=first,
        transitions={(first, "ok"): second, (second, "ok"): hx.Done},
        unique=hx.Unique("c"),
    )


WORKFLOW = chain()

Action = tuple[float, str, int, str]

actions = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.5, 1.0, 2.5, 10.0]),
        st.sampled_from(["start", "start", "cancel"]),
        st.integers(min_value=0, max_value=3),
        st.sampled_from(["-", "x", "y"]),
    ),
    max_size=12,
)


async def _start(engine: hx.Engine, index: int, tag: str, replies: list[object]) -> None:
    TAG.set(tag)
    try:
        replies.append(await engine.start(WORKFLOW, str(index)))
    except hx.HephaestusError as exc:
        replies.append(type(exc).__name__)


def observe(schedule: list[Action], passivate_after: float | None) -> tuple[Any, ...]:
    """Run ``schedule``; return every reply and every instance's final state."""

    async def main() -> tuple[Any, ...]:
        replies: list[object] = []
        finals: dict[str, Any] = {}
        async with hx.open_engine(
            workflows=[WORKFLOW],
            storage=hx.MemoryStorage(),
            clock=hx.testing.VirtualClock(),
            passivate_after=passivate_after,
        ) as engine:
            for delay, kind, index, tag in schedule:
                await trio.sleep(delay)
                await trio.testing.wait_all_tasks_blocked()
                if kind == "start":
                    # Started from a task whose context holds that value.
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_start, engine, index, tag, replies)
                    continue
                try:
                    await engine.cancel(f"c::{index}")
                    replies.append("cancelled")
                except hx.HephaestusError as exc:
                    replies.append(type(exc).__name__)
            for index in range(4):
                try:
                    with trio.fail_after(1000):
                        final = await engine.wait(f"c::{index}")
                except hx.InstanceNotFound:
                    continue
                finals[final.id] = (final.status, final.history, final.results)
        return tuple(replies), finals

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=actions)
def test_reused_runner_tasks_change_nothing_observable(schedule: list[Action]) -> None:
    assert observe(schedule, 0.0) == observe(schedule, None)
