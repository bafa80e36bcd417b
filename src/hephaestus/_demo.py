"""``hephaestus demo``: a sample order workflow, a crash mid-run, and the recovery.

The workflow (draw it with ``hephaestus graph hephaestus._demo:order --format ascii``)::

    validate_order --valid--> charge_payment + reserve_inventory   (fan-out)
                   --invalid--> Done
    charge_payment (fails its first attempt, retried) --charged--> pack_order
    reserve_inventory --reserved--> pack_order                     (join)
    pack_order --packed--> await_delivery                          (WaitForEvent, timeout)
    await_delivery --delivered--> close_order --closed--> Done
                   --timeout--> escalate --escalated--> Done

The run: engine 1 starts every order on a FileStorage while a simulated
courier confirms most deliveries (``engine.resume`` with a dedupe key; a
confirmation that arrives before the order is packed waits in the inbox) and
leaves the rest to time out. Midway the engine's cancel scope is cancelled,
as if the process had died: steps in flight, durable timers and all. Engine 2
opens the same store, recovers every unfinished instance, the courier re-sends
what was not acknowledged, and every order finishes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shlex
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

import hephaestus as hx

DELIVERY_TIMEOUT = 1.5
"""Seconds an order waits for its delivery confirmation before it is escalated."""

RETRY_BACKOFF = 0.2
"""Seconds between a failed payment attempt and the next one."""

INVALID_EVERY = 25
"""Every 25th order has no items: validation rejects it."""

UNCONFIRMED_EVERY = 5
"""Every 5th valid order gets no delivery confirmation: it times out."""

CRASH_AFTER = 1.0
"""Seconds into the run at which engine 1 crashes (sooner once half the deliveries are in)."""


class PaymentGatewayError(RuntimeError):
    """The simulated payment gateway's transient failure."""


@hx.step(events=("valid", "invalid"))
async def validate_order(ctx: hx.StepContext) -> hx.StepResult:
    """Reject orders without items; price the others."""
    await trio.sleep(0.005)
    items = int(ctx.initial.get("items", 0))
    if items <= 0:
        return hx.Emit("invalid", {"reason": "the order has no items"})
    return hx.Emit("valid", {"items": items, "total": round(items * 19.99, 2)})


@hx.step(
    events=("charged",),
    retry=hx.Retry(max_attempts=3, backoff="constant", initial=RETRY_BACKOFF),
)
async def charge_payment(ctx: hx.StepContext) -> hx.StepResult:
    """Charge the customer; the demo gateway fails every first attempt."""
    await trio.sleep(0.01)
    if ctx.attempt == 1:
        raise PaymentGatewayError("payment gateway timed out (the demo fails every 1st attempt)")
    # The idempotency key for the real gateway: the same in every attempt and in a re-run
    # after a crash, so the customer is charged once however often this step runs.
    return hx.Emit(
        "charged",
        {
            "payment_id": f"pay-{ctx.instance_id}",
            "attempt": ctx.attempt,
            "amount": ctx.results["validate_order"]["total"],
        },
    )


@hx.step(events=("reserved",))
async def reserve_inventory(ctx: hx.StepContext) -> hx.StepResult:
    """Reserve the items in the warehouse."""
    await trio.sleep(0.02)
    return hx.Emit("reserved", {"warehouse": "east"})


@hx.step(events=("packed",))
async def pack_order(ctx: hx.StepContext) -> hx.StepResult:
    """Join point: runs once the payment and the reservation have both completed."""
    await trio.sleep(0.005)
    return hx.Emit("packed", {"parcel": f"parcel-{ctx.instance_id.split('::', 1)[-1]}"})


await_delivery = hx.WaitForEvent("delivered", key="await_delivery", timeout=DELIVERY_TIMEOUT)


@hx.step(events=("closed",))
async def close_order(ctx: hx.StepContext) -> hx.StepResult:
    """Close the order once the courier confirmed the delivery."""
    return hx.Emit("closed", metadata={"outcome": "delivered"})


@hx.step(events=("escalated",))
async def escalate(ctx: hx.StepContext) -> hx.StepResult:
    """Open a support ticket: no delivery confirmation came in time."""
    return hx.Emit(
        "escalated", {"ticket": f"T-{ctx.instance_id}"}, metadata={"outcome": "escalated"}
    )


