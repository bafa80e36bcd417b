"""The command line, run as users run it: ``python -m hephaestus ...`` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

import hephaestus as hx
from hephaestus.cli import format_instance, iso

NOW = 1_780_000_000.0  # a fixed epoch for the snapshots written below


def hx_cli(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hephaestus *args`` and return the finished process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "hephaestus", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hephaestus: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


# -- fixtures: a store with hand-made snapshots, a module with workflows ---------------


WAITING = hx.Instance(
    id="order::a1",
    workflow="order",
    version=2,
    status=hx.Status.WAITING,
    initial={"items": 3},
    results={"validate": {"total": 59.97}, "charge": {"payment_id": "pay-1"}},
    metadata={"customer": "c7"},
    completed=("validate", "charge"),
    waiting={"await_delivery": ("delivered", "timeout")},
    timers=(hx.Timer(id="t1", kind="timeout", step="await_delivery", deadline=NOW + 90.0),),
    history=(
        hx.HistoryEntry(step="validate", event="valid", attempt=1, at=NOW - 3),
        hx.HistoryEntry(
            step="charge",
            event=None,
            attempt=1,
            at=NOW - 2,
            error="RuntimeError: gateway timed out",
        ),
        hx.HistoryEntry(step="charge", event="charged", attempt=2, at=NOW - 1),
    ),
    created_at=NOW - 3,
    updated_at=NOW - 1,
    revision=7,
)

FAILED = hx.Instance(
    id="order::b2",
    workflow="order",
    version=2,
    status=hx.Status.FAILED,
    completed=("validate",),
    error=hx.ErrorInfo(step="charge", type="RuntimeError", message="card declined", attempts=3),
    history=(hx.HistoryEntry(step="validate", event="valid", attempt=1, at=NOW - 5),),
    created_at=NOW - 5,
    updated_at=NOW - 4,
    revision=9,
)

OTHER = hx.Instance(
    id="signup::c3",
    workflow="signup",
    version=1,
    status=hx.Status.COMPLETED,
    created_at=NOW - 10,
    updated_at=NOW - 9,
    revision=4,
)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"

    async def fill() -> None:
        async with hx.FileStorage(path) as storage:
            for instance in (WAITING, FAILED, OTHER):
                await storage.put(instance)

    trio.run(fill)
    return path


WORKFLOW_MODULE = """
import hephaestus as hx

@hx.step(events=("ok",))
async def first(ctx):
    return "ok"

@hx.step(events=("done",))
async def second(ctx):
    return "done"

flow = hx.Workflow(
    "flow", start=first,
    transitions={(first, "ok"): second, (second, "done"): hx.Done},
    unique=hx.Unique("flow"),
)

class Holder:
    inner = flow

not_a_workflow = 42
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "flows.py").write_text(WORKFLOW_MODULE)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "badimport.py").write_text("import no_such_dependency_here\n")
    (tmp_path / "badflow.py").write_text(
        textwrap.dedent("""
        import hephaestus as hx

        @hx.step(events=("ok", "other"))
        async def first(ctx):
            return "ok"

        flow = hx.Workflow("bad", start=first, transitions={(first, "ok"): hx.Done},
                           unique=hx.Unique("bad"))
    """)
    )
    return tmp_path


# -- graph ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mermaid", "dot", "ascii"])
def test_graph_renders_each_format(project: Path, fmt: str) -> None:
    proc = hx_cli("graph", "flows:flow", "--format", fmt, cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    sys.path.insert(0, str(project))
    try:
        import flows  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(project))
        sys.modules.pop("flows", None)
    assert proc.stdout == getattr(flows.flow, f"to_{fmt}")()


