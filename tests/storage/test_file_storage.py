"""FileStorage on disk: its files, hostile ids, leftovers, and quarantine of bad snapshots.

What every adapter does (round trips, queries, compare-and-set, locking,
read-only) is in test_storage_protocol.py, run against FileStorage too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio

from hephaestus import (
    FileStorage,
    Instance,
    Status,
    Storage,
)
from hephaestus._core._codec import encode_instance
from hephaestus.storage import _diskio
from hephaestus.storage._frame import encode_frame
from hephaestus.storage._lock import LOCK_NAME
from hephaestus.storage._names import snapshot_name, temp_name

from ._fs_samples import make_instance


def snap(store_path: Path, iid: str) -> Path:
    return store_path / snapshot_name(iid)


def write_raw(store_path: Path, iid: str, data: bytes) -> Path:
    path = snap(store_path, iid)
    path.write_bytes(data)
    return path


def quarantined(store_path: Path) -> list[str]:
    qdir = store_path / "quarantine"
    return sorted(p.name for p in qdir.iterdir()) if qdir.exists() else []


async def test_put_replaces(store_path: Path) -> None:
    async with FileStorage(store_path) as store:
        await store.put(make_instance(revision=1))
        await store.put(make_instance(revision=2, status=Status.COMPLETED))
        got = await store.get("orderid::abc-1")
        assert got is not None
        assert (got.revision, got.status) == (2, Status.COMPLETED)
    assert sorted(os.listdir(store_path)) == sorted([LOCK_NAME, snapshot_name("orderid::abc-1")])


async def _fill(store: Storage) -> None:
    await store.put(make_instance("orderid::a", workflow="order", status=Status.RUNNING))
    await store.put(make_instance("orderid::b", workflow="order", status=Status.COMPLETED))
    await store.put(make_instance("payid::c", workflow="payment", status=Status.WAITING))
    await store.put(make_instance("orderid::d", workflow="order", status=Status.WAITING))


async def test_delete_removes_the_file(store_path: Path) -> None:
    async with FileStorage(store_path) as store:
        await _fill(store)
        await store.delete("orderid::a")
    assert not snap(store_path, "orderid::a").exists()
    assert snap(store_path, "orderid::b").exists()


async def test_hostile_ids_stay_inside_the_store(tmp_path: Path) -> None:
    store_path = tmp_path / "deep" / "store"
    ids = ["../../escape", "/etc/passwd", "..", ".", "a/b", "ünï::cødé", "Case", "case", "x" * 600]
    async with FileStorage(store_path) as store:
        for n, iid in enumerate(ids):
            await store.put(make_instance(iid, revision=n + 1))
        with pytest.raises(ValueError, match="must not be empty"):
            await store.put(make_instance(""))
    assert sorted(os.listdir(tmp_path)) == ["deep"]
    assert sorted(os.listdir(tmp_path / "deep")) == ["store"]
    async with FileStorage(store_path) as store:
        for n, iid in enumerate(ids):
            got = await store.get(iid)
            assert got is not None
            assert (got.id, got.revision) == (iid, n + 1)


async def test_leftover_temp_files_are_removed_and_foreign_files_ignored(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with FileStorage(store_path) as store:
        await store.put(make_instance())
    name = snapshot_name("orderid::abc-1")
    leftover = store_path / temp_name(name, "0123456789abcdef")
    leftover.write_bytes(b"half a snap")
    foreign = ["README.txt", "notes.tmp", ".DS_Store", "backup.snap.bak"]
    for f in foreign:
        (store_path / f).write_bytes(b"not ours")
    (store_path / "subdir.snap").mkdir()
    with caplog.at_level(logging.INFO, logger="hephaestus.storage"):
        async with FileStorage(store_path) as store:
            assert await store.get("orderid::abc-1") == make_instance()
            assert len(await store.query()) == 1
    assert not leftover.exists()
    assert "removed leftover temp file" in caplog.text
    assert all((store_path / f).exists() for f in foreign)
    assert quarantined(store_path) == []


def _corruptions() -> dict[str, bytes]:
    good = encode_frame(encode_instance(make_instance("orderid::victim")))
    future = bytearray(good)
    future[4] = 99
    return {
        "empty file": b"",
        "truncated payload": good[:-5],
        "truncated header": good[:7],
        "checksum mismatch": good[:-1] + bytes([good[-1] ^ 0x10]),
        "bad magic": os.urandom(64),
        "newer than this release": bytes(future),
        "cannot decode": encode_frame(b"\x93\x01\x02"),
        "snapshot format 2 is newer": encode_frame(
            encode_instance(make_instance("orderid::victim", format=2))
        ),
        "does not match the instance id": encode_frame(
            encode_instance(make_instance("orderid::someone-else"))
        ),
    }


@pytest.mark.parametrize(("reason", "data"), list(_corruptions().items()))
async def test_bad_snapshots_are_quarantined_at_open(
    store_path: Path, reason: str, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with FileStorage(store_path) as store:
        await store.put(make_instance("orderid::fine"))
    bad = write_raw(store_path, "orderid::victim", data)
    reports: list[tuple[str, str]] = []
    with caplog.at_level(logging.WARNING, logger="hephaestus.storage"):
        async with FileStorage(
            store_path, on_quarantine=lambda p, r: reports.append((p, r))
        ) as store:
            assert await store.get("orderid::victim") is None
            assert [i.id for i in await store.query()] == ["orderid::fine"]
            await store.put(make_instance("orderid::victim", revision=1), expected_revision=0)
    assert len(reports) == 1
    path, message = reports[0]
    assert path == str(bad)
    assert reason in message
    assert "moved to" in message
    assert str(bad) in caplog.text
    assert reason in caplog.text
    moved = quarantined(store_path)
    assert len(moved) == 2  # the file and its .reason
    reason_file = next(n for n in moved if n.endswith(".reason"))
    assert reason in (store_path / "quarantine" / reason_file).read_text()
    snapshot_file = next(n for n in moved if not n.endswith(".reason"))
    assert (store_path / "quarantine" / snapshot_file).read_bytes() == data


async def test_corruption_after_open_is_quarantined_by_get_and_query(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reports: list[tuple[str, str]] = []
    async with FileStorage(store_path) as store:
        store.on_quarantine = lambda p, r: reports.append((p, r))
        await _fill(store)
        write_raw(store_path, "orderid::a", b"\x00" * 40)
        with caplog.at_level(logging.WARNING, logger="hephaestus.storage"):
            assert await store.get("orderid::a") is None
        assert await store.get("orderid::a") is None  # reported once
        assert len(reports) == 1
        assert "bad magic" in reports[0][1]
        write_raw(store_path, "orderid::b", b"HXSN")
        assert [i.id for i in await store.query(workflow="order")] == ["orderid::d"]
        assert len(reports) == 2
        snap(store_path, "orderid::d").unlink()  # vanished behind our back: absent
        assert await store.get("orderid::d") is None
        assert "vanished" in caplog.text
        assert [i.id for i in await store.query()] == ["payid::c"]
    assert len(quarantined(store_path)) == 4


async def test_a_raising_quarantine_handler_is_logged_and_ignored(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(path: str, reason: str) -> None:
        raise ZeroDivisionError

    os.makedirs(store_path)
    write_raw(store_path, "orderid::x", b"junk")
    with caplog.at_level(logging.WARNING, logger="hephaestus.storage"):
        async with FileStorage(store_path, on_quarantine=handler) as store:
            assert await store.query() == []
    assert "on_quarantine handler" in caplog.text


async def test_read_only_reports_bad_snapshots_but_leaves_them(store_path: Path) -> None:
    async with FileStorage(store_path) as store:
        await _fill(store)
        bad = write_raw(store_path, "orderid::a", b"HXSN\x01\x00")
        reports: list[str] = []
        async with FileStorage(
            store_path, read_only=True, on_quarantine=lambda p, r: reports.append(r)
        ) as reader:
            assert await reader.get("orderid::a") is None
            assert len(await reader.query()) == 3
        assert bad.exists()
        assert len(reports) == 2
        assert all("truncated header" in r and "left in place" in r for r in reports)


async def test_many_instances_reopen_quickly(store_path: Path) -> None:
    instances = [make_instance(f"orderid::i{n:05}", revision=n) for n in range(2000)]
    async with FileStorage(store_path, durable=False) as store, trio.open_nursery() as nursery:
        for instance in instances:
            nursery.start_soon(store.put, instance)
    async with FileStorage(store_path) as store:
        got: list[Instance] = await store.query()
        assert got == instances


async def test_a_quarantine_that_cannot_be_created_does_not_stop_open(store_path: Path) -> None:
    os.makedirs(store_path)
    (store_path / "quarantine").write_bytes(b"a file where the directory should be")
    write_raw(store_path, "orderid::x", b"junk")
    reports: list[str] = []
    async with FileStorage(store_path, on_quarantine=lambda p, r: reports.append(r)) as store:
        await store.put(make_instance("orderid::y"))
        assert [i.id for i in await store.query()] == ["orderid::y"]
    assert len(reports) == 1
    assert "could not move it to quarantine" in reports[0]


async def test_every_truncation_and_sampled_bit_flips_are_quarantined_at_open(
    store_path: Path,
) -> None:
    victim = make_instance("orderid::victim", metadata={"note": "some text"})
    good = encode_frame(encode_instance(victim))
    damaged = [good[:n] for n in range(len(good))]
    for bit in range(0, len(good) * 8, 11):
        flipped = bytearray(good)
        flipped[bit // 8] ^= 1 << (bit % 8)
        damaged.append(bytes(flipped))
    async with FileStorage(store_path, durable=False) as store:
        await store.put(make_instance("orderid::bystander"))
    reports: list[str] = []
    for data in damaged:
        write_raw(store_path, "orderid::victim", data)
        async with FileStorage(
            store_path, durable=False, on_quarantine=lambda p, r: reports.append(r)
        ) as store:
            assert await store.get("orderid::victim") is None
            assert [i.id for i in await store.query()] == ["orderid::bystander"]
    assert len(reports) == len(damaged)
    assert len(quarantined(store_path)) == 2 * len(damaged)


async def test_recovery_reads_each_snapshot_once(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instances = [
        make_instance(f"orderid::r{n:03}", status=Status.WAITING if n % 4 else Status.COMPLETED)
        for n in range(40)
    ]
    async with FileStorage(store_path, durable=False) as store:
        for instance in instances:
            await store.put(instance)
    reads: list[str] = []
    real = _diskio.read_snapshot

    def counting(directory: str, name: str, instance_id: str | None) -> Instance | None:
        reads.append(name)
        return real(directory, name, instance_id)

    monkeypatch.setattr(_diskio, "read_snapshot", counting)
    async with FileStorage(store_path) as store:  # open scan + recovery's query: one read each
        active = await store.query(status=[Status.WAITING, Status.RUNNING])
        assert active == [i for i in instances if i.status is Status.WAITING]
        assert sorted(reads) == sorted(set(reads))
        assert len(reads) == len(instances)
        await store.put(make_instance("orderid::r001", revision=2, status=Status.RUNNING))
        assert (await store.query(status=Status.RUNNING))[0].revision == 2  # later: from disk
        assert len(reads) == len(instances) + 1
