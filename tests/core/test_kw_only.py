"""Core inputs and commands are keyword-only, so adding a field cannot shift bindings."""

from __future__ import annotations

import inspect
import typing

import msgspec
import pytest

from hephaestus._core import _engine
from hephaestus._core._engine import Command, Deliver, Input, RunStep

KINDS = [*typing.get_args(Input), *typing.get_args(Command)]


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.__name__)
def test_keyword_only_and_tag_unchanged(kind: type[msgspec.Struct]) -> None:
    config = kind.__struct_config__
    parameters = inspect.signature(kind).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)
    assert kind.__match_args__ == ()
    # Tags are stored in snapshots and mailboxes: they stay the class names.
    assert config.tag == kind.__name__


def test_positional_construction_is_refused() -> None:
    with pytest.raises(TypeError):
        Deliver("go")  # type: ignore[call-arg]  # the point: positional arguments are refused
    assert RunStep(step="a", attempt=1).config is None


def test_every_input_and_command_is_listed() -> None:
    structs = {
        name
        for name, value in vars(_engine).items()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == _engine.__name__
        and value.__struct_config__.tag is not None
    }
    assert structs == {kind.__name__ for kind in KINDS}