order = hx.Workflow(
    "order",
    start=validate_order,
    transitions={
        (validate_order, "valid"): [charge_payment, reserve_inventory],
        (validate_order, "invalid"): hx.Done,
        (charge_payment, "charged"): pack_order,
        (reserve_inventory, "reserved"): pack_order,
        (pack_order, "packed"): await_delivery,
        (await_delivery, "delivered"): close_order,
        (await_delivery, "timeout"): escalate,
        (close_order, "closed"): hx.Done,
        (escalate, "escalated"): hx.Done,
    },
    unique=hx.Unique("order"),
)
"""The demo's order workflow."""


# -- reporting --------------------------------------------------------------------------

ACTIVE = (hx.Status.PENDING, hx.Status.RUNNING, hx.Status.WAITING)
TERMINAL = (hx.Status.COMPLETED, hx.Status.FAILED, hx.Status.CANCELLED)


def _counts_text(counts: Counter[hx.Status]) -> str:
    return ", ".join(f"{s.value} {counts[s]}" for s in (*ACTIVE, *TERMINAL) if counts[s])


class Reporter(Protocol):
    """Where the demo writes its progress: a rich live display or plain lines."""

    interval: float

    def line(self, text: str) -> None: ...

    def phase(self, title: str, total: int) -> None: ...

    def update(self, counts: Counter[hx.Status], elapsed: float) -> None: ...

    def end_phase(self, outcome: str, counts: Counter[hx.Status], note: str) -> None: ...

    def summary(
        self, title: str, rows: Sequence[tuple[str, str]], notes: Sequence[str]
    ) -> None: ...

    def close(self) -> None: ...


