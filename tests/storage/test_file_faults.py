"""Fault injection at every os call of a write: the error surfaces, nothing is torn.

For each n, the n-th call of a put (or delete) fails, before or after it ran,
once or from then on. After each failure: the error reached the caller, no
temp file is left, a re-read gives the old snapshot (or the new one, when the
rename had already happened), and the store keeps working, or, after a failed
directory fsync, refuses writes until it is reopened.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hephaestus import FileStorage
from hephaestus.storage._names import is_temp_name

from ._fs_samples import make_instance
from ._syscalls import Mode, Syscalls

IID = "orderid::abc-1"


def leftovers(store_path: Path) -> list[str]:
    return [n for n in os.listdir(store_path) if is_temp_name(n)]


async def count_calls(store_path: Path, sys: Syscalls, *, durable: bool) -> list[str]:
    async with FileStorage(store_path, durable=durable) as store:
        await store.put(make_instance(IID, revision=1))
        sys.arm(None)
        await store.put(make_instance(IID, revision=2))
        return list(sys.names)


@pytest.mark.parametrize("durable", [True, False])
async def test_the_write_sequence(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    sys = Syscalls(monkeypatch, store_path)
    names = await count_calls(store_path, sys, durable=durable)
    if durable:
        assert names == ["open", "write", "fsync", "close", "replace", "open", "fsync", "close"]
    else:
        assert names == ["open", "write", "close", "replace"]


def _cases() -> list[tuple[bool, int, Mode, bool]]:
    cases: list[tuple[bool, int, Mode, bool]] = []
    for durable, calls in ((True, 8), (False, 4)):
        for n in range(1, calls + 1):
            for mode in ("before", "after"):
                for persistent in (False, True):
                    cases.append((durable, n, mode, persistent))
        cases.append((durable, 2, "short", False))
    return cases


@pytest.mark.parametrize(("durable", "n", "mode", "persistent"), _cases())
async def test_put_fails_cleanly_at_every_call(
    store_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    durable: bool,
    n: int,
    mode: Mode,
    persistent: bool,
) -> None:
    sys = Syscalls(monkeypatch, store_path)
    renamed_at = 5 if durable else 4  # the call number of os.replace
    async with FileStorage(store_path, durable=durable) as store:
        await store.put(make_instance(IID, revision=1))
        sys.arm(n, mode, persistent=persistent)
        with pytest.raises(OSError, match=r"injected|no space") as info:
            await store.put(make_instance(IID, revision=2))
        assert info.value.errno in (errno.EIO, errno.ENOSPC)
        sys.arm(None)
        renamed = n > renamed_at or (n == renamed_at and mode == "after")
        if not persistent:  # the cleanup could run: no temp file left
            assert leftovers(store_path) == []
        got = await store.get(IID)
        assert got is not None
        assert got.revision == (2 if renamed else 1)
        dir_sync_failed = durable and n > renamed_at
        if dir_sync_failed:
            with pytest.raises(OSError, match="accepts no more writes"):
                await store.put(make_instance(IID, revision=3), expected_revision=2)
        else:  # the index agrees with the disk, and the store goes on
            await store.put(make_instance(IID, revision=3), expected_revision=got.revision)
    async with FileStorage(store_path, durable=durable) as store:  # reopen: clean, consistent
        assert leftovers(store_path) == []
        got = await store.get(IID)
        assert got is not None
        assert got.revision == (2 if dir_sync_failed else 3)
        await store.put(make_instance(IID, revision=4), expected_revision=got.revision)


@pytest.mark.parametrize("mode", ["before", "after"])
async def test_delete_failure_surfaces(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, mode: Mode
) -> None:
    sys = Syscalls(monkeypatch, store_path)
    async with FileStorage(store_path) as store:
        await store.put(make_instance(IID, revision=1))
        sys.arm(1, mode)
        with pytest.raises(OSError, match="injected"):
            await store.delete(IID)
        sys.arm(None)
        got = await store.get(IID)
        assert (got is None) == (mode == "after")
        await store.delete(IID)
        assert await store.get(IID) is None


async def test_a_new_store_survives_a_failed_first_write(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sys = Syscalls(monkeypatch, store_path)
    async with FileStorage(store_path) as store:
        sys.arm(3, "before")  # the file fsync
        with pytest.raises(OSError, match="fsync"):
            await store.put(make_instance(IID, revision=1))
        sys.arm(None)
        assert await store.get(IID) is None
        assert await store.query() == []
        await store.put(make_instance(IID, revision=1), expected_revision=0)


async def test_permission_denied_surfaces(store_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    async with FileStorage(store_path) as store:
        await store.put(make_instance(IID, revision=1))
        os.chmod(store.path, 0o500)
        try:
            with pytest.raises(PermissionError):
                await store.put(make_instance(IID, revision=2))
        finally:
            os.chmod(store.path, 0o700)
        got = await store.get(IID)
        assert got is not None
        assert got.revision == 1
