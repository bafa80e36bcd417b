"""FileStorage against real processes: SIGKILL storms, the lock, EFBIG, live readers.

These tests run child processes (``_storage_child.py``) and use real time on
purpose: the point is to kill a writer at arbitrary moments.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import trio

from hephaestus import FileStorage, StorageLocked
from hephaestus.storage._names import is_temp_name

from ._fs_samples import make_instance

CHILD = str(Path(__file__).with_name("_storage_child.py"))
ROUNDS = int(os.environ.get("HEPHAESTUS_KILL_ROUNDS", "50"))


class Child:
    """A child process whose stdout lines are collected as they arrive."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._buffer = b""
        self._seen = trio.Event()

    async def read_all(self) -> None:
        assert self.process.stdout is not None
        while chunk := await self.process.stdout.receive_some():
            self._buffer += chunk
            *complete, self._buffer = self._buffer.split(b"\n")
            self.lines.extend(line.decode() for line in complete)
            self._seen.set()
            self._seen = trio.Event()

    async def wait_for(self, line: str) -> None:
        with trio.fail_after(30):
            while line not in self.lines:
                await self._seen.wait()


async def start_child(nursery: trio.Nursery, *args: str) -> Child:
    process = await trio.lowlevel.open_process(
        [sys.executable, CHILD, *args], stdout=-1
    )  # subprocess.PIPE
    child = Child(process)
    nursery.start_soon(child.read_all)
    return child


def temp_files(path: Path) -> list[str]:
    return [n for n in os.listdir(path) if is_temp_name(n)]


@pytest.mark.slow
async def test_sigkill_storm_never_loses_an_acknowledged_write(store_path: Path) -> None:
    rng = random.Random(2024)
    acked: dict[str, int] = {}
    total_acks = rounds_with_temps = 0
    started = time.monotonic()
    reports: list[tuple[str, str]] = []

    def report(path: str, reason: str) -> None:
        reports.append((path, reason))

    for round_ in range(ROUNDS):
        async with trio.open_nursery() as nursery:
            child = await start_child(nursery, "storm", str(store_path), str(round_))
            await child.wait_for("ready")
            await trio.sleep(rng.uniform(0.005, 0.150))
            child.process.send_signal(signal.SIGKILL)
            await child.process.wait()
        for line in child.lines:
            if line.startswith("ack "):
                _, iid, text = line.split()
                acked[iid] = max(acked.get(iid, 0), int(text))
                total_acks += 1
        rounds_with_temps += bool(temp_files(store_path))
        async with FileStorage(store_path, on_quarantine=report) as s:
            assert reports == []  # a process crash never tears a snapshot
            assert temp_files(store_path) == []
            for iid, last in acked.items():
                got = await s.get(iid)
                assert got is not None, f"round {round_}: {iid} lost"
                assert got.revision >= last, f"round {round_}: {iid} went back"
    assert total_acks > ROUNDS  # the child really was writing when killed
    print(
        f"{ROUNDS} kills in {time.monotonic() - started:.1f}s, {total_acks} acknowledged "
        f"puts, {rounds_with_temps} kills left a temp file behind"
    )


async def test_a_second_process_gets_storage_locked_quickly(store_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        child = await start_child(nursery, "hold", str(store_path))
        await child.wait_for("locked")
        started = time.monotonic()
        with pytest.raises(StorageLocked, match=f"locked by process {child.process.pid}"):
            async with FileStorage(store_path):
                pass  # pragma: no cover
        assert time.monotonic() - started < 1.0
        async with FileStorage(store_path, read_only=True) as reader:  # readers still may
            assert await reader.query() == []
        child.process.send_signal(signal.SIGKILL)
        await child.process.wait()
    async with FileStorage(store_path):  # the kernel dropped the dead holder's lock
        pass


async def test_file_size_limit_gives_efbig_and_keeps_the_old_snapshot(store_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        child = await start_child(nursery, "efbig", str(store_path))
        await child.process.wait()
    assert child.lines == [f"efbig {errno.EFBIG}"]
    assert temp_files(store_path) == []
    async with FileStorage(store_path) as store:
        assert await store.get("orderid::abc-1") == make_instance(revision=1)


async def test_a_read_only_reader_never_sees_a_torn_snapshot(store_path: Path) -> None:
    reports: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    reads = 0
    async with trio.open_nursery() as nursery:
        child = await start_child(nursery, "storm", str(store_path), "7")
        await child.wait_for("ready")
        async with FileStorage(
            store_path, read_only=True, on_quarantine=lambda p, r: reports.append((p, r))
        ) as reader:
            deadline = trio.current_time() + 1.0
            while trio.current_time() < deadline:
                for instance in await reader.query():
                    assert instance.revision >= seen.get(instance.id, 0)
                    seen[instance.id] = instance.revision
                    reads += 1
                got = await reader.get("orderid::storm-00")
                if got is not None:
                    assert got.revision >= seen.get(got.id, 0)
        child.process.send_signal(signal.SIGKILL)
        await child.process.wait()
    assert reports == []
    assert reads > 0
    assert sum(line.startswith("ack ") for line in child.lines) > 0
