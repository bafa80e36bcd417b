"""The ``hephaestus`` command line: ``demo``, ``list``, ``show`` and ``graph``.

``list`` and ``show`` open the store read-only (no lock), so they work while an
engine is running on it. Every expected error (a missing store, an unknown id,
a bad ``MODULE:ATTR``, a usage mistake) ends with one line on stderr and exit
status 1; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import msgspec

from ._core._errors import HephaestusError
from ._core._model import Instance, Status
from ._core._workflow import Workflow

PROG = "hephaestus"


class CliError(Exception):
    """An expected error: printed as one line on stderr, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are CliErrors (one line, exit 1), not exit 2."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see '{self.prog} --help')")


def _one_line(text: str) -> str:
    """Join a multi-line message (such as a list of problems) into one line."""
    parts = (re.sub(r"^\s*- ", "", part).strip() for part in text.strip().splitlines())
    return " ".join(part for part in parts if part)


# -- formatting -------------------------------------------------------------------------


def iso(epoch: float) -> str:
    """Return ``epoch`` seconds as an ISO 8601 UTC timestamp with milliseconds."""
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds")


def _compact(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=repr, ensure_ascii=False)


def _detail(instance: Instance) -> str:
    """Return a short description of what the instance is doing or why it ended."""
    if instance.status is Status.FAILED and instance.error is not None:
        err = instance.error
        return f"{err.step}: {err.type} after {err.attempts} attempt(s)"
    if instance.status is Status.CANCELLED:
        return instance.cancel_reason or "cancelled"
    parts: list[str] = []
    if instance.active:
        parts.append("running " + ", ".join(instance.active))
    if instance.waiting:
        parts.append("waiting " + ", ".join(instance.waiting))
    retrying = instance.retrying
    if retrying:
        parts.append("retrying " + ", ".join(retrying))
    return "; ".join(parts)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Return ``rows`` (the first one the header) as left-aligned, space-separated columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def format_list(instances: Sequence[Instance]) -> str:
    """Return the human-readable table that ``hephaestus list`` prints."""
    if not instances:
        return "no instances"
    rows = [("ID", "WORKFLOW", "STATUS", "UPDATED", "DETAIL")]
    rows.extend(
        (i.id, f"{i.workflow} v{i.version}", i.status.value, iso(i.updated_at), _detail(i))
        for i in instances
    )
    noun = "instance" if len(instances) == 1 else "instances"
    return f"{format_table(rows)}\n\n{len(instances)} {noun}"


def format_instance(instance: Instance, *, now: float | None = None) -> str:
    """Return the human-readable report that ``hephaestus show`` prints."""
    now = time.time() if now is None else now
    out: list[str] = []
    fields = [
        ("instance", instance.id),
        ("workflow", f"{instance.workflow} v{instance.version}"),
        ("status", instance.status.value),
        ("created", iso(instance.created_at)),
        ("updated", iso(instance.updated_at)),
        ("revision", str(instance.revision)),
    ]
    if instance.active:
        fields.append(("running", ", ".join(instance.active)))
    if instance.initial:
        fields.append(("initial", _compact(instance.initial)))
    if instance.metadata:
        fields.append(("metadata", _compact(instance.metadata)))
    if instance.error is not None:
        err = instance.error
        fields.append(
            (
                "error",
                f"step {err.step} failed after {err.attempts} attempt(s): "
                f"{err.type}: {err.message}",
            )
        )
    if instance.cancelled or instance.status is Status.CANCELLED:
        fields.append(("cancelled", instance.cancel_reason or "(no reason given)"))
    width = max(len(name) for name, _ in fields)
    out.extend(f"{name.ljust(width)}  {value}" for name, value in fields)

    def section(title: str, lines: list[str]) -> None:
        out.append("")
        out.append(title)
        out.extend(f"  {line}" for line in lines or ["(none)"])

    section(
        "waiting steps",
        [f"{step}: accepts {', '.join(events)}" for step, events in instance.waiting.items()],
    )
    timer_lines = []
    for timer in sorted(instance.timers, key=lambda t: (t.deadline, t.id)):
        delta = timer.deadline - now
        when = f"in {delta:.1f}s" if delta >= 0 else f"overdue by {-delta:.1f}s"
        timer_lines.append(
            f"{timer.id}  {timer.kind:<7}  step {timer.step}  due {iso(timer.deadline)} ({when})"
        )
    section("timers", timer_lines)
    if instance.inbox:
        section(
            "inbox (early events)",
            [
                f"{e.event}"
                + (f" for {e.step}" if e.step else "")
                + (f" payload {_compact(e.payload)}" if e.payload is not None else "")
                + f" at {iso(e.at)}"
                for e in instance.inbox
            ],
        )
    section("results", [f"{step}: {_compact(res)}" for step, res in instance.results.items()])
    history = []
    step_width = max((len(entry.step) for entry in instance.history), default=0)
    for entry in instance.history:
        outcome = f"-> {entry.event}" if entry.event is not None else "failed"
        if entry.error:
            outcome += f" ({entry.error})"
        history.append(
            f"{iso(entry.at)}  {entry.step.ljust(step_width)}  attempt {entry.attempt}  {outcome}"
        )
    section("history", history)
    return "\n".join(out)


