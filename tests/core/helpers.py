"""Small builders shared by the core tests: steps whose code never runs, and a driver for apply."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hephaestus as hx
from hephaestus._core._codec import decode_instance, encode_instance
from hephaestus._core._engine import (
    Command,
    Input,
    Transition,
    apply,
    derive_status,
    new_instance,
)


def mk(key: str, *events: str, retry: hx.Retry | None = None) -> hx.Step:
    """Return a step ``key`` declaring ``events``; the pure engine never calls its code."""

    def body(ctx: hx.StepContext) -> hx.StepResult:
        raise AssertionError("the pure engine must never run step code")

    return hx.step(body, key=key, events=events or ("ok",), retry=retry)


UNIQUE = hx.Unique("order")


def workflow(start: hx.Step, transitions: Any, name: str = "wf") -> hx.Workflow:
    return hx.Workflow(name, start=start, transitions=transitions, unique=UNIQUE)


class Driver:
    """Feeds inputs to ``apply`` by hand, keeping the latest instance and every transition."""

    def __init__(
        self,
        wf: hx.Workflow,
        *,
        now: float = 1000.0,
        instance_id: str = "order::abc",
        initial: dict[str, Any] | None = None,
    ) -> None:
        self.wf = wf
        self.now = now
        self.instance = new_instance(wf, instance_id, initial=initial, metadata=None, now=now)
        self.transitions: list[Transition] = []

    def __call__(self, event: Input) -> Transition:
        before = encode_instance(self.instance)
        result = apply(self.wf, self.instance, event, self.now)
        assert encode_instance(self.instance) == before, "apply mutated its input"
        if result.changed:
            assert result.instance.revision == self.instance.revision + 1
            assert result.instance.updated_at == self.now
        else:
            assert result.instance is self.instance
        assert result.instance.status is derive_status(result.instance)
        assert decode_instance(encode_instance(result.instance)) == result.instance
        self.instance = result.instance
        self.transitions.append(result)
        return result

    @property
    def status(self) -> hx.Status:
        return self.instance.status


def of_type(commands: Iterable[Command], kind: type[Any]) -> list[Any]:
    return [c for c in commands if isinstance(c, kind)]
