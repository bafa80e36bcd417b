"""The core's fast paths give exactly what the general path gives.

Every transition of the random runs of ``test_engine_properties`` (random
workflows, outcomes, events, timers, crashes) is applied twice: by ``apply``,
which takes a fast path where one fits, and by ``apply_general``, which never
does. Instance, commands, notes, reply and ``changed`` must be equal.
"""

from __future__ import annotations

from collections import Counter
from unittest import mock

import test_engine_properties as engine_properties
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_properties import PROPERTY_SETTINGS, Spec, random_run, resolving_bound, workflows

import hephaestus as hx
from hephaestus._core import _engine
from hephaestus._core._engine import Input, Start, StepSucceeded, StepSuspended, Transition

TAKEN: Counter[str] = Counter()
"""How often each fast path was taken, over the whole session (see the last test)."""


def _same(fast: Transition, general: Transition) -> None:
    assert fast.changed == general.changed
    assert fast.instance == general.instance
    assert fast.commands == general.commands
    assert fast.notes == general.notes
    assert fast.reply == general.reply


def compared_apply(
    workflow: hx.Workflow, instance: hx.Instance, event: Input, now: float
) -> Transition:
    fast: Transition | None = None
    if isinstance(event, Start):
        fast = _engine._fast_start(workflow, instance, now)
    elif isinstance(event, StepSucceeded):
        fast = _engine._fast_succeeded(workflow, instance, event, now)
    elif isinstance(event, StepSuspended):
        fast = _engine._fast_suspended(workflow, instance, event, now)
    general = _engine.apply_general(workflow, instance, event, now)
    if fast is None:
        return general
    TAKEN[type(event).__name__] += 1
    _same(fast, general)
    _same(_engine.apply(workflow, instance, event, now), general)
    return fast


# Fast-path states (a lone step, no timers, no inbox; a suspend beside a running sibling)
# are a small share of random runs: draw more of them than the profile's default.
@settings(PROPERTY_SETTINGS, max_examples=max(200, settings().max_examples))
@given(workflows(), st.data())
def test_fast_paths_equal_the_general_path(spec: Spec, data: st.DataObject) -> None:
    with mock.patch.object(engine_properties, "apply", compared_apply):
        env = random_run(spec, data, max_moves=40)
        env.resolve(resolving_bound(spec))
    assert env.instance.status.is_terminal


def test_every_fast_path_was_exercised() -> None:
    # Runs after the property above in file order; a fast path never taken is untested.
    if not TAKEN:
        test_fast_paths_equal_the_general_path()
    assert TAKEN["Start"] > 0
    assert TAKEN["StepSucceeded"] > 0
    assert TAKEN["StepSuspended"] > 0