def instance_json(instance: Instance) -> Any:
    """Return the instance as plain JSON-ready data."""
    return msgspec.to_builtins(instance)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False, default=repr))


# -- commands ---------------------------------------------------------------------------


class _ReadOnlyStore:
    """A read-only store (FileStorage or SQLiteStorage) plus the bad snapshots it came across.

    Bad snapshots are reported once each, as ``hephaestus: warning: ...`` lines
    on stderr, instead of through the storage's log records.
    """

    def __init__(self, path: str, *, warn: bool = True) -> None:
        from .storage._errors import NotAStore
        from .storage._locate import store_at

        try:
            self.storage = store_at(path, read_only=True)  # a FileStorage dir or SQLite file
        except NotAStore as exc:
            raise CliError(str(exc)) from None
        logging.getLogger("hephaestus.storage").setLevel(logging.CRITICAL)
        self.bad: dict[str, str] = {}
        self.warn = warn
        self.storage.on_quarantine = self._bad

    def _bad(self, path: str, reason: str) -> None:
        if path not in self.bad:
            self.bad[path] = reason = reason.removesuffix(" (read-only: left in place)")
            if self.warn:
                print(f"{PROG}: warning: unreadable snapshot {path}: {reason}", file=sys.stderr)


def _parse_statuses(text: str | None) -> list[Status] | None:
    if text is None:
        return None
    statuses = []
    for word in text.split(","):
        try:
            statuses.append(Status(word.strip().lower()))
        except ValueError:
            names = ", ".join(s.value for s in Status)
            raise CliError(f"unknown status {word.strip()!r}: use one of {names}") from None
    return statuses


def cmd_list(args: argparse.Namespace) -> int:
    """List the instances in a store."""
    import trio

    statuses = _parse_statuses(args.status)
    storage = _ReadOnlyStore(args.store).storage

    async def query() -> list[Instance]:
        async with storage:
            found: list[Instance] = await storage.query(workflow=args.workflow, status=statuses)
            return found

    instances = sorted(trio.run(query), key=lambda i: i.id)  # as engine.list orders them
    if args.json:
        _print_json([instance_json(i) for i in instances])
    else:
        print(format_list(instances))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Show one instance in detail."""
    import trio

    store = _ReadOnlyStore(args.store, warn=False)

    async def get() -> Instance | None:
        async with store.storage:
            found: Instance | None = await store.storage.get(args.id)
            return found

    instance = trio.run(get)
    if store.bad:
        path, reason = next(iter(store.bad.items()))
        raise CliError(f"the snapshot of {args.id!r} is unreadable: {path}: {reason}")
    if instance is None:
        raise CliError(f"no instance {args.id!r} in store {args.store!r}")
    if args.json:
        _print_json(instance_json(instance))
    else:
        print(format_instance(instance))
    return 0


def load_workflow(spec: str) -> Workflow:
    """Import ``MODULE:ATTR`` (ATTR may be dotted) and return it if it is a Workflow.

    The current directory is importable, as with ``python -m``.

    Raises:
        CliError: for a malformed spec, a module that cannot be imported, a
            missing attribute, or an attribute that is not an ``hx.Workflow``.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"{spec!r} is not MODULE:ATTR (for example 'myapp.flows:order')")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise CliError(f"cannot import {module_name!r}: no module named {exc.name!r}") from None
        raise CliError(f"cannot import {module_name!r}: {_one_line(str(exc))}") from None
    except Exception as exc:
        raise CliError(
            f"cannot import {module_name!r}: {type(exc).__name__}: {_one_line(str(exc))}"
        ) from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Workflow):
        what = (
            f"the class {obj.__name__}"
            if isinstance(obj, type)
            else (f"an object of type {type(obj).__name__}")
        )
        raise CliError(f"{spec!r} is {what}, not an hx.Workflow")
    return obj


