"""Passivating and re-activating an instance between any two transitions changes nothing.

The same schedule of requests, restarts and idle time runs once with every
runner resident (``passivate_after=None``) and once passivating at once
(``0.0``); the final snapshot (status, history, results, timers) and every
reply must be the same.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hephaestus as hx

Action = tuple[float, str]


def order() -> hx.Workflow:
    """prepare -> approval (go, or 60 s) -> ship (a plain step) -> shipped? (done, or 30 s)."""

    @hx.step(events=("ok",))
    async def prepare(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(1)
        return "ok"

    @hx.step(events=("ok",))
    async def ship(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("ok", {"parcel": 1})

    approval = hx.WaitForEvent("go", key="approval", timeout=60)
    shipped = hx.WaitForEvent("done", key="shipped", timeout=30)
    return hx.Workflow(
        "order",
        start=prepare,
        transitions={
            (prepare, "ok"): approval,
            (approval, "go"): ship,
            (approval, "timeout"): hx.Done,
            (ship, "ok"): shipped,
            (shipped, "done"): hx.Done,
            (shipped, "timeout"): hx.Done,
        },
        unique=hx.Unique("o"),
    )


WORKFLOW = order()

actions = st.lists(
    st.tuples(
        st.sampled_from([0.5, 1.0, 5.0, 20.0, 45.0]),
        st.sampled_from(["go", "done", "cancel", "schedule", "restart", "get"]),
    ),
    max_size=8,
)


def observe(schedule: list[Action], passivate_after: float | None) -> tuple[Any, ...]:
    """Run ``schedule`` on one instance; return what a user can observe of it."""

    async def main() -> tuple[Any, ...]:
        store = hx.MemoryStorage()
        clock = hx.testing.VirtualClock()
        replies: list[object] = []

        def opened() -> Any:
            return hx.open_engine(
                workflows=[WORKFLOW], storage=store, clock=clock, passivate_after=passivate_after
            )

        async with store:
            engine_cm = opened()
            engine = await engine_cm.__aenter__()
            try:
                iid = await engine.start(WORKFLOW, "a")
                for delay, kind in schedule:
                    await trio.sleep(delay)
                    await trio.testing.wait_all_tasks_blocked()
                    try:
                        if kind == "restart":
                            await engine_cm.__aexit__(None, None, None)
                            engine_cm = opened()
                            engine = await engine_cm.__aenter__()
                            reply: object = "restarted"
                        elif kind == "cancel":
                            reply = await engine.cancel(iid)
                        elif kind == "schedule":
                            reply = await engine.schedule_resume(iid, "shipped", 3.0)
                        elif kind == "get":
                            got = await engine.get(iid)
                            reply = (got.status, got.revision)
                        else:
                            reply = await engine.resume(iid, kind)
                    except hx.HephaestusError as exc:
                        reply = type(exc).__name__
                    replies.append(reply)
                with trio.fail_after(1000):
                    final = await engine.wait(iid)
            finally:
                await engine_cm.__aexit__(None, None, None)
        return (
            final.status,
            final.history,
            final.results,
            final.timers,
            final.revision,
            tuple(replies),
        )

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(schedule=actions)
def test_passivation_at_any_point_changes_nothing_observable(schedule: list[Action]) -> None:
    assert observe(schedule, 0.0) == observe(schedule, None)
