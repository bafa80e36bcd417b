"""The commands that change a store: cancel, retry, prune; and list --limit, --version.

Run through the real entry point: ``main([...])`` in process, and ``python -m
hephaestus`` in a subprocess. A store "held by an engine" is a FileStorage
opened by this test process, which is exactly what an engine holds.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path

import pytest
import trio

import hephaestus as hx
from hephaestus.cli import main, natural_key, parse_duration

DAY = 86_400.0
WAITING = hx.Status.WAITING


def hx_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hephaestus *args`` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "hephaestus", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=60,
        check=False,
    )


def one_line_error(err: str, *needles: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hephaestus: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


class Shop:
    """begin -> [pay (fails while ``broken``), ship] -> join; logs every step run."""

    def __init__(self) -> None:
        self.broken = True
        self.runs: list[tuple[str, int]] = []
        self.shipped = trio.Event()

        @hx.step(events=("ok",))
        async def begin(ctx: hx.StepContext) -> hx.StepResult:
            self.runs.append(("begin", ctx.attempt))
            return hx.Emit("ok", {"n": 3})

        @hx.step(events=("ok",))
        async def pay(ctx: hx.StepContext) -> hx.StepResult:
            self.runs.append(("pay", ctx.attempt))
            if "ship" not in ctx.results:
                await self.shipped.wait()  # fail only once ship has completed: no race
            if self.broken:
                raise RuntimeError("card gateway is down")
            return hx.Emit("ok", {"paid": True})

        @hx.step(events=("ok",))
        async def ship(ctx: hx.StepContext) -> hx.StepResult:
            self.runs.append(("ship", ctx.attempt))
            self.shipped.set()
            return hx.Emit("ok", {"parcel": 1})

        @hx.step(events=("ok",))
        async def join(ctx: hx.StepContext) -> hx.StepResult:
            self.runs.append(("join", ctx.attempt))
            return "ok"

        park = hx.WaitForEvent("go", key="park")

        @hx.step(events=("ok", "park"))
        async def route(ctx: hx.StepContext) -> hx.StepResult:
            return "park" if ctx.initial.get("park") else "ok"

        self.workflow = hx.Workflow(
            "shop",
            start=begin,
            transitions={
                (begin, "ok"): [pay, ship],
                (pay, "ok"): join,
                (ship, "ok"): join,
                (join, "ok"): route,
                (route, "ok"): hx.Done,
                (route, "park"): park,
                (park, "go"): hx.Done,
            },
            unique=hx.Unique("shop"),
        )

    def run(self, store: Path, *values: str, park: bool = False) -> list[hx.Instance]:
        """Start ``values`` (unless stored), then run the store until each settles."""

        async def go() -> list[hx.Instance]:
            self.shipped = trio.Event()
            settled: dict[str, trio.Event] = defaultdict(trio.Event)

            def seen(event: hx.TelemetryEvent) -> None:
                status = event.metadata.get("status")
                if event.instance_id and status in ("waiting", "completed", "failed", "cancelled"):
                    settled[event.instance_id].set()

            async with hx.open_engine(
                workflows=[self.workflow],
                storage=hx.FileStorage(store, durable=False),
                telemetry=seen,
            ) as engine:
                ids = []
                for value in values:
                    iid = f"shop::{value}"
                    try:
                        await engine.get(iid)
                    except hx.InstanceNotFound:
                        iid = await engine.start(self.workflow, value, {"park": park})
                    ids.append(iid)
                out = []
                for iid in ids:
                    instance = await engine.get(iid)
                    if not instance.status.is_terminal and instance.status is not WAITING:
                        await settled[iid].wait()
                        instance = await engine.get(iid)
                    out.append(instance)
                return out

        return trio.run(go)


def read(store: Path, instance_id: str) -> hx.Instance | None:
    async def get() -> hx.Instance | None:
        async with hx.FileStorage(store, read_only=True) as storage:
            return await storage.get(instance_id)

    return trio.run(get)


def snapshot_bytes(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.glob("*.snap"))}


# -- retry --------------------------------------------------------------------------------


def test_retry_from_the_shell_then_an_engine_completes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "state"
    shop = Shop()
    [failed] = shop.run(store, "a1")
    assert failed.status is hx.Status.FAILED
    assert sorted(shop.runs) == [("begin", 1), ("pay", 1), ("ship", 1)]

    assert main(["retry", "--store", str(store), "shop::a1"]) == 0
    out, err = capsys.readouterr()
    assert out == "retried shop::a1: pay will run again when an engine next opens this store\n"
    assert err == ""
    stored = read(store, "shop::a1")
    assert stored is not None
    assert stored.status is hx.Status.RUNNING
    assert stored.active == ("pay",)
    assert stored.revision == failed.revision + 1

    shop.broken = False
    shop.runs.clear()
    [final] = shop.run(store, "a1")
    assert final.status is hx.Status.COMPLETED
    # The failed step ran again (attempt 2 was persisted by the CLI, the engine's
    # recovery runs it as attempt 3); nothing that had completed ran again.
    assert shop.runs == [("pay", 3), ("join", 1)]
    assert final.results["pay"] == {"paid": True}
    assert final.history[: len(failed.history)] == failed.history

    assert main(["show", "--store", str(store), "shop::a1"]) == 0
    assert "status    completed" in capsys.readouterr().out


def test_retry_of_an_instance_that_has_not_failed_is_rejected_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "state"
    shop = Shop()
    shop.broken = False
    [done] = shop.run(store, "c1")
    assert done.status is hx.Status.COMPLETED
    before = snapshot_bytes(store)
    assert main(["retry", "--store", str(store), "shop::c1"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    one_line_error(err, "EventRejected", "is completed; only a failed instance can be retried")
    assert snapshot_bytes(store) == before


# -- cancel -------------------------------------------------------------------------------


def test_cancel_from_the_shell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "state"
    shop = Shop()
    shop.broken = False
    [parked, done] = shop.run(store, "w1", park=True) + shop.run(store, "w2")
    assert parked.status is hx.Status.WAITING
    assert main(["cancel", "--store", str(store), "shop::w1", "--reason", "customer left"]) == 0
    assert capsys.readouterr().out == "cancelled shop::w1 (it was waiting)\n"
    stored = read(store, "shop::w1")
    assert stored is not None
    assert stored.status is hx.Status.CANCELLED
    assert stored.cancel_reason == "customer left"
    assert stored.waiting == {}
    assert main(["cancel", "--store", str(store), "shop::w1"]) == 0  # idempotent
    assert capsys.readouterr().out == "shop::w1 was already cancelled\n"
    before = snapshot_bytes(store)
    assert main(["cancel", "--store", str(store), done.id]) == 1
    one_line_error(capsys.readouterr().err, "EventRejected", "it is completed")
    assert snapshot_bytes(store) == before
    # The next engine leaves the cancelled instance alone.
    assert shop.run(store, "w1")[0].status is hx.Status.CANCELLED


@pytest.mark.parametrize("command", ["list", "show", "cancel"])
def test_a_command_leaves_the_storage_loggers_level_as_it_was(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "state"
    shop = Shop()
    shop.broken = False
    shop.run(store, "w1", park=True)
    storage_log = logging.getLogger("hephaestus.storage")
    storage_log.setLevel(logging.INFO)
    try:
        ids = [] if command == "list" else ["shop::w1"]
        assert main([command, "--store", str(store), *ids]) == 0
        assert storage_log.level == logging.INFO
    finally:
        storage_log.setLevel(logging.NOTSET)


# -- prune --------------------------------------------------------------------------------


def _aged_store(store: Path) -> dict[str, hx.Status]:
    """Snapshots updated 10 days ago and 1 hour ago, of every terminal status and one active."""
    now = time.time()
    made: dict[str, hx.Status] = {}

    async def fill() -> None:
        async with hx.FileStorage(store, durable=False) as storage:
            for age, tag in ((10 * DAY, "old"), (3600.0, "new")):
                for status in (*hx.Status,):
                    instance = hx.Instance(
                        id=f"shop::{tag}-{status.value}",
                        workflow="shop",
                        version=1,
                        status=status,
                        created_at=now - age,
                        updated_at=now - age,
                        revision=1,
                    )
                    await storage.put(instance)
                    made[instance.id] = status

    trio.run(fill)
    return made


def test_prune_deletes_exactly_the_finished_instances_older_than_the_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "state"
    made = _aged_store(store)
    assert main(["prune", "--store", str(store), "--older-than", "7d"]) == 0
    assert capsys.readouterr().out == (
        "pruned 3 completed/failed/cancelled instances last updated more than 7d ago\n"
    )
    left = {i: s for i, s in made.items() if read(store, i) is not None}
    gone = set(made) - set(left)
    assert gone == {"shop::old-completed", "shop::old-failed", "shop::old-cancelled"}
    assert {"shop::old-pending", "shop::old-running", "shop::old-waiting"} <= set(left)

    assert main(["prune", "--store", str(store), "--older-than", "30m", "--status", "failed"]) == 0
    assert capsys.readouterr().out == "pruned 1 failed instance last updated more than 30m ago\n"
    assert read(store, "shop::new-failed") is None
    assert read(store, "shop::new-completed") is not None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("15m", 900.0), ("2h", 7200.0), ("7d", 604_800.0), ("1w", 604_800.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration("1.5h") == 5400.0


@pytest.mark.parametrize("bad", ["7", "7x", "d7", "-1d", "", "7 days", "1e3s"])
def test_a_bad_duration_is_a_one_line_error(
    tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "state"
    _aged_store(store)
    before = snapshot_bytes(store)
    assert main(["prune", "--store", str(store), f"--older-than={bad}"]) == 1
    one_line_error(capsys.readouterr().err, "invalid duration", "30s, 15m, 2h, 7d")
    assert snapshot_bytes(store) == before


def test_prune_of_an_active_status_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "state"
    _aged_store(store)
    args = ["prune", "--store", str(store), "--older-than", "1s", "--status", "waiting"]
    assert main(args) == 1
    one_line_error(capsys.readouterr().err, "prune deletes only finished instances")


# -- every changing command: a held store, a bad id, a missing store ------------------------

COMMANDS = {
    "cancel": ["cancel", "--store", "{store}", "shop::old-waiting"],
    "retry": ["retry", "--store", "{store}", "shop::old-failed"],
    "prune": ["prune", "--store", "{store}", "--older-than", "7d"],
}


def _args(command: str, store: Path) -> list[str]:
    return [a.replace("{store}", str(store)) for a in COMMANDS[command]]


@pytest.mark.parametrize("command", sorted(COMMANDS))
async def test_a_store_held_by_an_engine_is_refused_naming_the_holder(
    tmp_path: Path, command: str
) -> None:
    store = tmp_path / "state"
    await trio.to_thread.run_sync(_aged_store, store)
    before = snapshot_bytes(store)
    async with hx.open_engine(workflows=[], storage=hx.FileStorage(store, durable=False)):
        # In this process (main), and from another one (python -m hephaestus).
        status, err = await trio.to_thread.run_sync(_main_captured, _args(command, store))
        proc = await trio.to_thread.run_sync(lambda: hx_cli(*_args(command, store)))
    for code, text in ((status, err), (proc.returncode, proc.stderr)):
        assert code == 1
        line = one_line_error(text, f"process {os.getpid()}", "a running engine")
        assert f"engine.{command}(" in line
        assert "stop it and run this command again" in line
    assert proc.stdout == ""
    assert snapshot_bytes(store) == before


def _main_captured(args: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(args)
    return status, err.getvalue()


@pytest.mark.parametrize("command", ["cancel", "retry"])
def test_a_bad_id_is_a_one_line_error(tmp_path: Path, command: str) -> None:
    store = tmp_path / "state"
    _aged_store(store)
    proc = hx_cli(command, "--store", str(store), "shop::nobody")
    assert proc.returncode == 1
    assert proc.stdout == ""
    one_line_error(proc.stderr, "no instance 'shop::nobody'")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_missing_store_or_a_directory_that_is_none_is_an_error_and_creates_nothing(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing"
    assert main(_args(command, missing)) == 1
    one_line_error(capsys.readouterr().err, "no store at", "does not exist")
    assert not missing.exists()
    assert main(_args(command, tmp_path)) == 1
    one_line_error(capsys.readouterr().err, "the directory is no FileStorage")
    assert list(tmp_path.iterdir()) == []


def test_the_commands_run_as_a_subprocess(tmp_path: Path) -> None:
    store = tmp_path / "state"
    _aged_store(store)
    proc = hx_cli("cancel", "--store", str(store), "shop::new-waiting")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        "cancelled shop::new-waiting (it was waiting)\n",
        "",
    )
    proc = hx_cli("retry", "--store", str(store), "shop::new-failed")
    assert proc.returncode == 1  # a hand-made failed snapshot that records no failed step
    one_line_error(proc.stderr, "EventRejected", "records no step that failed")
    proc = hx_cli("prune", "--store", str(store), "--older-than", "1d")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pruned 3 ")
    proc = hx_cli("prune", "--store", str(store), "--older-than", "soon")
    assert proc.returncode == 1
    one_line_error(proc.stderr, "invalid duration 'soon'")


# -- list --limit, natural order, --version ------------------------------------------------


def _numbered_store(store: Path, numbers: list[int]) -> None:
    async def fill() -> None:
        async with hx.FileStorage(store, durable=False) as storage:
            for n in numbers:
                await storage.put(
                    hx.Instance(id=f"o::{n}", workflow="w", version=1, status=hx.Status.COMPLETED)
                )

    trio.run(fill)


def test_list_sorts_ids_naturally_in_its_table_and_by_id_in_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "state"
    _numbered_store(store, [10, 2, 1, 100, 20])
    assert main(["list", "--store", str(store)]) == 0
    rows = capsys.readouterr().out.splitlines()[1:6]
    assert [r.split()[0] for r in rows] == ["o::1", "o::2", "o::10", "o::20", "o::100"]
    assert main(["list", "--store", str(store), "--json"]) == 0
    ids = [i["id"] for i in json.loads(capsys.readouterr().out)]
    assert ids == ["o::1", "o::10", "o::100", "o::2", "o::20"]
    assert sorted(["o2", "o10", "o1", "a", "o"], key=natural_key) == ["a", "o", "o1", "o2", "o10"]


def test_list_limit_pages_by_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "state"
    _numbered_store(store, [1, 2, 3, 10])
    assert main(["list", "--store", str(store), "--limit", "2", "--json"]) == 0
    assert [i["id"] for i in json.loads(capsys.readouterr().out)] == ["o::1", "o::10"]
    assert main(["list", "--store", str(store), "--limit", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [r.split()[0] for r in out[1:3]] == ["o::1", "o::10"]
    assert out[-2:] == ["2 instances", "(more after o::10: add --after o::10)"]
    assert main(["list", "--store", str(store), "--limit", "2", "--after", "o::10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [r.split()[0] for r in out[1:3]] == ["o::2", "o::3"]
    assert out[-1] == "2 instances"  # nothing after o::3
    proc = hx_cli("list", "--store", str(store), "--limit", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [i["id"] for i in json.loads(proc.stdout)] == ["o::1", "o::10", "o::2"]
    assert main(["list", "--store", str(store), "--limit", "0"]) == 1
    one_line_error(capsys.readouterr().err, "--limit", "must be at least 1")
    assert main(["list", "--store", str(store), "--limit", "many"]) == 1
    one_line_error(capsys.readouterr().err, "invalid number 'many'")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"hephaestus {version('hephaestus-trio')}\n"
    proc = hx_cli("--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        f"hephaestus {version('hephaestus-trio')}\n",
        "",
    )
