"""The workflows the scenarios run: trivial async steps, so what is measured is the engine."""

from __future__ import annotations

import trio

import hephaestus as hx


def _trivial(key: str) -> hx.Step:
    async def body(ctx: hx.StepContext) -> hx.StepResult:
        await trio.lowlevel.checkpoint()
        return "ok"

    return hx.step(body, events=("ok",), key=key)


STEP_A, STEP_B, STEP_C = _trivial("a"), _trivial("b"), _trivial("c")

LINEAR = hx.Workflow(
    "linear",
    start=STEP_A,
    transitions={(STEP_A, "ok"): STEP_B, (STEP_B, "ok"): STEP_C, (STEP_C, "ok"): hx.Done},
    unique=hx.Unique("lin"),
)
"""Three trivial steps in a row (scenarios 1, 4, 7, 9)."""

FAN_START, FAN_B, FAN_C, FAN_D, FAN_JOIN = (_trivial(k) for k in ("a", "b", "c", "d", "e"))

FANOUT = hx.Workflow(
    "fanout",
    start=FAN_START,
    transitions={
        (FAN_START, "ok"): [FAN_B, FAN_C, FAN_D],
        (FAN_B, "ok"): FAN_JOIN,
        (FAN_C, "ok"): FAN_JOIN,
        (FAN_D, "ok"): FAN_JOIN,
        (FAN_JOIN, "ok"): hx.Done,
    },
    unique=hx.Unique("fan"),
)
"""One step, three in parallel, then a join (scenario 2)."""

PARK = hx.WaitForEvent("go", key="park")

PARKED = hx.Workflow(
    "parked",
    start=PARK,
    transitions={(PARK, "go"): hx.Done},
    unique=hx.Unique("park"),
)
"""One step suspended until ``resume(id, "go")`` (scenarios 3, 5, 8)."""