class PlainReporter:
    """Progress as plain lines: for pipes, logs, and when rich is not installed."""

    interval = 0.5

    def __init__(self, out: Any = None) -> None:
        self._out = out if out is not None else sys.stdout
        self._title = ""
        self._total = 0
        self._last = ""

    def line(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def phase(self, title: str, total: int) -> None:
        self._title, self._total, self._last = title, total, ""

    def update(self, counts: Counter[hx.Status], elapsed: float) -> None:
        if not counts:
            return
        done = sum(counts[s] for s in TERMINAL)
        text = f"[{self._title}] {done}/{self._total} finished ({_counts_text(counts)})"
        if text != self._last:
            self._last = text
            self.line(f"{text} at {elapsed:.1f}s")

    def end_phase(self, outcome: str, counts: Counter[hx.Status], note: str) -> None:
        self.line(f"[{self._title}] {outcome} {note}")

    def summary(self, title: str, rows: Sequence[tuple[str, str]], notes: Sequence[str]) -> None:
        width = max(len(k) for k, _ in rows)
        vwidth = max(len(v) for _, v in rows)
        rule = "-" * (width + vwidth + 4)
        self.line("")
        self.line(title)
        self.line(rule)
        for key, value in rows:
            self.line(f"  {key.ljust(width)}  {value.rjust(vwidth)}")
        self.line(rule)
        for note in notes:
            self.line(note)

    def close(self) -> None:
        return None


class RichReporter:
    """Progress bars and a summary table drawn with rich (``hephaestus-trio[rich]``)."""

    interval = 0.1

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._console = console
        self._progress = Progress(
            TextColumn("[bold]{task.description:<9}"),
            TextColumn("{task.fields[outcome]:<8}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[counts]}"),
            console=console,
            auto_refresh=False,
        )
        self._task: Any = None
        self._progress.start()

    def line(self, text: str) -> None:
        self._progress.console.print(text, highlight=False)
        self._progress.refresh()

    def phase(self, title: str, total: int) -> None:
        self._task = self._progress.add_task(title, total=total, counts="", outcome="")
        self._progress.refresh()

    def update(self, counts: Counter[hx.Status], elapsed: float) -> None:
        done = sum(counts[s] for s in TERMINAL)
        self._progress.update(self._task, completed=done, counts=_counts_text(counts))
        self._progress.refresh()

    def end_phase(self, outcome: str, counts: Counter[hx.Status], note: str) -> None:
        colour = "red" if outcome == "crashed" else "green"
        self._progress.update(
            self._task,
            completed=sum(counts[s] for s in TERMINAL),
            counts=_counts_text(counts),
            outcome=f"[{colour}]{outcome}",
        )
        self._progress.stop_task(self._task)
        self.line(f"[{colour}]{self._progress.tasks[-1].description} {outcome}[/] {note}")

    def summary(self, title: str, rows: Sequence[tuple[str, str]], notes: Sequence[str]) -> None:
        from rich.table import Table

        self._progress.stop()
        table = Table(title=title, title_justify="left")
        table.add_column("")
        table.add_column("", justify="right")
        table.show_header = False
        for key, value in rows:
            table.add_row(key, value)
        self._console.print(table)
        for note in notes:
            self._console.print(note, highlight=False)

    def close(self) -> None:
        self._progress.stop()


def make_reporter() -> Reporter:
    """Return a rich reporter when rich is installed and stdout is a terminal, else plain."""
    try:
        from rich.console import Console
    except ImportError:
        return PlainReporter()
    console = Console()
    if not console.is_terminal:
        return PlainReporter()
    return RichReporter(console)


# -- the run ----------------------------------------------------------------------------


def _initial(i: int) -> dict[str, Any]:
    items = 0 if i % INVALID_EVERY == INVALID_EVERY - 1 else 1 + i % 4
    return {"items": items, "customer": f"c{i % 97:02d}"}


def _value(token: str, i: int) -> str:
    return f"{token}-{i:05d}"


def _confirm_after(i: int) -> float | None:
    """Seconds after its start at which order ``i``'s delivery is confirmed; None: never."""
    if not _initial(i)["items"] or i % UNCONFIRMED_EVERY == UNCONFIRMED_EVERY - 1:
        return None
    # Spread over 0.1-1.0 s: an early confirmation arrives before the order is packed and
    # waits in the instance's inbox until await_delivery suspends.
    return 0.1 + 0.9 * ((i * 37) % 100) / 100


@dataclass
class _Delivery:
    instance_id: str
    due: float  # trio time
    acked: bool = False


@dataclass
class _Client:
    """What the demo's client knows, in memory, across the engine crash.

    It keeps only what the engine acknowledged: the ids ``start`` returned and the
    confirmations ``resume`` accepted. Confirmations that were not acknowledged are
    sent again after the crash with the same dedupe key, so none counts twice.
    """

    n: int
    ids: dict[int, str] = field(default_factory=dict)
    deliveries: list[_Delivery] = field(default_factory=list)
    planned: int = 0
    acked: int = 0
    late: int = 0
    found: int = 0
    restarted: int = 0
    crash_time: trio.Event = field(default_factory=trio.Event)

    async def start_order(
        self,
        engine: hx.Engine,
        token: str,
        i: int,
        limiter: trio.CapacityLimiter,
        nursery: trio.Nursery,
    ) -> None:
        async with limiter:
            iid = await engine.start(order, _value(token, i), _initial(i))
        self._follow(engine, i, iid, nursery)

    async def start_again(
        self,
        engine: hx.Engine,
        token: str,
        i: int,
        limiter: trio.CapacityLimiter,
        nursery: trio.Nursery,
    ) -> None:
        """After the crash: send again a start that was not acknowledged.

        It may have been stored all the same (the crash came between the write
        and the answer): then the order is taken as it is, never started twice.
        """
        iid = f"{order.unique.key}::{_value(token, i)}"
        async with limiter:
            try:
                await engine.get(iid)
                self.found += 1
            except hx.InstanceNotFound:
                iid = await engine.start(order, _value(token, i), _initial(i))
                self.restarted += 1
        self._follow(engine, i, iid, nursery)

    def _follow(self, engine: hx.Engine, i: int, iid: str, nursery: trio.Nursery) -> None:
        self.ids[i] = iid
        delay = _confirm_after(i)
        if delay is not None:
            delivery = _Delivery(iid, trio.current_time() + delay)
            self.deliveries.append(delivery)
            nursery.start_soon(self.confirm, engine, delivery)

    async def confirm(self, engine: hx.Engine, delivery: _Delivery) -> None:
        await trio.sleep_until(delivery.due)
        try:
            await engine.resume(
                delivery.instance_id,
                "delivered",
                {"signed_by": "courier"},
                dedupe_key=f"delivered:{delivery.instance_id}",
            )
        except hx.EventRejected:
            self.late += 1  # the order timed out before the confirmation came
        delivery.acked = True
        self.acked += 1
        if self.acked * 2 >= self.planned:
            self.crash_time.set()


_STATUS_OF_EVENT = {
    "workflow.start": hx.Status.RUNNING,
    "workflow.stop": hx.Status.COMPLETED,
    "workflow.exception": hx.Status.FAILED,
    "workflow.cancel": hx.Status.CANCELLED,
}


class Progress:
    """Counts the orders by status, kept up to date by the engine's telemetry.

    A telemetry handler: every persisted change of an instance is reported
    (``workflow.start``, ``workflow.transition`` with its new status, the
    terminal events), so the counts cost O(1) per change and reading them costs
    nothing, however many orders there are. ``seed`` adds what is on disk when
    an engine recovers a store (recovery itself reports no status).
    """

    def __init__(self, workflow: str) -> None:
        self.workflow = workflow
        self.status: dict[str, hx.Status] = {}
        self.counts: Counter[hx.Status] = Counter()

    def seed(self, instances: Sequence[hx.Instance]) -> None:
        for instance in instances:
            self._set(instance.id, instance.status)

    def __call__(self, event: hx.TelemetryEvent) -> None:
        if event.workflow != self.workflow or event.instance_id is None:
            return
        status = _STATUS_OF_EVENT.get(event.name)
        if status is None and event.name == "workflow.transition":
            status = hx.Status(event.metadata["status"])
        if status is not None:
            self._set(event.instance_id, status)

    def _set(self, instance_id: str, status: hx.Status) -> None:
        old = self.status.get(instance_id)
        if old is status:
            return
        if old is not None:
            self.counts[old] -= 1
        self.status[instance_id] = status
        self.counts[status] += 1

    def snapshot(self) -> Counter[hx.Status]:
        """The current counts, without zero entries."""
        return +self.counts


async def _watch(progress: Progress, reporter: Reporter, t0: float) -> None:
    """Report the orders' statuses every ``reporter.interval`` seconds, from ``progress``."""
    while True:
        counts = progress.snapshot()
        if counts:
            reporter.update(counts, trio.current_time() - t0)
        await trio.sleep(reporter.interval)


@dataclass
class DemoResult:
    """What the demo measured; ``ok`` is False unless every instance finished."""

    instances: list[hx.Instance]
    seconds: float
    recovered: int
    timers_rearmed: int
    late: int
    ok: bool


def _storage(kind: str, path: str, *, read_only: bool = False) -> hx.Storage:
    """The demo's store at ``path``: ``kind`` is "files" (FileStorage) or "sqlite"."""
    if kind == "sqlite":
        return hx.SQLiteStorage(path, read_only=read_only)
    return hx.FileStorage(path, read_only=read_only)


async def demo_run(path: str, n: int, reporter: Reporter, kind: str = "files") -> DemoResult:
    """Run ``n`` orders on the store (``kind``) at ``path``: engine 1, a crash, engine 2."""
    token = secrets.token_hex(2)  # a fresh id prefix, so a reused --store starts new orders
    client = _Client(n, planned=sum(_confirm_after(i) is not None for i in range(n)))
    ours = {f"{order.unique.key}::{_value(token, i)}" for i in range(n)}
    t0 = trio.current_time()

    # ---- engine 1: start the orders, confirm deliveries, crash a second in -------------
    reporter.phase("engine 1", n)
    progress = Progress(order.name)
    with trio.CancelScope() as crash:
        async with (
            hx.open_engine(
                workflows=[order], storage=_storage(kind, path), telemetry=progress
            ) as engine,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(_watch, progress, reporter, t0)
            limiter = trio.CapacityLimiter(64)
            for i in range(n):
                nursery.start_soon(client.start_order, engine, token, i, limiter, nursery)
            # Crash a second in, or once half the confirmations are in if that is sooner:
            # orders are being started, running, retrying payments and waiting.
            with trio.move_on_at(t0 + CRASH_AFTER):
                await client.crash_time.wait()
            reporter.end_phase(
                "crashed",
                progress.snapshot(),
                f"at {trio.current_time() - t0:.1f}s ({len(client.ids)} of {n} starts "
                "acknowledged so far)",
            )
            crash.cancel()  # announced above, and happening now: nothing runs in between
    # What the crash left on disk, seen the way `hephaestus list` sees it.
    async with _storage(kind, path, read_only=True) as view:
        stored = [i for i in await view.query(workflow=order.name) if i.id in ours]
    on_disk = _counts_text(Counter(i.status for i in stored))
    reporter.line(f"on disk after the crash: {len(stored)} orders ({on_disk})")

    # ---- engine 2: reopen the store, recover, finish -----------------------------------
    t_open = trio.current_time()
    progress = Progress(order.name)
    progress.seed(stored)
    async with hx.open_engine(
        workflows=[order], storage=_storage(kind, path), telemetry=progress
    ) as engine:
        recovery = trio.current_time() - t_open
        unfinished = [
            i for i in await engine.list(workflow=order.name, status=ACTIVE) if i.id in ours
        ]
        timers = sum(len(i.timers) for i in unfinished)
        reporter.line(
            f"engine 2 reopened the store in {recovery * 1000:.0f} ms and recovered "
            f"{len(unfinished)} unfinished orders: {timers} durable timers re-armed, "
            "interrupted steps run again"
        )
        reporter.phase("engine 2", n)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, progress, reporter, t0)
            for delivery in client.deliveries:
                if not delivery.acked:
                    nursery.start_soon(client.confirm, engine, delivery)
            missing = [i for i in range(n) if i not in client.ids]
            if missing:
                limiter = trio.CapacityLimiter(64)
                async with trio.open_nursery() as starts:
                    for i in missing:
                        starts.start_soon(client.start_again, engine, token, i, limiter, nursery)
                reporter.line(
                    f"the client sent again the {len(missing)} starts not acknowledged before "
                    f"the crash: {client.found} had been stored, {client.restarted} started now"
                )
            ids = [client.ids[i] for i in range(n)]
            for iid in ids:
                await engine.wait(iid)
            nursery.cancel_scope.cancel()
        final = [await engine.get(iid) for iid in ids]
        reporter.end_phase(
            "finished",
            Counter(i.status for i in final),
            f"every order at {trio.current_time() - t0:.1f}s",
        )
    return DemoResult(
        instances=final,
        seconds=trio.current_time() - t0,
        recovered=len(unfinished),
        timers_rearmed=timers,
        late=client.late,
        ok=all(i.status.is_terminal for i in final),
    )


def summarise(result: DemoResult) -> list[tuple[str, str]]:
    """Return the summary table's rows."""
    instances = result.instances
    statuses = Counter(i.status for i in instances)
    rows = [(f"{s.value}", str(statuses[s])) for s in hx.Status if statuses[s]]
    rows += [
        ("  delivered and closed", str(sum("close_order" in i.completed for i in instances))),
        ("  timed out, escalated", str(sum("escalate" in i.completed for i in instances))),
        (
            "  rejected by validation",
            str(
                sum(
                    any(h.step == "validate_order" and h.event == "invalid" for h in i.history)
                    for i in instances
                )
            ),
        ),
        (
            "failed payment attempts, retried",
            str(
                sum(
                    1
                    for i in instances
                    for h in i.history
                    if h.step == "charge_payment" and h.event is None
                )
            ),
        ),
        ("recovered after the crash", str(result.recovered)),
        ("steps run again after the crash", str(sum(len(rerun_steps(i)) for i in instances))),
        ("durable timers re-armed", str(result.timers_rearmed)),
        ("snapshots written", str(sum(i.revision for i in instances))),
        ("total time", f"{result.seconds:.2f} s"),
        ("instances/s", f"{len(instances) / result.seconds:.1f}"),
    ]
    if result.late:
        rows.append(("confirmations after the timeout", str(result.late)))
    return rows


def rerun_steps(instance: hx.Instance) -> list[str]:
    """Return the steps of ``instance`` that ran again after a crash.

    Every finished attempt has a history entry; an attempt number with no entry
    for the attempt before it means that attempt was interrupted and run again.
    """
    seen: dict[str, set[int]] = {}
    for entry in instance.history:
        seen.setdefault(entry.step, set()).add(entry.attempt)
    return [
        step
        for step, attempts in seen.items()
        if any(a > 1 and a - 1 not in attempts for a in attempts)
    ]


def _interest(instance: hx.Instance) -> tuple[bool, bool, bool]:
    """How much an instance shows off: a re-run after the crash, a retry, a timeout."""
    return (
        bool(rerun_steps(instance)),
        any(h.event is None for h in instance.history),
        "escalate" in instance.completed,
    )


@contextlib.contextmanager
def _store_dir(store: str | None, kind: str = "files") -> Iterator[str]:
    if store is not None:
        os.makedirs(
            store if kind == "files" else os.path.dirname(os.path.abspath(store)), exist_ok=True
        )
        yield store
        return
    with tempfile.TemporaryDirectory(prefix="hephaestus-demo-") as path:
        yield path if kind == "files" else os.path.join(path, "demo.sqlite")


def _steps_named(instance: hx.Instance) -> set[str]:
    """Every step key the instance's stored state mentions."""
    return {
        *instance.completed,
        *instance.active,
        *instance.waiting,
        *instance.results,
        *instance.attempts,
        *(entry.step for entry in instance.history),
        *(timer.step for timer in instance.timers),
    }


def strangers(instances: Sequence[hx.Instance]) -> list[hx.Instance]:
    """Return the instances the demo did not make: another workflow, version or steps."""
    steps = set(order.steps)
    return [
        i
        for i in instances
        if i.workflow != order.name or i.version != order.version or not _steps_named(i) <= steps
    ]


def check_store(path: str, kind: str = "files") -> str | None:
    """Say why the demo must not run on ``path``, or return None if it may.

    The demo runs on a new path or an empty directory, or on a store that
    holds only its own orders. Another application's store is refused, not
    "recovered": its instances are not the demo's to run. So is a path that
    holds something but no store, or a store of the other ``kind``.
    """
    from .storage._errors import NotAStore
    from .storage._locate import store_at

    if not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path)):
        return None  # created by the run
    try:
        found_store = store_at(path, read_only=True)
    except NotAStore as exc:
        return f"{exc}; give --store a new path, or one an earlier demo used"
    wanted = hx.SQLiteStorage if kind == "sqlite" else hx.FileStorage
    if not isinstance(found_store, wanted):
        return (
            f"{path!r} is a {type(found_store).__name__} store, not what --storage {kind} "
            "uses: pass the matching --storage, or another --store"
        )

    async def read() -> list[hx.Instance]:
        logging.getLogger("hephaestus.storage").setLevel(logging.CRITICAL)
        async with found_store as storage:
            return await storage.query()

    found = strangers(trio.run(read))
    if not found:
        return None
    kinds = sorted({f"{i.workflow} v{i.version}" for i in found})
    return (
        f"the store {path!r} holds {len(found)} instance(s) the demo did not make "
        f"(workflows: {', '.join(kinds)}): the demo runs only on a new directory or one it "
        "made; give --store another path"
    )


