"""``start_new`` (a new instance that starts at once) equals ``Start`` applied by the general path.

``Engine.start`` builds the started snapshot of an admitted instance in one
go instead of building the PENDING one and applying ``Start`` to it; on any
random workflow, data, clock, stored revision and parent link, that must be
exactly what the general path gives: instance, commands, notes, reply and
``changed``.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_properties import PROPERTY_SETTINGS, Spec, workflows

from hephaestus._core._engine import Start, apply, apply_general, new_instance, start_new
from hephaestus._core._model import ParentLink

_PLAIN = st.dictionaries(
    st.text(min_size=1, max_size=5),
    st.none() | st.integers() | st.text(max_size=5) | st.lists(st.integers(), max_size=3),
    max_size=3,
)

_PARENTS = st.none() | st.builds(
    ParentLink,
    id=st.just("p::1"),
    step=st.just("alpha"),
    attempt=st.integers(1, 3),
    run=st.integers(0, 2),
)


@settings(PROPERTY_SETTINGS)
@given(
    workflows(),
    st.none() | _PLAIN,
    st.none() | _PLAIN,
    st.floats(0, 2e9, allow_nan=False),
    st.integers(0, 50),
    _PARENTS,
)
def test_start_new_equals_start_applied_by_the_general_path(
    spec: Spec,
    initial: dict[str, Any] | None,
    metadata: dict[str, Any] | None,
    now: float,
    stored_revision: int,
    parent: ParentLink | None,
) -> None:
    workflow = spec.workflow
    fresh = new_instance(
        workflow,
        "prop::1",
        initial=initial,
        metadata=metadata,
        now=now,
        previous_revision=stored_revision - 1,
        parent=parent,
    )
    general = apply_general(workflow, fresh, Start(), now)
    fast = start_new(
        workflow,
        "prop::1",
        initial=initial,
        metadata=metadata,
        now=now,
        stored_revision=stored_revision,
        parent=parent,
    )
    for other in (general, apply(workflow, fresh, Start(), now)):
        assert fast.changed == other.changed
        assert fast.instance == other.instance
        assert fast.commands == other.commands
        assert fast.notes == other.notes
        assert fast.reply == other.reply
    assert fast.instance.revision == stored_revision + 1
