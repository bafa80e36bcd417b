"""Graph fingerprints and the name-by-name check of a stored instance against its definition."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

import hephaestus as hx
from hephaestus._core._codec import decode_instance
from hephaestus._core._definitions import definition_problems
from hephaestus._core._engine import Deliver, Start, StepSucceeded, StepSuspended, apply
from hephaestus._core._notes import Delivery

from .helpers import Driver, mk, workflow

FIXTURES = Path(__file__).parent / "fixtures"


def _pair(second_key: str, events: tuple[str, ...] = ("go",)) -> hx.Workflow:
    a, b = mk("a"), mk(second_key, *events)
    return workflow(a, {(a, "ok"): b, **{(b, e): hx.Done for e in events}})


def test_the_fingerprint_follows_the_graph_not_the_objects() -> None:
    assert _pair("b").fingerprint == _pair("b").fingerprint
    assert _pair("b").fingerprint != _pair("c").fingerprint
    assert _pair("b").fingerprint != _pair("b", ("go", "stop")).fingerprint


def test_new_instances_and_every_write_record_the_fingerprint() -> None:
    run = Driver(_pair("b"))
    assert run.instance.graph == run.wf.fingerprint
    run(Start())
    assert run.instance.graph == run.wf.fingerprint


def test_state_naming_a_missing_step_or_event_does_not_fit() -> None:
    run = Driver(_pair("b", ("go", "stop")))
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    run(StepSuspended(step="b", attempt=1, timeout=None))
    assert definition_problems(run.wf, run.instance) == []
    renamed = _pair("c")
    problems = definition_problems(renamed, run.instance)
    assert "step 'b'" in problems
    with pytest.raises(hx.DefinitionChanged, match="Register the old definition"):
        apply(renamed, run.instance, Deliver(event="go"), 2000.0)
    narrower = _pair("b", ("go",))
    assert definition_problems(narrower, run.instance) == ["event 'stop' of step 'b'"]
    # A different fingerprint alone is no problem: the names are what counts.
    wider = _pair("b", ("go", "stop", "later"))
    assert definition_problems(wider, run.instance) == []
    t = apply(wider, run.instance, Deliver(event="go"), 2000.0)
    assert t.instance.status is hx.Status.COMPLETED
    assert t.instance.graph == wider.fingerprint


def test_a_terminal_instance_answers_whatever_its_definition() -> None:
    run = Driver(_pair("b"))
    run(Start())
    run(StepSucceeded(step="a", attempt=1, event="ok"))
    run(StepSuspended(step="b", attempt=1, timeout=None))
    run(Deliver(event="go", payload=None, step=None, dedupe_key="k"))
    assert run.status is hx.Status.COMPLETED
    assert (
        apply(
            _pair("c"),
            run.instance,
            Deliver(event="go", payload=None, step=None, dedupe_key="k"),
            2000.0,
        ).reply
        == Delivery.IGNORED
    )


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.msgpack")))
def test_snapshots_from_before_fingerprints_decode_with_an_empty_one(name: str) -> None:
    instance = decode_instance((FIXTURES / name).read_bytes())
    assert instance.graph == ""
    assert msgspec.structs.replace(instance, graph="x").graph == "x"
