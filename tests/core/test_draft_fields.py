"""The general path's working copy (``_Draft``) carries every field of ``Instance``.

``_Draft`` copies the fields it edits by hand, for speed (a loop over field
names costs about 1.5 us per transition, measured). This test is the one place
that knows the fields: a field added to ``Instance`` fails it until ``_Draft``
copies it in and writes it back, or it is listed as one a transition keeps.
"""

from __future__ import annotations

from typing import Any

import msgspec

import hephaestus as hx
from hephaestus._core._engine import _Draft, new_instance
from hephaestus._core._model import ChildLink, Instance

from .helpers import mk, workflow

EDITED_AS_LISTS = ("active", "completed", "timers", "inbox", "history")
EDITED_AS_DICT = ("waiting",)
SHARED = (
    "results",
    "metadata",
    "attempts",
    "failures",
    "configs",
    "fired",
    "dedupe_keys",
    "error",
    "cancelled",
    "cancel_reason",
    "next_timer",
    "children",
)
KEPT_OR_SET_ON_FINISH = (
    "id",
    "workflow",
    "version",
    "status",
    "initial",
    "created_at",
    "updated_at",
    "revision",
    "format",
    "graph",
    "parent",
    "sequence",
)


def test_every_instance_field_is_copied_or_knowingly_kept() -> None:
    listed = [*EDITED_AS_LISTS, *EDITED_AS_DICT, *SHARED, *KEPT_OR_SET_ON_FINISH]
    assert sorted(listed) == sorted(Instance.__struct_fields__)
    assert len(set(listed)) == len(listed)


def test_the_draft_copies_each_field_in_and_writes_it_back() -> None:
    a = mk("a")
    wf = workflow(a, {(a, "ok"): hx.Done})
    instance = new_instance(wf, "order::f", initial=None, metadata=None, now=1.0)
    draft = _Draft(wf, instance, 2.0)
    for name in (*EDITED_AS_LISTS, *EDITED_AS_DICT, *SHARED):
        copied = getattr(draft, name)
        if name in EDITED_AS_LISTS:
            copied = tuple(copied)
        assert copied == getattr(instance, name), name
    changed: dict[str, Any] = {
        "active": ["a"],
        "completed": ["a"],
        "timers": [hx.Timer(id="t1", kind="resume", step="a", deadline=5.0)],
        "inbox": [hx.InboxEvent(event="ok", at=1.0)],
        "history": [hx.HistoryEntry(step="a", event="ok", attempt=1, at=1.0)],
        "waiting": {"a": ("ok",)},
        "results": {"a": {}},
        "metadata": {"m": 1},
        "attempts": {"a": 1},
        "failures": {"a": 1},
        "configs": {"a": {"c": 1}},
        "fired": {"a": ("x",)},
        "dedupe_keys": ("k",),
        "error": hx.ErrorInfo(step="a", type="E", message="m", attempts=1),
        "cancelled": True,
        "cancel_reason": "r",
        "next_timer": 7,
        "children": {"a": ChildLink(id="c::x", workflow="c", version=1, attempt=1)},
    }
    assert sorted(changed) == sorted((*EDITED_AS_LISTS, *EDITED_AS_DICT, *SHARED))
    for name, value in changed.items():
        setattr(draft, name, value)
    snapshot = draft.snapshot()
    for name, value in changed.items():
        expected = tuple(value) if name in EDITED_AS_LISTS else value
        assert getattr(snapshot, name) == expected, name
    kept = msgspec.structs.replace(snapshot, **{n: getattr(instance, n) for n in changed})
    assert kept == instance