def test_console_script_imports_from_the_current_directory(project: Path) -> None:
    # The installed `hephaestus` script (unlike `python -m`) does not put the current
    # directory on sys.path by itself: the CLI does.
    script = Path(sys.executable).parent / "hephaestus"
    if not script.exists():
        pytest.skip("the hephaestus console script is not installed next to this python")
    proc = subprocess.run(
        [str(script), "graph", "flows:flow", "--format", "ascii"],
        capture_output=True,
        text=True,
        cwd=project,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("workflow flow v1\n")


def test_graph_default_is_mermaid_and_dotted_attr_works(project: Path) -> None:
    proc = hx_cli("graph", "flows:Holder.inner", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('---\ntitle: "flow v1"\n---\nflowchart TD\n')


def test_graph_of_the_demo_workflow() -> None:
    proc = hx_cli("graph", "hephaestus._demo:order", "--format", "ascii")
    assert proc.returncode == 0, proc.stderr
    assert "pack_order  (join: charge_payment, reserve_inventory)" in proc.stdout
    assert "--timeout--> escalate" in proc.stdout


@pytest.mark.parametrize(
    ("target", "needles"),
    [
        ("flows", ["is not MODULE:ATTR"]),
        ("flows:", ["is not MODULE:ATTR"]),
        (":flow", ["is not MODULE:ATTR"]),
        ("nosuchmodule:flow", ["cannot import 'nosuchmodule'", "no module named"]),
        ("flows.sub:flow", ["cannot import 'flows.sub'"]),
        ("flows:nothing", ["has no attribute 'nothing'"]),
        ("flows:Holder.nothing", ["has no attribute 'Holder.nothing'"]),
        ("flows:not_a_workflow", ["is an object of type int, not an hx.Workflow"]),
        ("flows:Holder", ["is the class Holder, not an hx.Workflow"]),
        ("broken:flow", ["cannot import 'broken'", "RuntimeError: boom at import"]),
        ("badimport:flow", ["cannot import 'badimport'", "no_such_dependency_here"]),
        ("badflow:flow", ["WorkflowDefinitionError", "declares event 'other'"]),
    ],
)
def test_graph_errors_are_one_line(project: Path, target: str, needles: list[str]) -> None:
    assert_one_line_error(hx_cli("graph", target, cwd=project), *needles)


# -- usage errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "choose a command"),
        (("bogus",), "invalid choice: 'bogus'"),
        (("list",), "--store"),
        (("show", "--store", "x"), "ID"),
        (("graph",), "MODULE:ATTR"),
        (("graph", "flows:flow", "--format", "svg"), "invalid choice: 'svg'"),
        (("demo", "--instances", "many"), "invalid number 'many'"),
        (("demo", "--instances", "0"), "--instances must be at least 1"),
        (("list", "--store", ".", "--status", "sleepy"), "unknown status 'sleepy'"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    assert_one_line_error(hx_cli(*args, cwd=tmp_path), needle)


def test_help_exits_zero() -> None:
    proc = hx_cli("--help")
    assert proc.returncode == 0
    for command in ("demo", "list", "show", "graph"):
        assert command in proc.stdout


# -- list and show ----------------------------------------------------------------------


@pytest.mark.parametrize("command", [("list",), ("show", "order::a1")])
def test_missing_store_is_one_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    missing = tmp_path / "nothing-here"
    assert_one_line_error(
        hx_cli(command[0], "--store", str(missing), *command[1:]), "no store at", "does not exist"
    )
    afile = tmp_path / "afile"
    afile.write_text("")
    assert_one_line_error(
        hx_cli(command[0], "--store", str(afile), *command[1:]), "not a directory"
    )
    assert not missing.exists()  # read-only commands create nothing


def test_list_table(store: Path) -> None:
    proc = hx_cli("list", "--store", str(store))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["ID", "WORKFLOW", "STATUS", "UPDATED", "DETAIL"]
    # Ordered by id, as engine.list orders them.
    assert [line.split()[0] for line in lines[1:4]] == ["order::a1", "order::b2", "signup::c3"]
    assert "waiting await_delivery" in lines[1]
    assert iso(NOW - 1) in lines[1]
    assert "charge: RuntimeError after 3 attempt(s)" in lines[2]
    assert lines[-1] == "3 instances"


def test_list_filters(store: Path) -> None:
    proc = hx_cli("list", "--store", str(store), "--workflow", "order")
    assert proc.returncode == 0, proc.stderr
    assert "signup::c3" not in proc.stdout
    assert proc.stdout.splitlines()[-1] == "2 instances"
    proc = hx_cli("list", "--store", str(store), "--status", "waiting,FAILED")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "2 instances"
    proc = hx_cli("list", "--store", str(store), "--status", "cancelled")
    assert proc.stdout == "no instances\n"


def test_list_json(store: Path) -> None:
    proc = hx_cli("list", "--store", str(store), "--json", "--status", "waiting")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [d["id"] for d in data] == ["order::a1"]
    assert data[0]["status"] == "waiting"
    assert data[0]["timers"][0]["deadline"] == NOW + 90.0


def test_show_human(store: Path) -> None:
    proc = hx_cli("show", "--store", str(store), "order::a1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "instance  order::a1" in out
    assert "status    waiting" in out
    assert "workflow  order v2" in out
    assert "await_delivery: accepts delivered, timeout" in out
    assert f"t1  timeout  step await_delivery  due {iso(NOW + 90.0)}" in out
    assert 'validate: {"total": 59.97}' in out
    assert f"{iso(NOW - 3)}  validate  attempt 1  -> valid" in out
    assert f"{iso(NOW - 2)}  charge    attempt 1  failed (RuntimeError: gateway timed out)" in out
    assert f"{iso(NOW - 1)}  charge    attempt 2  -> charged" in out


def test_show_failed_instance(store: Path) -> None:
    proc = hx_cli("show", "--store", str(store), "order::b2")
    assert proc.returncode == 0, proc.stderr
    assert "step charge failed after 3 attempt(s): RuntimeError: card declined" in proc.stdout
    assert "timers\n  (none)" in proc.stdout


def test_show_json(store: Path) -> None:
    proc = hx_cli("show", "--store", str(store), "order::a1", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["id"] == "order::a1"
    assert data["waiting"] == {"await_delivery": ["delivered", "timeout"]}
    assert data["history"][1]["error"] == "RuntimeError: gateway timed out"


def test_show_unknown_id(store: Path) -> None:
    assert_one_line_error(
        hx_cli("show", "--store", str(store), "order::nope"), "no instance 'order::nope'"
    )


def test_a_corrupt_snapshot_is_reported_not_fatal(store: Path) -> None:
    damaged = store / "order%3a%3ab2.snap"
    assert damaged.exists()
    damaged.write_bytes(b"garbage")
    proc = hx_cli("list", "--store", str(store))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "2 instances"
    [warning] = proc.stderr.splitlines()
    assert warning.startswith("hephaestus: warning: unreadable snapshot ")
    assert "order%3a%3ab2.snap" in warning
    assert_one_line_error(
        hx_cli("show", "--store", str(store), "order::b2"),
        "the snapshot of 'order::b2' is unreadable",
        "order%3a%3ab2.snap",
    )
    assert damaged.read_bytes() == b"garbage"  # read-only: left in place


def test_format_instance_timer_relative_times() -> None:
    text = format_instance(WAITING, now=NOW)
    assert "(in 90.0s)" in text
    text = format_instance(WAITING, now=NOW + 100)
    assert "(overdue by 10.0s)" in text


@hx.step(events=("go",), key="first")
async def _first(ctx: hx.StepContext) -> hx.StepResult:
    return "go"


_park = hx.WaitForEvent("go_on", key="park", timeout=3600)

_PARKING = hx.Workflow(
    "parking",
    start=_first,
    transitions={(_first, "go"): _park, (_park, "go_on"): hx.Done, (_park, "timeout"): hx.Done},
    unique=hx.Unique("park"),
)


async def test_list_and_show_work_while_an_engine_holds_the_store(tmp_path: Path) -> None:
    path = tmp_path / "live"
    async with hx.open_engine(workflows=[_PARKING], storage=hx.FileStorage(path)) as engine:
        iid = await engine.start(_PARKING, "p1")
        # The runner persists through worker threads: poll (briefly) for the parked state.
        with trio.fail_after(10):
            while (await engine.get(iid)).status is not hx.Status.WAITING:  # noqa: ASYNC110
                await trio.sleep(0.005)
        listed = await trio.run_process(
            [sys.executable, "-m", "hephaestus", "list", "--store", str(path)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        shown = await trio.run_process(
            [sys.executable, "-m", "hephaestus", "show", "--store", str(path), iid],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        await engine.cancel(iid)
    assert listed.returncode == 0, listed.stderr
    assert "park::p1" in listed.stdout.decode()
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout.decode()
    assert "status    waiting" in out
    assert "park: accepts go_on, timeout" in out
    assert "timeout  step park  due " in out


# -- the demo ---------------------------------------------------------------------------


async def test_demo_on_a_locked_store_is_one_line(tmp_path: Path) -> None:
    async with hx.FileStorage(tmp_path / "held"):
        proc = await trio.run_process(
            [
                sys.executable,
                "-m",
                "hephaestus",
                "demo",
                "--store",
                str(tmp_path / "held"),
                "--instances",
                "3",
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert proc.returncode == 1
    [line] = proc.stderr.decode().splitlines()
    assert line.startswith("hephaestus: error: StorageLocked: ")


def test_demo_smoke(tmp_path: Path) -> None:
    store = tmp_path / "demo-store"
    proc = hx_cli("demo", "--instances", "30", "--store", str(store), timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert "[engine 1]" in out
    assert "[engine 1] crashed at" in out
    assert "engine 2 reopened the store" in out
    assert "[engine 2] finished every order" in out
    assert "summary: 30 orders" in out
    assert "instances/s" in out
    # The store it leaves behind is readable by list, and every order finished.
    listed = hx_cli("list", "--store", str(store), "--workflow", "order", "--json")
    assert listed.returncode == 0, listed.stderr
    instances = json.loads(listed.stdout)
    assert len(instances) == 30
    assert {i["status"] for i in instances} == {"completed"}
    outcomes = {i["metadata"].get("outcome") for i in instances}
    assert outcomes >= {"delivered", "escalated"}
    # Every valid order's payment failed its first attempt and was retried.
    for instance in instances:
        if "charge_payment" in instance["results"]:
            charges = [h for h in instance["history"] if h["step"] == "charge_payment"]
            assert charges[0]["event"] is None
            assert charges[-1]["event"] == "charged"


def test_rich_reporter_draws_progress_and_summary() -> None:
    import io
    from collections import Counter

    from rich.console import Console

    from hephaestus._demo import PlainReporter, RichReporter

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    reporter = RichReporter(console)
    reporter.phase("engine 1", 10)
    reporter.update(Counter({hx.Status.RUNNING: 4, hx.Status.COMPLETED: 6}), 0.5)
    reporter.end_phase("crashed", Counter({hx.Status.RUNNING: 4}), "at 0.5s")
    reporter.summary("summary: 10 orders", [("completed", "10")], ["a note"])
    reporter.close()
    text = buffer.getvalue()
    assert "engine 1 crashed" in text
    assert "summary: 10 orders" in text
    assert "a note" in text

    plain = io.StringIO()
    reporter2 = PlainReporter(plain)
    reporter2.phase("engine 2", 10)
    reporter2.update(Counter(), 0.0)  # nothing known yet: no line
    reporter2.update(Counter({hx.Status.COMPLETED: 10}), 1.0)
    reporter2.update(Counter({hx.Status.COMPLETED: 10}), 1.5)  # unchanged: no line
    reporter2.end_phase("finished", Counter({hx.Status.COMPLETED: 10}), "every order")
    reporter2.summary("summary", [("completed", "10")], [])
    assert plain.getvalue().splitlines()[:2] == [
        "[engine 2] 10/10 finished (completed 10) at 1.0s",
        "[engine 2] finished every order",
    ]


def test_rerun_steps_spots_attempts_interrupted_by_a_crash() -> None:
    from hephaestus._demo import rerun_steps

    def entry(step: str, attempt: int, event: str | None) -> hx.HistoryEntry:
        return hx.HistoryEntry(step=step, event=event, attempt=attempt, at=NOW)

    retried = WAITING  # charge: attempt 1 failed, attempt 2 charged: a retry, no re-run
    assert rerun_steps(retried) == []
    crashed = hx.Instance(
        id="order::r1",
        workflow="order",
        version=1,
        history=(entry("a", 1, None), entry("a", 3, "ok"), entry("b", 2, "ok")),
    )
    assert rerun_steps(crashed) == ["a", "b"]


def test_demo_interrupted_with_ctrl_c_exits_quietly(tmp_path: Path) -> None:
    # A real SIGINT, mid-run: no traceback, exit status 130. (SIGINT must not be
    # ignored in the child, as it is for background jobs of a non-interactive shell.)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hephaestus",
            "demo",
            "--store",
            str(tmp_path / "s"),
            "--instances",
            "40",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until engine 1 is running
        if line.startswith("[engine 1]"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == "hephaestus: interrupted\n"
