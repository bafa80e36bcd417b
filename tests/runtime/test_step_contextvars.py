"""What a step sets in a ``contextvars.ContextVar`` stays with its instance.

Users keep request ids, tracing spans and logging context in context
variables. One instance's step setting one must not change what a step of
another instance sees, whichever task the engine runs them in (a later step
of the same instance may see it, or not).
"""

from __future__ import annotations

import contextvars

import trio
import trio.testing

import hephaestus as hx

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")


def tagging_workflow(seen: dict[str, list[str]]) -> hx.Workflow:
    @hx.step(events=("ok",))
    async def first(ctx: hx.StepContext) -> hx.StepResult:
        seen.setdefault(ctx.instance_id, []).append(tenant.get())
        tenant.set(str(ctx.initial["tenant"]))
        await trio.lowlevel.checkpoint()
        return "ok"

    @hx.step(events=("ok",))
    async def second(ctx: hx.StepContext) -> hx.StepResult:
        seen.setdefault(ctx.instance_id, []).append(tenant.get())
        return "ok"

    return hx.Workflow(
        "tagging",
        start=first,
        transitions={(first, "ok"): second, (second, "ok"): hx.Done},
        unique=hx.Unique("tagging"),
    )


async def test_a_context_variable_a_step_sets_is_not_seen_by_other_instances(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: dict[str, list[str]] = {}
    wf = tagging_workflow(seen)
    async with hx.open_engine(workflows=[wf], storage=hx.MemoryStorage()) as engine:
        for round_ in range(3):  # later instances may run where earlier ones ran
            ids = [
                await engine.start(wf, f"r{round_}-{n}", {"tenant": f"t{round_}-{n}"})
                for n in range(20)
            ]
            for instance_id in ids:
                assert (await engine.wait(instance_id)).status is hx.Status.COMPLETED
    assert len(seen) == 60
    for instance_id, values in seen.items():
        assert values[0] == "none", (instance_id, values)  # nothing from another instance
        assert values[1] in ("none", instance_id.split("::")[1].replace("r", "t", 1)), values
    assert tenant.get() == "none"  # nor from the engine's caller
