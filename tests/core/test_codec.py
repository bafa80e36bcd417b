"""Snapshots: encode -> decode is the identity, bad bytes are CorruptSnapshot, old ones read."""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import hephaestus as hx
from hephaestus._core._codec import check_serialisable, decode_instance, encode_instance
from hephaestus._core._engine import RunStep, StepSuspended, TimerFired, apply
from hephaestus._core._model import FORMAT_VERSION

from .helpers import mk

FIXTURES = Path(__file__).parent / "fixtures"

# --- round trips -------------------------------------------------------------------------------

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
docs = st.dictionaries(st.text(max_size=6), plain, max_size=4)
keys = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)
events = st.text(min_size=1, max_size=6)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)

timers = st.builds(
    hx.Timer,
    id=st.from_regex(r"t[0-9]{1,3}", fullmatch=True),
    kind=st.sampled_from(["timeout", "resume", "retry"]),
    step=keys,
    deadline=times,
)
inbox = st.builds(
    hx.InboxEvent,
    event=events,
    payload=st.none() | docs,
    step=st.none() | keys,
    dedupe_key=st.none() | st.text(max_size=6),
    at=times,
)
history = st.builds(
    hx.HistoryEntry,
    step=keys,
    event=st.none() | events,
    attempt=st.integers(1, 9),
    at=times,
    error=st.none() | st.text(max_size=9),
)
errors = st.builds(
    hx.ErrorInfo, step=keys, type=st.text(max_size=9), message=st.text(), attempts=st.integers(1, 9)
)

instances = st.builds(
    hx.Instance,
    id=st.text(min_size=1, max_size=20),
    workflow=st.text(min_size=1, max_size=8),
    version=st.integers(1, 5),
    status=st.sampled_from(hx.Status),
    initial=docs,
    results=st.dictionaries(keys, docs, max_size=3),
    metadata=docs,
    active=st.lists(keys, max_size=3).map(tuple),
    completed=st.lists(keys, max_size=3).map(tuple),
    waiting=st.dictionaries(keys, st.lists(events, max_size=3).map(tuple), max_size=3),
    timers=st.lists(timers, max_size=3).map(tuple),
    inbox=st.lists(inbox, max_size=3).map(tuple),
    history=st.lists(history, max_size=4).map(tuple),
    error=st.none() | errors,
    created_at=times,
    updated_at=times,
    revision=st.integers(0, 2**40),
    attempts=st.dictionaries(keys, st.integers(1, 9), max_size=3),
    configs=st.dictionaries(keys, docs, max_size=2),
    fired=st.dictionaries(keys, st.lists(keys, max_size=3).map(tuple), max_size=3),
    dedupe_keys=st.lists(st.text(max_size=6), max_size=3).map(tuple),
    cancel_reason=st.none() | st.text(max_size=10),
    cancelled=st.booleans(),
    next_timer=st.integers(1, 1000),
)


@given(instances)
def test_encode_decode_is_the_identity(instance: hx.Instance) -> None:
    data = encode_instance(instance)
    assert isinstance(data, bytes)
    decoded = decode_instance(data)
    assert decoded == instance
    assert encode_instance(decoded) == data


def test_identity_keeps_types() -> None:
    instance = hx.Instance(
        id="order::1",
        workflow="order",
        version=1,
        status=hx.Status.WAITING,
        initial={"b": b"\x00\xff", "f": 1.5, "n": None, "l": [1, "x"], "d": {"k": True}},
        waiting={"w": ("go", "timeout")},
        completed=("a",),
        timers=(hx.Timer(id="t1", kind="timeout", step="w", deadline=12.5),),
    )
    decoded = decode_instance(encode_instance(instance))
    assert decoded == instance
    assert decoded.status is hx.Status.WAITING
    assert isinstance(decoded.waiting["w"], tuple)
    assert isinstance(decoded.completed, tuple)
    assert isinstance(decoded.timers[0], hx.Timer)
    assert decoded.initial["b"] == b"\x00\xff"
    assert isinstance(decoded.initial["b"], bytes)


def test_encoding_is_deterministic() -> None:
    instance = hx.Instance(id="order::1", workflow="order", version=1, initial={"x": 1})
    assert encode_instance(instance) == encode_instance(
        hx.Instance(id="order::1", workflow="order", version=1, initial={"x": 1})
    )


