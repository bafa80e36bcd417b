"""Workflows, telemetry recorders and task-tree helpers shared by the runtime tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import trio

import hephaestus as hx


class Recorder:
    """A telemetry handler keeping every event, with small query helpers."""

    def __init__(self) -> None:
        self.events: list[hx.TelemetryEvent] = []
        self.hooks: list[Callable[[hx.TelemetryEvent], None]] = []

    def __call__(self, event: hx.TelemetryEvent) -> None:
        self.events.append(event)
        for hook in self.hooks:
            hook(event)

    def named(self, name: str, instance_id: str | None = None) -> list[hx.TelemetryEvent]:
        return [
            e
            for e in self.events
            if e.name == name and (instance_id is None or e.instance_id == instance_id)
        ]

    def count(self, name: str, instance_id: str | None = None) -> int:
        return len(self.named(name, instance_id))


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task of the current run, found by walking the task tree from the root."""
    found: set[trio.lowlevel.Task] = set()
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None or task in found:
            continue
        found.add(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


def task_names(tasks: Iterable[trio.lowlevel.Task]) -> list[str]:
    return sorted(task.name for task in tasks)


def clock() -> hx.testing.VirtualClock:
    return hx.testing.VirtualClock()


# --- workflows ---------------------------------------------------------------------------------


def fan_workflow(
    name: str = "fan",
    *,
    key: str = "fan",
    delay: float = 0.0,
    scope: str = "workflow",
    version: int = 1,
) -> hx.Workflow:
    """split -> [left, right] -> join -> Done; results are computed from ``initial["n"]``."""

    @hx.step(events=("ok",))
    async def split(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(delay)
        return hx.Emit("ok", {"n": ctx.initial["n"]})

    @hx.step(events=("ok",))
    async def left(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(delay)
        return hx.Emit("ok", {"v": ctx.results["split"]["n"] * 2})

    @hx.step(events=("ok",))
    async def right(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(delay)
        return hx.Emit("ok", {"v": ctx.results["split"]["n"] + 1})

    @hx.step(events=("ok",))
    async def join(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(delay)
        return hx.Emit("ok", {"sum": ctx.results["left"]["v"] + ctx.results["right"]["v"]})

    return hx.Workflow(
        name,
        start=split,
        transitions={
            (split, "ok"): [left, right],
            (left, "ok"): join,
            (right, "ok"): join,
            (join, "ok"): hx.Done,
        },
        unique=hx.Unique(key, scope=scope),  # type: ignore[arg-type]
        version=version,
    )


def fan_expected(n: int) -> dict[str, dict[str, Any]]:
    return {
        "split": {"n": n},
        "left": {"v": 2 * n},
        "right": {"v": n + 1},
        "join": {"sum": 3 * n + 1},
    }


def event_workflow(name: str = "ev", *, key: str = "ev") -> hx.Workflow:
    """prepare -> approve (WaitForEvent "go", 1 h timeout) -> finish -> Done."""

    @hx.step(events=("ok",))
    async def prepare(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    approve = hx.WaitForEvent("go", key="approve", timeout=3600)

    @hx.step(events=("ok",))
    async def finish(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("ok", {"approved": ctx.results.get("approve", {}).get("by")})

    return hx.Workflow(
        name,
        start=prepare,
        transitions={
            (prepare, "ok"): approve,
            (approve, "go"): finish,
            (approve, "timeout"): hx.Done,
            (finish, "ok"): hx.Done,
        },
        unique=hx.Unique(key),
    )


def single_step_workflow(
    fn: Any,
    *,
    name: str = "one",
    key: str = "one",
    events: tuple[str, ...] = ("ok",),
    retry: hx.Retry | None = None,
    timeout: float | None = None,
) -> hx.Workflow:
    """A workflow of one step ``fn`` (key "work") whose every event ends the instance."""
    work = hx.step(fn, events=events, key="work", retry=retry, timeout=timeout)
    return hx.Workflow(
        name, start=work, transitions={(work, e): hx.Done for e in events}, unique=hx.Unique(key)
    )
