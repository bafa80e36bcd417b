"""Snapshots leave out fields at their defaults, and decode to every field either way."""

from __future__ import annotations

import msgspec

import hephaestus as hx
from hephaestus._core._codec import decode_instance, encode_instance
from hephaestus._core._engine import Start, StepSuspended, apply, new_instance

WAIT = hx.WaitForEvent("go", key="approval")
WF = hx.Workflow(
    "approval", start=WAIT, transitions={(WAIT, "go"): hx.Done}, unique=hx.Unique("approval")
)


def waiting() -> hx.Instance:
    fresh = new_instance(WF, "approval::1", initial=None, metadata=None, now=1.0)
    started = apply(WF, fresh, Start(), 1.0).instance
    return apply(WF, started, StepSuspended(step="approval", attempt=1, timeout=None), 2.0).instance


def test_a_waiting_snapshot_stores_only_fields_that_differ_from_their_default() -> None:
    instance = waiting()
    stored = msgspec.msgpack.decode(encode_instance(instance))
    assert "failures" not in stored
    assert "inbox" not in stored
    assert "error" not in stored
    assert stored["waiting"] == {"approval": ["go"]}
    assert decode_instance(encode_instance(instance)) == instance


def test_a_snapshot_with_every_field_written_out_decodes_the_same() -> None:
    instance = waiting()
    every_field = msgspec.msgpack.encode(
        {name: getattr(instance, name) for name in instance.__struct_fields__}
    )
    assert len(every_field) > len(encode_instance(instance))
    assert decode_instance(every_field) == instance