# --- corrupt and future snapshots --------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"garbage, not msgpack at all",
        msgspec.msgpack.encode(42),
        msgspec.msgpack.encode(["order::1", "order", 1]),
        msgspec.msgpack.encode({"workflow": "order", "version": 1}),  # no id
        msgspec.msgpack.encode({"id": "order::1", "workflow": "order", "version": "one"}),
        msgspec.msgpack.encode({"id": "x", "workflow": "w", "version": 1, "status": "exploded"}),
        msgspec.msgpack.encode(
            {"id": "x", "workflow": "w", "version": 1, "timers": [{"id": "t1"}]}
        ),
    ],
)
def test_garbage_is_corrupt_snapshot(data: bytes) -> None:
    with pytest.raises(hx.CorruptSnapshot, match="cannot decode snapshot"):
        decode_instance(data)


def test_truncated_snapshot_is_corrupt() -> None:
    data = (FIXTURES / "snapshot-format1-running.msgpack").read_bytes()
    for cut in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(hx.CorruptSnapshot):
            decode_instance(data[:cut])


def test_future_format_is_corrupt_snapshot() -> None:
    future = hx.Instance(id="order::1", workflow="order", version=1, format=FORMAT_VERSION + 1)
    with pytest.raises(hx.CorruptSnapshot, match="upgrade") as info:
        decode_instance(encode_instance(future))
    assert str(FORMAT_VERSION + 1) in str(info.value)
    current = hx.Instance(id="order::1", workflow="order", version=1)
    assert current.format == FORMAT_VERSION
    assert decode_instance(encode_instance(current)).format == FORMAT_VERSION


def test_unknown_fields_are_ignored_and_missing_ones_defaulted() -> None:
    """Forward and backward compatibility within one format version."""
    data = msgspec.msgpack.encode(
        {
            "id": "order::1",
            "workflow": "order",
            "version": 1,
            "status": "running",
            "field_from_the_future": {"x": 1},
            "format": 1,
        }
    )
    instance = decode_instance(data)
    assert instance.status is hx.Status.RUNNING
    assert instance.revision == 0
    assert instance.inbox == ()
    assert instance.attempts == {}
    assert instance.next_timer == 1


# --- stored fixtures: snapshots written by an earlier release -----------------------------------


def fixture_workflow() -> hx.Workflow:
    """The workflow the fixtures were written with (see the test below for how)."""
    a, wait, c, ship = (
        mk("a"),
        mk("wait", "approved", "timeout"),
        mk("c", "go", "timeout"),
        mk("ship"),
    )
    b = mk("b", retry=hx.Retry(max_attempts=3, initial=2.0))
    return hx.Workflow(
        "order",
        start=a,
        unique=hx.Unique("orderid"),
        version=2,
        transitions={
            (a, "ok"): [hx.Target(wait, {"region": "eu"}), b, c],
            (wait, "approved"): ship,
            (wait, "timeout"): hx.Done,
            (b, "ok"): ship,
            (c, "go"): ship,
            (c, "timeout"): hx.Done,
            (ship, "ok"): hx.Done,
        },
    )


RUNNING = hx.Instance(
    id="orderid::abc123",
    workflow="order",
    version=2,
    status=hx.Status.RUNNING,
    initial={
        "item_count": 3,
        "sku": "X-1",
        "price": 9.5,
        "tags": ["a", "b"],
        "raw": b"\x00\x01",
        "gift": None,
        "rush": True,
    },
    results={"a": {"checked": True, "nested": {"k": [1, 2.5, "x"]}}},
    metadata={"trace": "abc"},
    active=("wait",),
    completed=("a",),
    waiting={"c": ("go", "timeout")},
    timers=(
        hx.Timer(id="t1", kind="timeout", step="c", deadline=1700000301.75),
        hx.Timer(id="t2", kind="retry", step="b", deadline=1700000003.75),
        hx.Timer(id="t3", kind="resume", step="wait", deadline=1700000061.75),
    ),
    inbox=(
        hx.InboxEvent(
            event="approved", payload={"by": "ann"}, step=None, dedupe_key="evt-1", at=1700000001.5
        ),
    ),
    history=(
        hx.HistoryEntry(step="a", event="ok", attempt=1, at=1700000001.5, error=None),
        hx.HistoryEntry(step="b", event=None, attempt=1, at=1700000001.75, error="ConnectionError"),
    ),
    error=None,
    created_at=1700000000.0,
    updated_at=1700000001.75,
    revision=7,
    attempts={"a": 1, "b": 1, "c": 1, "wait": 1},
    configs={"wait": {"region": "eu"}},
    fired={"wait": ("a",), "b": ("a",), "c": ("a",)},
    dedupe_keys=("evt-1",),
    cancel_reason=None,
    cancelled=False,
    next_timer=4,
    format=1,
)

