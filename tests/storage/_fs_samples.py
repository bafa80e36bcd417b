"""Sample snapshots for the FileStorage tests (imported by the tests and the child scripts)."""

from __future__ import annotations

from typing import Any

from hephaestus import ErrorInfo, HistoryEntry, InboxEvent, Instance, Status, Timer


def make_instance(
    iid: str = "orderid::abc-1",
    *,
    revision: int = 1,
    workflow: str = "order",
    status: Status = Status.RUNNING,
    **fields: Any,
) -> Instance:
    """Return a small instance with the given id, revision, workflow and status."""
    return Instance(
        id=iid, workflow=workflow, version=1, status=status, revision=revision, **fields
    )


def varied_instances() -> list[Instance]:
    """Return instances that together use every field of the snapshot format."""
    return [
        Instance(id="orderid::minimal", workflow="order", version=1),
        Instance(
            id="orderid::ABC_def-123",
            workflow="order",
            version=3,
            status=Status.WAITING,
            initial={"item_count": 3, "price": 9.5, "tags": ["a", "b"], "raw": b"\x00\xff"},
            results={"validate": {"checked": True}, "charge": {"amount": 12, "note": None}},
            metadata={"customer": "c-1", "nested": {"deep": [1, 2, {"x": "y"}]}},
            active=("ship",),
            completed=("validate", "charge"),
            waiting={"approve": ("approved", "rejected", "timeout")},
            timers=(Timer(id="t1", kind="timeout", step="approve", deadline=1.7e9 + 0.25),),
            inbox=(InboxEvent(event="approved", payload={"by": "me"}, dedupe_key="k1", at=5.0),),
            history=(
                HistoryEntry(step="validate", event="valid", attempt=1, at=1.0),
                HistoryEntry(step="charge", event=None, attempt=1, at=2.0, error="boom"),
                HistoryEntry(step="charge", event="charged", attempt=2, at=3.0),
            ),
            created_at=1.0,
            updated_at=3.5,
            revision=7,
            attempts={"charge": 2},
            configs={"ship": {"carrier": "ups"}},
            fired={"ship": ("charge",)},
            dedupe_keys=("k0",),
            next_timer=2,
        ),
        Instance(
            id="k::v::0123abcd",
            workflow="payment",
            version=1,
            status=Status.FAILED,
            error=ErrorInfo(
                step="charge", type="ValueError", message="no ünïcødé money", attempts=3
            ),
            timers=(
                Timer(id="r1", kind="retry", step="charge", deadline=10.0),
                Timer(id="s1", kind="resume", step="wait", deadline=11.0),
            ),
            revision=12,
        ),
        Instance(
            id="orderid::6f1c2b1e-8f0a-4c1e-9a57-1d2c3b4a5f60",
            workflow="order",
            version=2,
            status=Status.CANCELLED,
            cancelled=True,
            cancel_reason="customer asked",
            revision=4,
        ),
        Instance(
            id="orderid::" + "Z" * 128,
            workflow="order",
            version=1,
            status=Status.COMPLETED,
            results={"big": {"blob": "x" * 100_000}},
            revision=2,
        ),
    ]
