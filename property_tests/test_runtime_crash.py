"""Crash equivalence of the Trio runtime on MemoryStorage, as a hypothesis property.

For a random workflow from a small family (linear; fan-out/fan-in; exclusive
branch + join; each with a ``WaitForEvent`` the test resumes, early or once it
is suspended) and random crash points (leave ``open_engine`` after ``k`` step
completions, then reopen on the same MemoryStorage object), the final state
equals that of a run without crashes: same status, results, completed set and
finished (step, event) outcomes; only the attempts of re-run steps may differ.

Each example runs its own ``trio.run`` with an autojumping MockClock
(hypothesis-trio is dead): nothing tied to one run is carried between examples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import hephaestus as hx

SHAPES = ("linear", "fan", "branch")
KEYS = ("a", "b", "c", "d")
PAYLOAD = {"by": "test", "ok": True}
DEDUPE = "go-once"


@dataclass(frozen=True)
class Scenario:
    shape: str
    n: int
    durations: Mapping[str, int]  # virtual seconds per step key
    resume_early: bool
    exit_by: str  # how the engine's block is left at a crash point: "return", "raise", "cancel"


class SimulatedCrash(Exception):
    """Raised inside the engine's block to leave it by exception."""


def build(sc: Scenario) -> hx.Workflow:
    """Build the scenario's workflow; every result depends only on initial and predecessors."""
    predecessors: dict[str, tuple[str, ...]] = {
        "linear": {"a": (), "w": ("a",), "b": ("w",), "c": ("b",)},
        "fan": {"a": (), "b": ("a",), "c": ("a",), "w": ("b",), "d": ("w", "c")},
        "branch": {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "w": ("d",)},
    }[sc.shape]

    def make(key: str, events: tuple[str, ...]) -> hx.Step:
        async def body(ctx: hx.StepContext) -> hx.StepResult:
            await trio.sleep(sc.durations[key])
            seen = [ctx.results[p] for p in predecessors[key] if p in ctx.results]
            value = ctx.initial["n"] * 10 + KEYS.index(key)
            value += sum(int(r.get("v", 1)) for r in seen)
            event = events[0] if len(events) == 1 else events[ctx.initial["n"] % 2]
            return hx.Emit(
                event,
                {"v": value, "from": sorted(p for p in predecessors[key] if p in ctx.results)},
            )

        return hx.step(body, events=events, key=key)

    w = hx.WaitForEvent("go", key="w")
    if sc.shape == "linear":
        a, b, c = make("a", ("ok",)), make("b", ("ok",)), make("c", ("ok",))
        transitions: dict[Any, Any] = {
            (a, "ok"): w,
            (w, "go"): b,
            (b, "ok"): c,
            (c, "ok"): hx.Done,
        }
    elif sc.shape == "fan":
        a, b, c, d = (make(k, ("ok",)) for k in KEYS)
        transitions = {
            (a, "ok"): [b, c],
            (b, "ok"): w,
            (w, "go"): d,
            (c, "ok"): d,
            (d, "ok"): hx.Done,
        }
    else:
        a = make("a", ("left", "right"))
        b, c, d = (make(k, ("ok",)) for k in KEYS[1:])
        transitions = {
            (a, "left"): b,
            (a, "right"): c,
            (b, "ok"): d,
            (c, "ok"): d,
            (d, "ok"): w,
            (w, "go"): hx.Done,
        }
    return hx.Workflow(
        f"crash_{sc.shape}", start=a, transitions=transitions, unique=hx.Unique("crash")
    )


def run(sc: Scenario, crash_points: list[int]) -> hx.Instance:
    """Run the scenario to the end, leaving the engine after each crash point in turn."""
    wf = build(sc)
    storage = hx.MemoryStorage()
    state: dict[str, Any] = {"id": None, "acked": False, "done": False}

    async def phase(crash_after: int | None) -> None:
        completions = 0
        crash = trio.Event()
        suspended = trio.Event()

        def on_event(event: hx.TelemetryEvent) -> None:
            nonlocal completions
            if event.name == "step.stop":
                completions += 1
                if crash_after is not None and completions >= crash_after:
                    crash.set()
            elif event.name == "step.suspend" and event.step == "w":
                suspended.set()

        with trio.CancelScope() as outer, contextlib.suppress(SimulatedCrash):
            async with hx.open_engine(
                workflows=[wf],
                storage=storage,
                clock=hx.testing.VirtualClock(),
                telemetry=on_event,
            ) as engine:

                async def resume() -> None:
                    await engine.resume(state["id"], "go", PAYLOAD, dedupe_key=DEDUPE)
                    state["acked"] = True

                if state["id"] is None:
                    state["id"] = await engine.start(wf, "x", {"n": sc.n})
                    if sc.resume_early:
                        await resume()  # the step that takes it has not even started
                if crash_after == 0:
                    crash.set()

                async def resumer() -> None:
                    if state["acked"]:
                        return
                    instance = await engine.get(state["id"])
                    if "w" in instance.completed:
                        return
                    if "w" not in instance.waiting:
                        await suspended.wait()
                    await resume()

                async def finisher() -> None:
                    final = await engine.wait(state["id"])
                    assert final.status.is_terminal
                    state["done"] = True
                    nursery.cancel_scope.cancel()

                async def crasher() -> None:
                    await crash.wait()
                    if sc.exit_by == "cancel":
                        outer.cancel()  # cancelled from outside the engine's block
                    else:
                        nursery.cancel_scope.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(finisher)
                    nursery.start_soon(resumer)
                    if crash_after is not None:
                        nursery.start_soon(crasher)
                if crash.is_set() and not state["done"] and sc.exit_by == "raise":
                    raise SimulatedCrash  # leave the block by exception
        # However the block was left, every runner was cancelled mid-step: the crash.

    async def main() -> hx.Instance:
        with trio.fail_after(100_000):  # virtual seconds: a lost step or event hangs here
            for crash_after in [*crash_points, None]:
                await phase(crash_after)
                if state["done"]:
                    break
        async with storage:
            final = await storage.get(state["id"])
        assert final is not None
        return final

    result: hx.Instance = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result


def outcomes(instance: hx.Instance) -> list[tuple[str, str | None, str | None]]:
    return sorted((h.step, h.event, h.error) for h in instance.history)


scenarios = st.builds(
    Scenario,
    shape=st.sampled_from(SHAPES),
    n=st.integers(0, 9),
    durations=st.fixed_dictionaries({k: st.integers(0, 3) for k in KEYS}),
    resume_early=st.booleans(),
    exit_by=st.sampled_from(("return", "raise", "cancel")),
)


@given(sc=scenarios, crash_points=st.lists(st.integers(0, 5), min_size=1, max_size=3))
def test_crash_and_recovery_ends_in_the_no_crash_final_state(
    sc: Scenario, crash_points: list[int]
) -> None:
    reference = run(sc, [])
    crashed = run(sc, crash_points)
    assert reference.status is hx.Status.COMPLETED
    assert crashed.status is reference.status
    assert crashed.results == reference.results
    assert set(crashed.completed) == set(reference.completed)
    assert crashed.error is None
    assert crashed.inbox == ()
    assert outcomes(crashed) == outcomes(reference)
    assert crashed.results["w"] == PAYLOAD
    # Only attempts may differ, and only upwards (a re-run step's attempt grows).
    attempts = {h.step: h.attempt for h in reference.history}
    for entry in crashed.history:
        assert entry.attempt >= attempts[entry.step]
