"""Kill -9 an engine running on FileStorage or SQLiteStorage at random moments; nothing is lost.

Round r runs a child engine (``_engine_child.py``) that recovers the store and
drives instances 0..10(r+1)-1 (start, then resume: each round adds new work),
and SIGKILLs it 5-150 ms after it is ready. After each kill the store is
checked: every snapshot decodes (nothing quarantined), every start and
resume the child acknowledged is in it. At the end a fresh engine in this
process recovers everything, finishes the work, and every instance completes
with the results a crash-free run gives.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import hephaestus as hx

from ._kill9_workflow import KILL9, drive, expected_results, instance_id

CHILD = str(Path(__file__).with_name("_engine_child.py"))
ROUNDS = int(os.environ.get("HEPHAESTUS_ENGINE_KILL_ROUNDS", "30"))
SQLITE_ROUNDS = int(os.environ.get("HEPHAESTUS_ENGINE_KILL_ROUNDS", "12"))
PER_ROUND = {"files": 10, "sqlite": 50}  # SQLite is faster: more work, so kills land mid-run


def open_store(kind: str, path: Path, **options: Any) -> hx.Storage:
    """The store the children use: ``path`` is a directory (files) or a file (sqlite)."""
    if kind == "sqlite":
        return hx.SQLiteStorage(path, **options)
    return hx.FileStorage(path, **options)


async def run_child(kind: str, path: Path, count: int, kill_after: float) -> list[str]:
    """Run one child until ``kill_after`` seconds after it is ready; return its lines."""
    process = await trio.lowlevel.open_process(
        [sys.executable, CHILD, kind, str(path), str(count)], stdout=-1
    )
    lines: list[str] = []
    ready = trio.Event()

    async def read() -> None:
        assert process.stdout is not None
        buffer = b""
        while chunk := await process.stdout.receive_some():
            *complete, buffer = (buffer + chunk).split(b"\n")
            lines.extend(line.decode() for line in complete)
            if "ready" in lines:
                ready.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            with trio.fail_after(60):
                await ready.wait()
            await trio.sleep(kill_after)
            process.send_signal(signal.SIGKILL)
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["files", "sqlite"])
async def test_engine_survives_sigkill_at_random_moments(store_path: Path, kind: str) -> None:
    rounds = SQLITE_ROUNDS if kind == "sqlite" else ROUNDS
    rng = random.Random(99)
    interrupted = 0
    started: set[str] = set()
    resumed: set[str] = set()
    reports: list[tuple[str, str]] = []

    def report(path: str, reason: str) -> None:
        reports.append((path, reason))

    began = time.monotonic()
    for round_ in range(rounds):
        lines = await run_child(
            kind, store_path, PER_ROUND[kind] * (round_ + 1), rng.uniform(0.005, 0.150)
        )
        interrupted += "all done" not in lines
        for line in lines:
            if line.startswith("ack start "):
                started.add(line.split()[-1])
            elif line.startswith("ack resume "):
                resumed.add(line.split()[-1])
        async with open_store(kind, store_path, read_only=True, on_quarantine=report) as store:
            stored = {i.id: i for i in await store.query()}
        assert reports == [], f"round {round_}: {reports}"
        assert started <= set(stored), f"round {round_}: lost {started - set(stored)}"
        for iid in resumed:
            n = int(iid.removeprefix("k::i"))
            assert f"go-{n}" in stored[iid].dedupe_keys, f"round {round_}: lost resume of {iid}"
    total = PER_ROUND[kind] * rounds
    assert len(started) >= rounds  # the children did real work before being killed
    assert interrupted >= rounds // 3  # and many kills landed while they worked

    async with hx.open_engine(workflows=[KILL9], storage=open_store(kind, store_path)) as engine:
        async with trio.open_nursery() as nursery:
            for n in range(total):
                nursery.start_soon(drive, engine, n, lambda line: None)
        for n in range(total):
            final = await engine.wait(instance_id(n))
            assert final.status == hx.Status.COMPLETED, final
            assert final.results == expected_results(n), final
    print(
        f"{rounds} engine kills ({kind}, {interrupted} mid-run) in "
        f"{time.monotonic() - began:.1f}s: {len(started)} starts and "
        f"{len(resumed)} resumes acknowledged by killed children, {total} instances completed"
    )
