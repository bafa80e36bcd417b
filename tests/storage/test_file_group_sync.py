"""Group commit: concurrent durable writes share directory fsyncs, and never skip one."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest
import trio

from hephaestus import FileStorage
from hephaestus.storage._group_sync import GroupSync

from ._fs_samples import make_instance
from ._syscalls import Syscalls


def run_threads(n: int, target: object) -> list[BaseException | None]:
    outcomes: list[BaseException | None] = [None] * n
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        barrier.wait()
        try:
            target()  # type: ignore[operator]
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_concurrent_callers_share_flushes() -> None:
    arrived = 0
    everyone_in = threading.Event()
    lock = threading.Lock()

    def flush() -> None:  # the first flush lasts until every caller has arrived
        assert everyone_in.wait(10)

    group = GroupSync(flush)

    def call() -> None:
        nonlocal arrived
        with lock:
            arrived += 1
            if arrived == 20:
                everyone_in.set()
        group.sync()

    assert run_threads(20, call) == [None] * 20
    assert 1 <= group.flushes < 20


def test_a_flush_only_covers_calls_made_before_it_started() -> None:
    started = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def flush() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            started.set()
            release.wait()

    group = GroupSync(flush)
    first = threading.Thread(target=group.sync)
    first.start()
    assert started.wait(5), "the first flush never started"
    second = threading.Thread(target=group.sync)  # arrives while flush #1 runs
    second.start()  # whenever it looks, flush #1 started before it: it needs #2
    release.set()
    first.join()
    second.join()
    assert calls == [0, 1]  # the second caller needed a flush of its own


def test_a_failed_flush_fails_its_callers_and_every_later_one() -> None:
    results = iter([None, OSError(errno.EIO, "disk on fire")])

    def flush() -> None:
        outcome = next(results)
        if outcome is not None:
            raise outcome

    group = GroupSync(flush)
    group.sync()
    with pytest.raises(OSError, match=r"fsync #2 failed .*disk on fire") as info:
        group.sync()
    assert info.value.errno == errno.EIO
    with pytest.raises(OSError, match="fsync #2 failed"):
        group.sync()  # never retried
    assert group.flushes == 2
    assert isinstance(group.failure, OSError)


async def test_durable_puts_return_only_after_a_directory_fsync_that_followed_their_rename(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sys = Syscalls(monkeypatch, store_path)
    returned_at: dict[str, int] = {}
    async with FileStorage(store_path) as store:
        sys.arm(None)

        async def put(n: int) -> None:
            await store.put(make_instance(f"orderid::g{n}"))
            returned_at[f"g{n}"] = len(sys.trace)

        async with trio.open_nursery() as nursery:
            for n in range(40):
                nursery.start_soon(put, n)
        trace = list(sys.trace)
    fd_paths: dict[int, str] = {}
    dir_fsyncs: list[int] = []
    renamed: dict[str, int] = {}
    for i, entry in enumerate(trace):
        if entry[0] == "open":
            fd_paths[entry[2]] = entry[1]
        elif entry[0] == "fsync" and fd_paths[entry[1]] == str(store_path):
            dir_fsyncs.append(i)
        elif entry[0] == "replace":
            renamed[entry[2].rsplit("%3a%3a", 1)[1].removesuffix(".snap")] = i
    assert 1 <= len(dir_fsyncs) < 40  # shared
    assert sorted(renamed) == sorted(returned_at)
    for key, end in returned_at.items():
        covering = [i for i in dir_fsyncs if renamed[key] < i < end]
        assert covering, f"{key} returned before a directory fsync that followed its rename"
