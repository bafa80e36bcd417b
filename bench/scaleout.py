"""Several engine processes on one PostgreSQL database, one of them killed or paused mid-run.

``run(...)`` is what the multi-process tests (tests/storage/test_postgres_scaleout.py)
and the takeover benchmark (``python -m bench.scaleout``) drive: it starts
``engines`` children (``_scaleout_child``), sends every ``start N`` and
``resume N`` to a randomly chosen live engine, retrying on another when the
chosen one dies before answering (a client with retries: the resume's
dedupe key makes the retry harmless), and, once ``disrupt_after`` instances
have completed, SIGKILLs the victim (``mode="kill"``) or SIGSTOPs it for
``pause`` seconds then SIGCONTs it (``mode="pause"``). It returns what the
database says afterwards (:class:`Outcome`): completed instances, step runs
from the side-effect rows, the takeover time, the engines' epochs.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from hephaestus.testing import _pg_cluster

from ._harness import Config, Row, Section, Stat, in_subprocess, verdict
from ._scaleout_child import SIDE_EFFECTS

ROOT = Path(__file__).resolve().parent.parent
REJOIN_EXTRA = 20
"""Instances started on the paused engine once it is back (``mode="pause"``)."""
RETRIED = frozenset({"OSError"})
"""Errors a client retries on another engine: the one it asked met a storage fault (its
connections were ended while it was paused). ``LeaseLost`` is not among them: an engine
routes a request again when it lost its lease, so a caller never sees it (an error here)."""


@dataclass
class Outcome:
    """What a run left in the database, and when things happened (``time.time()``)."""

    instances: int
    completed: int
    disrupted_at: float | None
    takeover_s: float | None
    """From the kill/pause until no instance with work was still owned by the victim's lease."""
    runs: dict[tuple[str, str], list[tuple[str, float]]] = field(default_factory=dict)
    """(instance id, step) -> [(engine, at)] of every step run (side-effect rows)."""
    epochs: dict[str, int] = field(default_factory=dict)
    history_ok: bool = True
    """Every completed instance has each step completed exactly once in its history."""
    seconds: float = 0.0
    tries: list[tuple[str, str, float, float, str | None]] = field(default_factory=list)
    """(command, engine, sent, answered, answer or None when the engine died first)."""
    engine_ids: dict[str, str] = field(default_factory=dict)
    """Engine name (``engine-K``) -> the engine id its lease has (``epochs``' keys)."""
    telemetry: dict[str, dict[str, int]] = field(default_factory=dict)
    """Engine name -> telemetry event name -> count (takeovers, claims, drops)."""
    retried: list[str] = field(default_factory=list)
    """Answers a client retries on another engine (``RETRIED``)."""
    victim_owned: dict[str, int] = field(default_factory=dict)
    """Status -> instances the victim owned just before it was disrupted."""
    errors: list[str] = field(default_factory=list)

    def duplicates(self) -> dict[tuple[str, str], list[tuple[str, float]]]:
        """The (instance, step) pairs whose body ran more than once."""
        return {key: runs for key, runs in self.runs.items() if len(runs) > 1}