def run_demo(
    *,
    store: str | None,
    instances: int,
    reporter: Reporter | None = None,
    storage: str = "files",
) -> int:
    """Run the demo; return the exit status (0 when every instance finished).

    Refuses (one line on stderr, status 1) a store the demo did not make.
    """
    problem = None if store is None else check_store(store, storage)
    if problem is not None:
        print(f"hephaestus: error: {problem}", file=sys.stderr)
        return 1
    reporter = reporter if reporter is not None else make_reporter()
    try:
        with _store_dir(store, storage) as path:
            where = path if store is not None else f"{path} (temporary)"
            reporter.line(
                f"hephaestus demo: {instances} {'order' if instances == 1 else 'orders'} "
                "of workflow 'order' on "
                f"{'SQLiteStorage' if storage == 'sqlite' else 'FileStorage'} {where}"
            )
            reporter.line(
                "each order: validate -> payment (fails its 1st attempt, retried) + inventory "
                f"-> pack (join) -> wait for delivery (timeout {DELIVERY_TIMEOUT:g}s) -> close"
            )
            result = trio.run(demo_run, path, instances, reporter, storage)
            notes: list[str] = []
            if store is not None:
                quoted = shlex.quote(store)
                notes.append(f"look inside: hephaestus list --store {quoted}")
                pick = max(result.instances, key=_interest)
                notes.append(f"             hephaestus show --store {quoted} {pick.id}")
            noun = "order" if instances == 1 else "orders"
            reporter.summary(f"summary: {instances} {noun}", summarise(result), notes)
    finally:
        reporter.close()
    if not result.ok:  # pragma: no cover - a bug in the engine
        print("hephaestus: error: some orders did not finish", file=sys.stderr)
        return 1
    return 0