FAILED = hx.Instance(
    id="orderid::def456",
    workflow="order",
    version=2,
    status=hx.Status.FAILED,
    history=(
        hx.HistoryEntry(step="a", event=None, attempt=1, at=1700000100.0, error="ValueError"),
    ),
    error=hx.ErrorInfo(step="a", type="ValueError", message="bad sku", attempts=1),
    created_at=1700000100.0,
    updated_at=1700000100.0,
    revision=3,
    attempts={"a": 1},
    next_timer=1,
    format=1,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("snapshot-format1-running.msgpack", RUNNING), ("snapshot-format1-failed.msgpack", FAILED)],
)
def test_stored_fixture_still_decodes(name: str, expected: hx.Instance) -> None:
    """These bytes were written by format 1 and are committed: never regenerate them.

    A schema change that cannot read them breaks every store in the field.
    """
    decoded = decode_instance((FIXTURES / name).read_bytes())
    assert decoded == expected


def test_stored_fixture_still_drives_the_engine() -> None:
    wf = fixture_workflow()
    instance = decode_instance((FIXTURES / "snapshot-format1-running.msgpack").read_bytes())
    # "wait" suspends: the queued "approved" is delivered; "ship" still waits for b and c.
    t = apply(wf, instance, StepSuspended(step="wait", attempt=1, timeout=None), 1700000002.0)
    assert t.instance.revision == 8
    assert t.instance.inbox == ()
    assert t.instance.results["wait"] == {"by": "ann"}
    assert t.commands[0] == DisarmTimerOf("t3")
    t = apply(wf, t.instance, TimerFired(timer_id="t2"), 1700000004.0)
    assert t.commands == (RunStep(step="b", attempt=2),)


def DisarmTimerOf(timer_id: str) -> Any:  # noqa: N802 - reads as the command it builds
    from hephaestus._core._engine import DisarmTimer

    return DisarmTimer(timer_id=timer_id)


# --- what may be stored ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [None, {}, {"a": 1, "b": [1, 2.0, "x", None, True, b"x"], "c": {"d": {}}}]
)
def test_serialisable_values(value: Any) -> None:
    check_serialisable(value, "results of step 'a'")


def self_referencing() -> dict[str, Any]:
    loop: list[Any] = []
    loop.append(loop)
    return {"loop": loop}


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ([1, 2], "must be a dict"),
        ("text", "must be a dict"),
        ({1: "int key"}, "not msgpack-serialisable"),
        ({"o": object()}, "not msgpack-serialisable"),
        # API.md: str keys; str, int, float, bool, None, list, dict, bytes. Anything else
        # would come back from a snapshot as something else (a list, a str...).
        ({"s": {1, 2}}, "['s'] is a set"),
        ({"t": [1, (2, 3)]}, "['t'][1] is a tuple"),
        ({"n": {2: 3}}, "key 2 at ['n'] is not a str"),
        ({"when": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)}, "datetime"),
        ({"id": uuid.UUID(int=1)}, "UUID"),
        ({"x": 2**70}, "not msgpack-serialisable"),
        (self_referencing(), "not msgpack-serialisable"),
    ],
)
def test_unserialisable_values_name_what(value: Any, needle: str) -> None:
    with pytest.raises(hx.InvalidResult, match="results of step 'a'") as info:
        check_serialisable(value, "results of step 'a'")
    assert isinstance(info.value, TypeError)
    assert needle in str(info.value)
    assert "str keys" in str(info.value)


@given(docs)
def test_whatever_passes_the_check_is_stored_as_it_is(value: dict[str, Any]) -> None:
    check_serialisable(value, "results")
    instance = hx.Instance(id="order::1", workflow="w", version=1, results={"a": value})
    assert decode_instance(encode_instance(instance)) == instance