class _Child:
    """One engine process and the commands it has not answered yet."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self.alive = True
        self.engine_id = name
        self.telemetry: dict[str, int] = {}
        self.ready = trio.Event()
        self.waiting: dict[str, trio.Event] = {}
        self.answers: dict[str, str] = {}
        self.stopped = trio.Event()
        self._sending = trio.Lock()

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        try:
            while chunk := await self.process.stdout.receive_some():
                *lines, buffer = (buffer + chunk).split(b"\n")
                for raw in lines:
                    self._line(raw.decode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.alive = False
        self.stopped.set()
        for event in self.waiting.values():
            event.set()  # nobody will answer: the callers retry elsewhere

    def _line(self, line: str) -> None:
        if line.startswith("ready "):
            self.engine_id = line.removeprefix("ready ")
            self.ready.set()
            return
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "tele":
            self.telemetry[parts[1]] = self.telemetry.get(parts[1], 0) + 1
            return
        if len(parts) >= 3 and parts[0] in ("ok", "err"):
            key = f"{parts[1]} {parts[2]}"
            self.answers[key] = line
            event = self.waiting.pop(key, None)
            if event is not None:
                event.set()

    async def ask(self, command: str) -> str | None:
        """Send ``command``; its answer line, or None when the process died first."""
        if not self.alive:
            return None
        event = self.waiting[command] = trio.Event()
        assert self.process.stdin is not None
        try:
            async with self._sending:
                await self.process.stdin.send_all((command + "\n").encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.waiting.pop(command, None)
            return None
        await event.wait()
        return self.answers.pop(command, None)


async def _query(dsn: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    import psycopg

    def run() -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(sql.encode(), args)
            return cur.fetchall() if cur.description is not None else []

    return await trio.to_thread.run_sync(run)


async def run(
    dsn: str,
    *,
    engines: int = 3,
    instances: int = 1_000,
    ttl: float = 1.0,
    mode: str = "kill",
    disrupt_after: int | None = None,
    pause: float | None = None,
    seed: int = 14,
    limit_s: float = 60.0,
) -> Outcome:
    """Run ``instances`` SCALE instances on ``engines`` processes; disrupt one; report.

    ``mode`` is ``"kill"``, ``"pause"`` or ``"none"``; the victim is the first
    engine. ``pause`` defaults to 3 TTLs. Raises ``TimeoutError`` saying what
    was unfinished after ``limit_s`` seconds.
    """
    rng = random.Random(seed)
    await _query(dsn, SIDE_EFFECTS)
    began = time.time()
    children: list[_Child] = []
    outcome = Outcome(instances=instances, completed=0, disrupted_at=None, takeover_s=None)
    disrupt_after = instances // 3 if disrupt_after is None else disrupt_after
    pause = 3 * ttl if pause is None else pause
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    give_up = time.time() + limit_s
    with trio.move_on_after(limit_s + 30) as deadline:  # a backstop: _drive gives up first
        async with trio.open_nursery() as nursery:
            for k in range(engines):
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "bench._scaleout_child", dsn, f"engine-{k}", str(ttl)],
                    stdin=-1,
                    stdout=-1,
                    cwd=str(ROOT),
                    env=env,
                )
                child = _Child(f"engine-{k}", process)
                children.append(child)
                nursery.start_soon(child.read)
            for child in children:
                await child.ready.wait()
            try:
                await _drive(
                    dsn, children, outcome, rng, mode, disrupt_after, pause, ttl, give_up, limit_s
                )
            finally:
                for child in children:
                    if child.process.returncode is None:
                        child.process.send_signal(signal.SIGCONT)
                        child.process.kill()
                with trio.CancelScope(shield=True):
                    for child in children:
                        await child.process.wait()
                        for stream in (child.process.stdin, child.process.stdout):
                            if stream is not None:
                                await stream.aclose()
                nursery.cancel_scope.cancel()
    outcome.seconds = time.time() - began
    if deadline.cancelled_caught:
        raise TimeoutError(f"the run did not finish within {limit_s + 30:g} s")
    outcome.telemetry = {child.name: child.telemetry for child in children}
    outcome.engine_ids = {child.name: child.engine_id for child in children}
    await _collect(dsn, outcome)
    return outcome


async def _drive(
    dsn: str,
    children: list[_Child],
    outcome: Outcome,
    rng: random.Random,
    mode: str,
    disrupt_after: int,
    pause: float,
    ttl: float,
    give_up: float,
    limit_s: float,
) -> None:
    victim = children[0]
    limiter = trio.CapacityLimiter(64)

    async def send(command: str) -> None:
        async with limiter:
            while True:
                live = [c for c in children if c.alive]
                chosen = rng.choice(live)
                sent_at = time.time()
                answer = await chosen.ask(command)
                outcome.tries.append((command, chosen.name, sent_at, time.time(), answer))
                if answer is None:
                    continue  # the engine died before answering: ask another one
                if answer.split()[-1] in RETRIED:
                    outcome.retried.append(answer)
                    continue  # transient: the engine lost its lease meanwhile
                if answer.startswith("err"):
                    outcome.errors.append(answer)
                return

    async def one(n: int) -> None:
        await send(f"start {n}")
        await send(f"resume {n}")

    async def disrupt() -> None:
        if mode == "none":
            return
        while True:
            done = await _query(dsn, "SELECT count(*) FROM hx_instances WHERE status = 'completed'")
            if int(done[0][0]) >= disrupt_after:
                break
            await trio.sleep(0.02)
        lease = await _query(
            dsn, "SELECT epoch FROM hx_engines WHERE engine_id = %s", victim.engine_id
        )
        epoch = int(lease[0][0])
        owned = await _query(
            dsn,
            "SELECT status, count(*) FROM hx_instances WHERE owner_id = %s GROUP BY status",
            victim.engine_id,
        )
        outcome.victim_owned = {str(status): int(n) for status, n in owned}
        outcome.disrupted_at = time.time()
        if mode == "kill":
            victim.process.send_signal(signal.SIGKILL)
        else:
            victim.process.send_signal(signal.SIGSTOP)
        while True:  # until nothing with work is still owned by the victim's lease
            held = await _query(
                dsn,
                "SELECT count(*) FROM hx_instances i WHERE i.owner_id = %s AND i.owner_epoch = %s "
                "AND (i.status = 'running' OR i.next_deadline <= extract(epoch FROM now()) "
                "OR EXISTS (SELECT 1 FROM hx_inbox b WHERE b.instance_id = i.id "
                "AND NOT b.consumed))",
                victim.engine_id,
                epoch,
            )
            if int(held[0][0]) == 0:
                outcome.takeover_s = time.time() - outcome.disrupted_at
                break
            if mode == "pause" and time.time() - outcome.disrupted_at > pause:
                break
            await trio.sleep(0.02)
        if mode == "pause":
            await trio.sleep(max(0.0, outcome.disrupted_at + pause - time.time()))
            victim.process.send_signal(signal.SIGCONT)
            with trio.move_on_after(5 * ttl):  # its first heartbeat starts a new epoch
                while True:
                    now = await _query(
                        dsn, "SELECT epoch FROM hx_engines WHERE engine_id = %s", victim.engine_id
                    )
                    if int(now[0][0]) > epoch:
                        break
                    await trio.sleep(0.02)

            # New work for the engine that came back, sent to it alone: it runs steps again.
            async def start_on_victim(n: int) -> None:
                for _ in range(10):  # the victim itself, retried on a transient error
                    answer = await victim.ask(f"start {n}")
                    if answer is None or answer.startswith("ok"):
                        break
                    outcome.retried.append(answer)
                else:
                    outcome.errors.append(f"start {n} on the rejoined engine kept failing")

            async with trio.open_nursery() as rejoin:
                for n in range(outcome.instances, outcome.instances + REJOIN_EXTRA):
                    rejoin.start_soon(start_on_victim, n)
            for n in range(outcome.instances, outcome.instances + REJOIN_EXTRA):
                await send(f"resume {n}")
            outcome.instances += REJOIN_EXTRA

    async with trio.open_nursery() as nursery:
        nursery.start_soon(disrupt)
        for n in range(outcome.instances):
            nursery.start_soon(one, n)
    while True:  # every start and resume answered: wait for the instances to finish
        done = await _query(dsn, "SELECT count(*) FROM hx_instances WHERE status = 'completed'")
        outcome.completed = int(done[0][0])
        if outcome.completed >= outcome.instances:
            return
        if time.time() > give_up:  # say why while the engines still run
            raise await _stuck(dsn, children, outcome, limit_s)
        await trio.sleep(0.05)


class Stuck(TimeoutError):
    """A run did not finish in time; the message says what it waited for.

    ``overdue_owned`` is True when every unfinished instance is WAITING with
    a timer past due while a *live* engine owns it (so no claim takes it):
    the hole an engine left when it claimed an instance back while releasing
    it (fixed; the kill and pause tests now fail on it like on any stuck run).
    """

    def __init__(self, message: str, *, overdue_owned: bool) -> None:
        super().__init__(message)
        self.overdue_owned = overdue_owned


async def _stuck(dsn: str, children: list[_Child], outcome: Outcome, limit_s: float) -> Stuck:
    """Say what a run that did not finish in ``limit_s`` was waiting for."""
    statuses = await _query(
        dsn,
        "SELECT status, owner_id IS NOT NULL, count(*) FROM hx_instances GROUP BY 1, 2 ORDER BY 1",
    )
    stuck = await _query(
        dsn,
        "SELECT id, status, owner_id, next_deadline, revision FROM hx_instances "
        "WHERE status <> 'completed' ORDER BY id LIMIT 5",
    )
    pending = await _query(dsn, "SELECT count(*) FROM hx_inbox WHERE NOT consumed")
    held: dict[str, str | None] = {}
    if stuck:
        number = str(stuck[0][0]).split("::")[-1]
        for child in children:
            if child.alive:
                with trio.move_on_after(2):
                    held[f"{child.name}={child.engine_id}"] = await child.ask(f"dump {number}")
    unanswered = {c.name: sorted(c.waiting)[:5] for c in children if c.waiting}
    overdue = await _query(
        dsn,
        "SELECT count(*), count(*) FILTER (WHERE i.status = 'waiting' "
        "AND i.next_deadline < extract(epoch FROM now()) - 5 AND EXISTS (SELECT 1 FROM "
        "hx_engines e WHERE e.engine_id = i.owner_id AND e.epoch = i.owner_epoch "
        "AND e.expires_at > extract(epoch FROM now()))) FROM hx_instances i "
        "WHERE i.status <> 'completed'",
    )
    total, overdue_owned = int(overdue[0][0]), int(overdue[0][1])
    text = (
        f"the run did not finish within {limit_s:g} s: instances by (status, owned) "
        f"{statuses}; first unfinished {stuck}; held in memory by {held}; "
        f"pending inbox rows {pending[0][0]}; "
        f"unanswered commands {unanswered}; disrupted at {outcome.disrupted_at}; "
        f"last answers {outcome.tries[-3:]}"
    )
    return Stuck(text, overdue_owned=total > 0 and overdue_owned == total)


async def _collect(dsn: str, outcome: Outcome) -> None:
    from hephaestus._core._codec import decode_instance

    done = await _query(dsn, "SELECT count(*) FROM hx_instances WHERE status = 'completed'")
    outcome.completed = int(done[0][0])
    for iid, step, engine, at in await _query(
        dsn, "SELECT instance_id, step, engine, at FROM hx_side_effects ORDER BY at"
    ):
        outcome.runs.setdefault((str(iid), str(step)), []).append((str(engine), float(at)))
    outcome.epochs = {
        str(e): int(n) for e, n in await _query(dsn, "SELECT engine_id, epoch FROM hx_engines")
    }
    for (blob,) in await _query(dsn, "SELECT snapshot FROM hx_instances"):
        instance = decode_instance(bytes(blob))
        for step in ("begin", "wait_go", "nap", "finish"):
            ends = [
                h for h in instance.history if h.step == step and h.event in ("ok", "go", "timeout")
            ]
            if instance.status.value == "completed" and len(ends) != 1:
                outcome.history_ok = False


def summary(outcome: Outcome, victim: str = "engine-0") -> dict[str, Any]:
    """The figures a report needs: lost, duplicates (and whether all were the victim's)."""
    dups = outcome.duplicates()
    only_victim = all(
        any(engine == victim and (outcome.disrupted_at is None or at <= outcome.disrupted_at)
            for engine, at in runs)
        for runs in dups.values()
    )  # fmt: skip
    return {
        "lost": outcome.instances - outcome.completed,
        "duplicate_steps": len(dups),
        "duplicates_only_in_flight_on_victim": only_victim,
        "takeover_s": outcome.takeover_s,
        "victim_owned": outcome.victim_owned,
        "runs_by_engine": {
            e: sum(1 for runs in outcome.runs.values() for who, _ in runs if who == e)
            for e in sorted({who for runs in outcome.runs.values() for who, _ in runs})
        },
        "epochs": outcome.epochs,
        "seconds": outcome.seconds,
        "errors": outcome.errors[:5],
        "retried": len(outcome.retried),
        "telemetry": outcome.telemetry,
    }


def takeover_child(ttl: float, instances: int) -> dict[str, Any]:
    """One kill run on a new database of a throwaway cluster (``in_subprocess`` target)."""
    with _pg_cluster.server() as admin:
        assert admin is not None
        dsn = _pg_cluster.create_database(admin, "hx_takeover")
        result = trio.run(lambda: run(dsn, instances=instances, ttl=ttl, mode="kill"))
        return summary(result)


def run_group(cfg: Config) -> Section:
    """The ``scaleout`` group of ``python -m bench``: takeover after SIGKILL, by TTL.

    Three engine processes, ``n`` instances (a step, a durable timer, an
    external resume), one engine SIGKILLed mid-run; each run on a new
    throwaway cluster. Takeover: from the kill to the last of the victim's
    instances claimed by another engine. Target (issue #14): within 2 TTLs.
    """
    section = Section(
        "Scale-out on PostgreSQL: takeover after SIGKILL, by lease TTL",
        method=(run_group.__doc__ or "").partition("\n\n")[2],
    )
    if _pg_cluster.binaries() is None:
        section.notes.append("SKIPPED: no PostgreSQL binaries (initdb, pg_ctl) here")
        return section
    n = 100 if cfg.smoke else 1_000
    ttls = (1.0,) if cfg.smoke else (1.0, 2.0, 4.0)
    repeats = 1 if cfg.smoke else min(cfg.repeats, 3)
    for ttl in ttls:
        results = []
        for i in range(repeats):
            cfg.log(f"scaleout: TTL {ttl:g} s, N={n:,}, run {i + 1}/{repeats}")
            results.append(in_subprocess("scaleout:takeover_child", ttl=ttl, instances=n))
        takeovers = [r["takeover_s"] for r in results if r["takeover_s"] is not None]
        value = Stat.of(takeovers) if takeovers else None
        ratio = None if value is None else Stat.of([t / ttl for t in takeovers])
        section.rows.append(
            Row(
                "takeover",
                f"SIGKILL of 1 of 3 engines, TTL {ttl:g} s, N={n:,}",
                value,
                "s",
                baseline=Stat.one(ttl),
                ratio=ratio,
                ratio_label="takeover s / TTL s (baseline: the TTL)",
                target="<= 2 TTLs",
                verdict="" if ratio is None else verdict(ratio.median, 2.0),
            )
        )
        section.notes.append(
            f"TTL {ttl:g} s: lost {[r['lost'] for r in results]}, duplicate step runs "
            f"{[r['duplicate_steps'] for r in results]}, all of them in flight on the killed "
            f"engine: {all(r['duplicates_only_in_flight_on_victim'] for r in results)}"
        )
    return section


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaleout", description="takeover time after SIGKILL, by TTL"
    )
    parser.add_argument("--ttls", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-n", type=int, default=1_000)
    args = parser.parse_args(argv)
    for ttl in (float(t) for t in args.ttls.split(",")):
        results = [
            in_subprocess("scaleout:takeover_child", ttl=ttl, instances=args.n)
            for _ in range(args.repeats)
        ]
        takeovers = [r["takeover_s"] for r in results if r["takeover_s"] is not None]
        median = statistics.median(takeovers) if takeovers else math.nan
        low, high = min(takeovers, default=math.nan), max(takeovers, default=math.nan)
        print(
            f"TTL {ttl:g} s: takeover median {median:.2f} s (min {low:.2f}, max {high:.2f}); "
            f"lost {[r['lost'] for r in results]}, duplicate steps "
            f"{[r['duplicate_steps'] for r in results]}, only in flight on the victim: "
            f"{all(r['duplicates_only_in_flight_on_victim'] for r in results)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
