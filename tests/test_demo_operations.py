"""The demo: progress driven by telemetry, a crash announced as it happens, foreign stores."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx
from hephaestus._demo import (
    CRASH_AFTER,
    Progress,
    check_store,
    demo_run,
    order,
    strangers,
)
from hephaestus.cli import main


def test_progress_counts_follow_the_telemetry() -> None:
    progress = Progress("order")

    def event(name: str, iid: str, **metadata: Any) -> hx.TelemetryEvent:
        return hx.TelemetryEvent(name=name, instance_id=iid, workflow="order", metadata=metadata)

    progress(event("workflow.start", "o1"))
    progress(event("workflow.start", "o2"))
    assert progress.snapshot() == Counter({hx.Status.RUNNING: 2})
    progress(event("workflow.transition", "o1", status="waiting"))
    progress(event("workflow.transition", "o2", status="running"))  # no change
    assert progress.snapshot() == Counter({hx.Status.RUNNING: 1, hx.Status.WAITING: 1})
    progress(event("workflow.stop", "o1"))
    progress(event("workflow.exception", "o2"))
    progress(hx.TelemetryEvent(name="workflow.start", instance_id="x", workflow="other"))
    assert progress.snapshot() == Counter({hx.Status.COMPLETED: 1, hx.Status.FAILED: 1})
    seeded = Progress("order")
    seeded.seed([hx.Instance(id="o3", workflow="order", version=1, status=hx.Status.WAITING)])
    assert seeded.snapshot() == Counter({hx.Status.WAITING: 1})


async def test_progress_agrees_with_the_engine_at_every_moment(autojump_clock: Any) -> None:
    progress = Progress(order.name)
    disagreements: list[tuple[Counter[hx.Status], Counter[hx.Status]]] = []
    async with hx.open_engine(
        workflows=[order], clock=hx.testing.VirtualClock(), telemetry=progress
    ) as engine:
        ids = [await engine.start(order, f"p{i}", {"items": i % 3}) for i in range(12)]
        for _ in range(40):  # look every 0.1 s of virtual time, as the display does
            truth = Counter([(await engine.get(iid)).status for iid in ids])
            if progress.snapshot() != truth:
                disagreements.append((progress.snapshot(), truth))
            await trio.sleep(0.1)
        for iid in ids:
            await engine.wait(iid)
    assert disagreements == []
    assert progress.snapshot() == Counter({hx.Status.COMPLETED: 12})


class Recording:
    """A Reporter that keeps what it was told, with the trio time it was told."""

    interval = 0.1

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, tuple[Any, ...]]] = []

    def _keep(self, name: str, *args: Any) -> None:
        self.calls.append((name, trio.current_time(), args))

    def line(self, text: str) -> None:
        self._keep("line", text)

    def phase(self, title: str, total: int) -> None:
        self._keep("phase", title, total)

    def update(self, counts: Counter[hx.Status], elapsed: float) -> None:
        self._keep("update", Counter(counts), elapsed)

    def end_phase(self, outcome: str, counts: Counter[hx.Status], note: str) -> None:
        self._keep("end_phase", outcome, Counter(counts), note)

    def summary(self, title: str, rows: Sequence[tuple[str, str]], notes: Sequence[str]) -> None:
        self._keep("summary", title)

    def close(self) -> None:
        return None


def test_the_crash_comes_when_it_is_announced_and_every_order_finishes(tmp_path: Path) -> None:
    reporter = Recording()
    # The demo's FileStorage writes run in threads: with a threshold of 0 the clock jumps
    # whenever the run waits on the disk, and the progress loop spins through virtual time
    # (about 10^6 wake-ups, a minute of CPU). 5 ms of real idleness first keeps it honest.
    clock = trio.testing.MockClock(autojump_threshold=0.005)
    result = trio.run(demo_run, str(tmp_path / "store"), 300, reporter, clock=clock)
    assert result.ok
    assert len(result.instances) == 300
    [crash] = [c for c in reporter.calls if c[0] == "end_phase" and c[2][0] == "crashed"]
    _, at, (_, counts, note) = crash
    # Announced on time (a second in at the latest), whatever the number of orders...
    assert at <= CRASH_AFTER + 1e-6
    assert note.startswith(f"at {at:.1f}s (")
    # ... with the counts of that moment, and nothing reported for engine 1 after it.
    index = reporter.calls.index(crash)
    later = [c for c in reporter.calls[index + 1 :] if c[0] == "update"]
    engine2 = next(
        i for i, c in enumerate(reporter.calls) if c[0] == "phase" and c[2][0] == "engine 2"
    )
    assert all(reporter.calls.index(c) > engine2 for c in later)
    assert sum(counts.values()) <= 300
    lines = [c[2][0] for c in reporter.calls if c[0] == "line"]
    assert any(text.startswith("on disk after the crash: ") for text in lines)


# -- a store the demo did not make ----------------------------------------------------------


def _fill(store: Path, *instances: hx.Instance) -> None:
    async def fill() -> None:
        async with hx.FileStorage(store, durable=False) as storage:
            for instance in instances:
                await storage.put(instance)

    trio.run(fill)


FOREIGN = hx.Instance(
    id="bill::1", workflow="billing", version=2, status=hx.Status.WAITING, waiting={"x": ("go",)}
)
SAME_NAME = hx.Instance(
    id="order::a1",
    workflow="order",
    version=1,
    status=hx.Status.RUNNING,
    active=("charge",),  # the demo's order has no step "charge"
    attempts={"charge": 1},
)
OURS = hx.Instance(
    id="order::ab12-00001",
    workflow="order",
    version=1,
    status=hx.Status.WAITING,
    completed=("validate_order", "charge_payment", "reserve_inventory", "pack_order"),
    waiting={"await_delivery": ("delivered", "timeout")},
)


def test_strangers_are_instances_of_other_workflows_versions_or_steps() -> None:
    other_version = hx.Instance(id="order::v", workflow="order", version=2)
    assert strangers([FOREIGN, SAME_NAME, OURS, other_version]) == [
        FOREIGN,
        SAME_NAME,
        other_version,
    ]


@pytest.mark.parametrize(
    ("instances", "needle"),
    [
        ((FOREIGN, OURS), "holds 1 instance(s) the demo did not make (workflows: billing v2)"),
        ((SAME_NAME,), "the demo did not make (workflows: order v1)"),
    ],
)
def test_the_demo_refuses_another_applications_store(
    tmp_path: Path,
    instances: tuple[hx.Instance, ...],
    needle: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "theirs"
    _fill(store, *instances)
    before = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()}
    assert main(["demo", "--store", str(store), "--instances", "3"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("hephaestus: error: the store ")
    assert needle in line
    assert {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()} == before


def test_the_demo_refuses_a_directory_of_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    proc = subprocess.run(
        [sys.executable, "-m", "hephaestus", "demo", "--store", str(tmp_path), "--instances", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert "the directory is no FileStorage" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_demo_accepts_a_new_directory_and_its_own_store(tmp_path: Path) -> None:
    assert check_store(str(tmp_path / "new")) is None
    assert check_store(str(tmp_path)) is None  # empty
    store = tmp_path / "ours"
    _fill(store, OURS)
    assert check_store(str(store)) is None


def test_the_demo_checks_an_sqlite_store_the_same_way(tmp_path: Path) -> None:
    theirs, ours = tmp_path / "theirs.sqlite", tmp_path / "ours.sqlite"

    async def fill(path: Path, instance: hx.Instance) -> None:
        async with hx.SQLiteStorage(path, durable=False) as storage:
            await storage.put(instance)

    trio.run(fill, theirs, FOREIGN)
    trio.run(fill, ours, OURS)
    assert check_store(str(tmp_path / "new.sqlite"), "sqlite") is None
    assert check_store(str(ours), "sqlite") is None
    problem = check_store(str(theirs), "sqlite")
    assert problem is not None
    assert "the demo did not make (workflows: billing v2)" in problem


def test_the_demo_refuses_a_store_of_the_other_kind(tmp_path: Path) -> None:
    files = tmp_path / "files"
    _fill(files, OURS)
    problem = check_store(str(files), "sqlite")
    assert problem is not None
    assert "is a FileStorage store, not what --storage sqlite uses" in problem
