"""Snapshots written by earlier releases still read the same (schema evolution).

``fixtures/`` holds stores written by released formats. Never edit or
regenerate a fixture: when the format changes, add a new one next to it and
keep testing the old ones. ``python test_file_format_fixtures.py`` writes the
fixture of the current format into ``fixtures/`` (for a new format only).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import trio

from hephaestus import (
    ErrorInfo,
    FileStorage,
    HistoryEntry,
    InboxEvent,
    Instance,
    Status,
    Timer,
)

FIXTURES = Path(__file__).with_name("fixtures")

FRAME1_FORMAT1 = Instance(
    id="orderid::Fixture_v1-frame1",
    workflow="order",
    version=2,
    status=Status.FAILED,
    initial={"item_count": 3, "price": 9.5, "raw": b"\x00\x01", "tags": ["a"]},
    results={"validate": {"checked": True}},
    metadata={"customer": "c-1"},
    active=(),
    completed=("validate",),
    waiting={"approve": ("approved", "timeout")},
    timers=(Timer(id="t1", kind="retry", step="charge", deadline=1700000000.5),),
    inbox=(InboxEvent(event="approved", payload={"by": "x"}, dedupe_key="d1", at=2.0),),
    history=(
        HistoryEntry(step="validate", event="valid", attempt=1, at=1.0),
        HistoryEntry(step="charge", event=None, attempt=3, at=3.0, error="ValueError: no"),
    ),
    error=ErrorInfo(step="charge", type="ValueError", message="no", attempts=3),
    created_at=1.0,
    updated_at=3.0,
    revision=9,
    attempts={"charge": 3},
    configs={"charge": {"mode": "card"}},
    fired={"charge": ("validate",)},
    dedupe_keys=("d0",),
    cancel_reason=None,
    cancelled=False,
    next_timer=2,
    format=1,
)


async def test_frame1_format1_store_reads_back(tmp_path: Path) -> None:
    store_path = tmp_path / "store"
    shutil.copytree(FIXTURES / "frame1-format1", store_path)
    reports: list[str] = []
    async with FileStorage(store_path, on_quarantine=lambda p, r: reports.append(r)) as store:
        assert await store.query() == [FRAME1_FORMAT1]
    assert reports == []


def write_current_fixture() -> None:
    """Write the fixture of the current format (run by hand, for a new format only)."""
    target = FIXTURES / "frame1-format1"

    async def write() -> None:
        async with FileStorage(target) as store:
            await store.put(FRAME1_FORMAT1)

    trio.run(write)
    (target / "hephaestus.lock").unlink()


if __name__ == "__main__":
    write_current_fixture()
