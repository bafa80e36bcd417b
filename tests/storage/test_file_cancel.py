"""Cancellation and closing while a write is on disk: the store stays consistent."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from hephaestus import FileStorage

from ._fs_samples import make_instance

IID = "orderid::abc-1"


class BlockedFsync:
    """Replaces os.fsync with one that waits for ``release`` (in the worker thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._real = os.fsync
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        self.entered.set()
        assert self.release.wait(10)
        self._real(fd)


async def test_a_cancelled_put_finishes_its_disk_work_and_the_index_follows(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FileStorage(store_path) as store:
        await store.put(make_instance(IID, revision=1))
        fsync = BlockedFsync(monkeypatch)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.put, make_instance(IID, revision=2))
                await trio.to_thread.run_sync(fsync.entered.wait)
                scope.cancel()
                fsync.release.set()
        got = await store.get(IID)
        assert got is not None
        assert got.revision == 2  # the write could not be interrupted: it happened
        await store.put(make_instance(IID, revision=3), expected_revision=2)


async def test_close_waits_for_writes_in_progress(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStorage(store_path)
    await store.aopen()
    fsync = BlockedFsync(monkeypatch)
    events: list[str] = []

    async def put() -> None:
        await store.put(make_instance(IID, revision=1))
        events.append("put done")

    async def close() -> None:
        await store.aclose()
        events.append("closed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put)
        await trio.to_thread.run_sync(fsync.entered.wait)
        nursery.start_soon(close)
        await trio.testing.wait_all_tasks_blocked()
        assert events == []
        with pytest.raises(RuntimeError, match="not open"):
            await store.put(make_instance("orderid::late"))  # closing: no new writes
        fsync.release.set()
    assert events == ["put done", "closed"]
    async with FileStorage(store_path) as reopened:  # the lock was released
        assert await reopened.get(IID) == make_instance(IID, revision=1)