RENDERERS: dict[str, Callable[[Workflow], str]] = {
    "mermaid": Workflow.to_mermaid,
    "dot": Workflow.to_dot,
    "ascii": Workflow.to_ascii,
}


def cmd_graph(args: argparse.Namespace) -> int:
    """Render a workflow's graph."""
    workflow = load_workflow(args.target)
    sys.stdout.write(RENDERERS[args.format](workflow))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the sample order workflow, crash the engine mid-run, and recover."""
    if args.instances < 1:
        raise CliError(f"--instances must be at least 1, got {args.instances}")
    from ._demo import run_demo

    return run_demo(store=args.store, instances=args.instances, storage=args.storage)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``hephaestus`` command."""
    parser = _Parser(
        prog=PROG,
        description="hephaestus: a durable workflow engine for Trio. Start with 'hephaestus demo'.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run a sample order workflow, crash the engine mid-run and recover",
        description="Run a sample order workflow over a FileStorage, crash the engine while "
        "instances are in flight, reopen the store and watch every instance finish.",
    )
    demo.add_argument(
        "--store", metavar="PATH", help="store directory to use (default: a temporary directory)"
    )
    demo.add_argument(
        "--storage",
        choices=("files", "sqlite"),
        default="files",
        help="FileStorage (a directory, the default) or SQLiteStorage (--store is then a file)",
    )
    demo.add_argument(
        "--instances",
        metavar="N",
        type=_int,
        default=200,
        help="number of order instances to run (default: 200)",
    )
    demo.set_defaults(handler=cmd_demo)

    lst = sub.add_parser(
        "list",
        help="list the instances in a store (read-only)",
        description="List the instances in a store. Read-only: it works "
        "while an engine holds the store.",
    )
    lst.add_argument("--store", metavar="PATH", required=True, help="the store directory")
    lst.add_argument(
        "--status",
        metavar="S",
        help=f"only these statuses, comma-separated ({', '.join(s.value for s in Status)})",
    )
    lst.add_argument("--workflow", metavar="W", help="only instances of this workflow")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.set_defaults(handler=cmd_list)

    show = sub.add_parser(
        "show",
        help="show one instance in detail (read-only)",
        description="Show an instance: status, results, waiting steps, "
        "timers with their due times, and history.",
    )
    show.add_argument("--store", metavar="PATH", required=True, help="the store directory")
    show.add_argument("id", metavar="ID", help="the instance id, e.g. orderid::abc123")
    show.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    show.set_defaults(handler=cmd_show)

    graph = sub.add_parser(
        "graph",
        help="render a workflow as mermaid, dot or ASCII",
        description="Render the workflow found at MODULE:ATTR.",
    )
    graph.add_argument(
        "target", metavar="MODULE:ATTR", help="where the workflow is, e.g. myapp.flows:order"
    )
    graph.add_argument(
        "--format",
        choices=sorted(RENDERERS),
        default="mermaid",
        help="output format (default: mermaid)",
    )
    graph.set_defaults(handler=cmd_graph)
    return parser


def _no_command(args: argparse.Namespace) -> int:
    raise CliError("choose a command: demo, list, show or graph (see 'hephaestus --help')")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = getattr(args, "handler", _no_command)
        try:
            return handler(args)
        except BaseExceptionGroup as group:
            # The demo's nurseries wrap errors in groups: unwrap a lone one, however nested.
            lone: BaseException = group
            while isinstance(lone, BaseExceptionGroup) and len(lone.exceptions) == 1:
                lone = lone.exceptions[0]
            if not isinstance(lone, BaseExceptionGroup):  # e.g. KeyboardInterrupt, OSError
                raise lone from None
            raise
    except CliError as exc:
        print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except HephaestusError as exc:
        print(f"{PROG}: error: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`hephaestus list ... | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
