"""The ``hephaestus`` command line: ``demo``, ``list``, ``show``, ``graph``,
``cancel``, ``retry`` and ``prune``.

``list`` and ``show`` open the store read-only (no lock), so they work while an
engine is running on it. ``cancel``, ``retry`` and ``prune`` change the store:
they take its lock, so they refuse while an engine holds a single-engine
store, and act on the stored snapshots through the core's graph-free
transitions (the command line has no workflow definitions); the next engine
to open the store carries on. Every expected error (a missing store, an
unknown id, a bad ``MODULE:ATTR``, a usage mistake) ends with one line on
stderr and exit status 1; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import msgspec

from ._core._engine import Cancel, Retry, RunStep, apply_without_graph, prunable, prune_statuses
from ._core._errors import HephaestusError, StorageLocked
from ._core._model import Instance, Status
from ._core._workflow import Workflow
from .storage._errors import NotAStore
from .storage._protocol import Storage

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
    """Return the instance as plain JSON-ready data, every field included.

    Snapshots are stored without their default-valued fields (``omit_defaults``),
    so the fields are listed here rather than left to ``msgspec.to_builtins``.
    """
    return {
        name: msgspec.to_builtins(getattr(instance, name)) for name in instance.__struct_fields__
    }


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
            self.storage = store_at(path, read_only=True)  # a FileStorage dir, SQLite file, DSN
        except (NotAStore, ImportError) as exc:
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


def natural_key(text: str) -> tuple[tuple[int, str | int], ...]:
    """Return a sort key that orders runs of digits by value: ``o2`` before ``o10``."""
    return tuple(
        (1, int(part)) if index % 2 else (0, part)
        for index, part in enumerate(re.split(r"(\d+)", text))
    )


def cmd_list(args: argparse.Namespace) -> int:
    """List the instances in a store."""
    import trio

    from ._runtime._paging import query_page

    statuses = _parse_statuses(args.status)
    storage = _ReadOnlyStore(args.store).storage
    # One more than asked for says whether another page follows.
    wanted = None if args.limit is None else args.limit + 1

    async def query() -> list[Instance]:
        async with storage:
            return await query_page(
                storage, workflow=args.workflow, status=statuses, after=args.after, limit=wanted
            )

    instances = sorted(trio.run(query), key=lambda i: i.id)  # as engine.list orders them
    more = args.limit is not None and len(instances) > args.limit
    if more:
        instances = instances[: args.limit]
    if args.json:
        _print_json([instance_json(i) for i in instances])
        return 0
    print(format_list(sorted(instances, key=lambda i: natural_key(i.id))))
    if more:
        print(f"(more after {instances[-1].id}: add --after {shlex.quote(instances[-1].id)})")
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


# -- commands that change the store -------------------------------------------------------

_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>[smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Return the seconds of a duration such as ``30s``, ``15m``, ``2h``, ``7d`` or ``1w``.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not a number followed by one of
            the units s, m, h, d, w.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number and a unit, one of s, m, h, d, w "
            "(for example 30s, 15m, 2h, 7d)"
        )
    return float(match["number"]) * _UNITS[match["unit"]]


def _open_store(path: str, *, read_only: bool) -> Storage:
    """Return the store at ``path``, not opened yet; create nothing.

    Every command that writes to a store gets it here (``list`` and ``show``
    read through ``_ReadOnlyStore``). Bad snapshots found on opening are
    reported as warning lines on stderr.

    Raises:
        CliError: nothing at ``path``, or something that is no store.
    """
    from .storage._errors import NotAStore
    from .storage._locate import store_at

    try:
        storage = store_at(path, read_only=read_only)  # a FileStorage dir, SQLite file, DSN
    except (NotAStore, ImportError) as exc:
        raise CliError(str(exc)) from None

    def bad(where: str, reason: str) -> None:
        print(f"{PROG}: warning: unreadable snapshot {where}: {reason}", file=sys.stderr)

    logging.getLogger("hephaestus.storage").setLevel(logging.CRITICAL)
    storage.on_quarantine = bad
    return storage


_HOLDER = re.compile(r"locked by (process \d+|another process \(pid unknown\))")


def _held(exc: StorageLocked, path: str, what: str, instead: str) -> CliError:
    """The one-line refusal for a store that a running engine holds."""
    found = _HOLDER.search(str(exc))
    holder = found[1] if found else "another process"
    return CliError(
        f"cannot {what}: the store {path!r} is held by {holder}, a running engine; "
        f"{instead} in that application, or stop it and run this command again"
    )


def _on_store(path: str, what: str, instead: str, change: Callable[[Storage], Any]) -> Any:
    """Open the store at ``path`` for writing, run ``await change(storage)``, close it."""
    import trio

    storage = _open_store(path, read_only=False)

    async def session() -> Any:
        try:
            await storage.aopen()
        except StorageLocked as exc:
            raise _held(exc, path, what, instead) from None
        try:
            return await change(storage)
        finally:
            with trio.CancelScope(shield=True):
                await storage.aclose()

    return trio.run(session)


async def _get(storage: Storage, instance_id: str, path: str) -> Instance:
    instance = await storage.get(instance_id)
    if instance is None:
        raise CliError(f"no instance {instance_id!r} in store {path!r}")
    return instance


def _is_shared_dsn(path: str) -> bool:
    from .storage._postgres import is_postgres_dsn

    return is_postgres_dsn(path)


def _is_shared(storage: Storage) -> bool:
    from .storage._shared import SharedStorage

    return isinstance(storage, SharedStorage)


async def _shared_change(storage: Storage, instance_id: str, path: str, request: Any) -> Any:
    """Cancel or retry on a shared store (``_cli_shared.change``), its errors as CliError."""
    from . import _cli_shared
    from .storage._shared import Refused

    try:
        done = await _cli_shared.change(storage, instance_id, request)  # type: ignore[arg-type]
    except _cli_shared.NotFound:
        raise CliError(f"no instance {instance_id!r} in store {path!r}") from None
    except _cli_shared.NoAnswer as exc:
        raise CliError(str(exc)) from None
    if isinstance(done.answer, Refused):
        raise CliError(f"{done.answer.error}: {done.answer.message}")
    return done


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel an active instance in a store no engine holds."""

    async def cancel(storage: Storage) -> tuple[Instance, bool]:
        if _is_shared(storage):  # beside running engines: applied here or by the owner
            done = await _shared_change(storage, args.id, args.store, Cancel(reason=args.reason))
            if done.transition is not None:
                return done.before, done.transition.changed
            return done.before, not done.before.status.is_terminal
        before = await _get(storage, args.id, args.store)
        transition = apply_without_graph(before, Cancel(reason=args.reason), time.time())
        if transition.changed:
            await storage.put(transition.instance, expected_revision=before.revision)
        return before, transition.changed

    before, changed = _on_store(
        args.store, f"cancel {args.id!r}", f"call engine.cancel({args.id!r})", cancel
    )
    if not changed:
        print(f"{args.id} was already cancelled")
    else:
        print(f"cancelled {args.id} (it was {before.status.value})")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Re-open a failed instance in a store no engine holds; the next engine runs it."""

    async def retry(storage: Storage) -> list[str]:
        if _is_shared(storage):  # beside running engines: applied here or by the owner
            done = await _shared_change(storage, args.id, args.store, Retry())
            if done.transition is None:
                assert done.owner is not None
                return [f"engine {done.owner.engine_id!r} runs it again now"]
            steps = [c.step for c in done.transition.commands if isinstance(c, RunStep)]
            return [f"{', '.join(steps)} will run again on the next engine that claims it"]
        before = await _get(storage, args.id, args.store)
        transition = apply_without_graph(before, Retry(), time.time())
        await storage.put(transition.instance, expected_revision=before.revision)
        return [c.step for c in transition.commands if isinstance(c, RunStep)]

    steps = _on_store(args.store, f"retry {args.id!r}", f"call engine.retry({args.id!r})", retry)
    if _is_shared_dsn(args.store):
        print(f"retried {args.id}: {steps[0]}")
        return 0
    print(
        f"retried {args.id}: {', '.join(steps)} will run again when an engine next opens this store"
    )
    return 0


def _duration_arg(text: str) -> tuple[float, str]:
    return parse_duration(text), text.strip()


def cmd_prune(args: argparse.Namespace) -> int:
    """Delete finished instances last updated longer ago than ``--older-than``."""
    try:
        statuses = prune_statuses(_parse_statuses(args.status))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    seconds, text = args.older_than

    async def prune(storage: Storage) -> int:
        from ._runtime._paging import for_each_page

        cut = time.time() - seconds
        deleted = 0

        async def prune_page(page: list[Instance]) -> None:
            nonlocal deleted
            for instance in page:
                if prunable(instance, statuses=statuses, cut=cut):
                    await storage.delete(instance.id)
                    deleted += 1

        await for_each_page(storage, prune_page, status=statuses)
        return deleted

    deleted: int = _on_store(
        args.store, "prune", f"call engine.prune(older_than={seconds:g})", prune
    )
    which = "/".join(s.value for s in statuses)
    noun = "instance" if deleted == 1 else "instances"
    print(f"pruned {deleted} {which} {noun} last updated more than {text} ago")
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


def _count(text: str) -> int:
    number = _int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


_STORE_HELP = "the store: a FileStorage directory, an SQLite file or a postgresql:// DSN"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``hephaestus`` command."""
    parser = _Parser(
        prog=PROG,
        description="hephaestus: a durable workflow engine for Trio. Start with 'hephaestus demo'.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
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
    lst.add_argument("--store", metavar="PATH", required=True, help=_STORE_HELP)
    lst.add_argument(
        "--status",
        metavar="S",
        help=f"only these statuses, comma-separated ({', '.join(s.value for s in Status)})",
    )
    lst.add_argument("--workflow", metavar="W", help="only instances of this workflow")
    lst.add_argument(
        "--limit", metavar="N", type=_count, help="at most N instances (the first N by id)"
    )
    lst.add_argument("--after", metavar="ID", help="only instances whose id sorts after ID")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.set_defaults(handler=cmd_list)

    show = sub.add_parser(
        "show",
        help="show one instance in detail (read-only)",
        description="Show an instance: status, results, waiting steps, "
        "timers with their due times, and history.",
    )
    show.add_argument("--store", metavar="PATH", required=True, help=_STORE_HELP)
    show.add_argument("id", metavar="ID", help="the instance id, e.g. orderid::abc123")
    show.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    show.set_defaults(handler=cmd_show)

    writes = (
        "Changes the store: it refuses while an engine holds a single-engine store; on "
        "PostgreSQL it works beside running engines (the owner of the instance applies it)."
    )
    cancel = sub.add_parser(
        "cancel",
        help="cancel an active instance (needs the store free)",
        description="Cancel an active instance: it becomes cancelled and nothing more of "
        f"it runs. {writes}",
    )
    cancel.add_argument("--store", metavar="STORE", required=True, help=_STORE_HELP)
    cancel.add_argument("id", metavar="ID", help="the instance id")
    cancel.add_argument("--reason", metavar="TEXT", help="why (kept in the instance)")
    cancel.set_defaults(handler=cmd_cancel)

    retry = sub.add_parser(
        "retry",
        help="re-open a failed instance at the steps that failed (needs the store free)",
        description="Re-open a failed instance: the steps that failed run again, with fresh "
        "attempts, when an engine next opens the store; completed steps keep their results. "
        f"{writes}",
    )
    retry.add_argument("--store", metavar="STORE", required=True, help=_STORE_HELP)
    retry.add_argument("id", metavar="ID", help="the instance id")
    retry.set_defaults(handler=cmd_retry)

    prune = sub.add_parser(
        "prune",
        help="delete finished instances older than a duration (needs the store free)",
        description="Delete completed, failed and cancelled instances last updated longer "
        f"ago than --older-than. Active instances are never deleted. {writes}",
    )
    prune.add_argument("--store", metavar="STORE", required=True, help=_STORE_HELP)
    prune.add_argument(
        "--older-than",
        metavar="DURATION",
        required=True,
        type=_duration_arg,
        help="a number and a unit: 30s, 15m, 2h, 7d, 1w",
    )
    prune.add_argument(
        "--status",
        metavar="S",
        help="only these finished statuses, comma-separated (completed, failed, cancelled)",
    )
    prune.set_defaults(handler=cmd_prune)

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
    raise CliError(
        "choose a command: demo, list, show, graph, cancel, retry or prune "
        "(see 'hephaestus --help')"
    )


def version() -> str:
    """Return the installed version of hephaestus-trio (from its package metadata)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("hephaestus-trio")
    except PackageNotFoundError:
        return "(unknown: hephaestus-trio is not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Commands that read a store silence its log records (they print their own
    warnings); the ``hephaestus.storage`` logger's level is restored on return,
    so a program or test that calls ``main`` keeps its logging as it was.
    """
    storage_log = logging.getLogger("hephaestus.storage")
    level = storage_log.level
    try:
        return _main(argv)
    finally:
        storage_log.setLevel(level)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version:
            print(f"{PROG} {version()}")
            return 0
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
    except NotAStore as exc:  # found on opening (a database without a store, a newer schema)
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
