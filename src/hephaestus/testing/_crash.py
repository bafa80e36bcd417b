"""Crash points, and the storage wrapper that makes the engine "die" at one."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import TypeAlias, final

import trio

from .._core._model import Instance, Status
from .._core._seconds import check_seconds
from ..storage._memory import MemoryStorage
from ..storage._protocol import StorageBase


@final
@dataclass(frozen=True, repr=False)
class CrashPoint:
    """Kill the engine just before it persists a snapshot, then recover.

    Name the snapshot either by number, ``CrashPoint(write=3)``, or by what
    it records, ``CrashPoint(step="charge")``: the first write that records
    an outcome of step ``charge`` (it ended, failed or suspended). That is the
    classic idempotency test: the step did its work, the engine died before
    storing that, so the step runs again after recovery.

    Writes are counted over the whole run, after the one that records the
    start: ``write=1`` is usually the outcome of the start step. The snapshot
    being written is lost, as in a real crash, so whatever it recorded (a step
    that ended, a timer that fired, an event that came in) happens again, or
    differently, after recovery. The harness then leaves the engine's
    ``async with`` block, waits ``downtime`` virtual seconds and opens a new
    engine on the same storage, which recovers the instance.

    Raises:
        ValueError: neither or both of ``write`` and ``step``, ``write`` not an
            int >= 1, or a negative ``downtime``.
    """

    write: int | None = None
    _: KW_ONLY
    step: str | None = None
    downtime: float = 0.0

    def __post_init__(self) -> None:
        if (self.write is None) == (self.step is None):
            raise ValueError("CrashPoint needs write=N or step='key' (one of them)")
        if self.write is not None and (
            isinstance(self.write, bool) or not isinstance(self.write, int) or self.write < 1
        ):
            raise ValueError(f"CrashPoint.write must be an int >= 1, got {self.write!r}")
        if self.step is not None and (not isinstance(self.step, str) or not self.step):
            raise ValueError(f"CrashPoint.step must be a step key, got {self.step!r}")
        check_seconds(self.downtime, "CrashPoint.downtime")

    def __repr__(self) -> str:
        where = f"write={self.write!r}" if self.write is not None else f"step={self.step!r}"
        downtime = f", downtime={self.downtime!r}" if self.downtime else ""
        return f"CrashPoint({where}{downtime})"

    def hits(self, write: int, instance: Instance, previous: Instance | None) -> bool:
        """True when the ``write``-th snapshot, ``instance``, is the one to lose."""
        if self.write is not None:
            return self.write == write
        if previous is None:
            return False
        told = instance.history[len(previous.history) :]
        return any(entry.step == self.step for entry in told) or (
            self.step in instance.waiting and self.step not in previous.waiting
        )


CrashAt: TypeAlias = int | CrashPoint | Sequence[int | CrashPoint] | None
"""``crash_at=``: a write number, a CrashPoint, several of them, or None."""


def crash_plan(crash_at: CrashAt) -> tuple[CrashPoint, ...]:
    """Return the distinct crash points of ``crash_at``."""
    if crash_at is None:
        return ()
    items: Iterable[int | CrashPoint] = (
        [crash_at] if isinstance(crash_at, int | CrashPoint) else crash_at
    )
    points: list[CrashPoint] = []
    for item in items:
        point = item if isinstance(item, CrashPoint) else CrashPoint(item)
        if point not in points:
            points.append(point)
    return tuple(points)


@final
@dataclass(frozen=True)
class CrashReport:
    """A crash that happened: its point and the snapshot it lost (and the one before)."""

    point: CrashPoint
    write: int
    lost: Instance
    previous: Instance | None

    def describe(self) -> str:
        """Say in one line what the lost write would have recorded."""
        before = self.previous
        lost = self.lost
        told = []
        history = lost.history[len(before.history) :] if before is not None else lost.history
        for entry in history:
            if entry.event is not None:
                told.append(
                    f"step {entry.step!r} attempt {entry.attempt} ended with {entry.event!r}"
                )
            else:
                told.append(f"step {entry.step!r} attempt {entry.attempt} failed ({entry.error})")
        if before is not None:
            suspended = sorted(set(lost.waiting) - set(before.waiting))
            told.extend(f"step {key!r} suspended" for key in suspended)
            started = [key for key in lost.active if key not in before.active]
            if started and not history:
                told.append(f"steps {started!r} were due to start")
        if not told:
            told.append(f"instance became {lost.status.value}")
        downtime = f", down for {self.point.downtime:g} s" if self.point.downtime else ""
        return f"the engine died before persisting write {self.write} ({'; '.join(told)}){downtime}"


@final
class CrashingStorage(StorageBase):
    """A MemoryStorage whose writes stop for good at the planned crash points.

    At a crash point ``put`` stores nothing, sets :attr:`crashed` and blocks
    until cancelled: the harness then tears the engine down. While crashed,
    every call blocks (a dead process does nothing); :meth:`revive` ends that.
    It also keeps every snapshot it stored, in order, for the invariant checks.
    """

    def __init__(self, plan: Sequence[CrashPoint]) -> None:
        self.inner = MemoryStorage()
        self.plan = list(plan)
        self.writes = -1  # the start snapshot is write 0
        self.dead = False
        self.crashed = trio.Event()
        self.snapshots: list[Instance] = []
        self.crashes: list[CrashReport] = []
        self.on_crash: Callable[[], object] = lambda: None

    async def _open(self) -> None:
        await self.inner.aopen()

    async def _close(self) -> None:
        await self.inner.aclose()

    async def _dead(self) -> None:
        if self.dead:
            await trio.sleep_forever()

    async def get(self, instance_id: str) -> Instance | None:
        await self._dead()
        return await self.inner.get(instance_id)

    async def put(self, instance: Instance, *, expected_revision: int | None = None) -> None:
        await self._dead()
        self.writes += 1
        previous = next((s for s in reversed(self.snapshots) if s.id == instance.id), None)
        point = next((p for p in self.plan if p.hits(self.writes, instance, previous)), None)
        if point is not None:
            self.plan.remove(point)
            self.crashes.append(CrashReport(point, self.writes, instance, previous))
            self.dead = True
            self.crashed.set()
            self.on_crash()
            await trio.sleep_forever()
        await self.inner.put(instance, expected_revision=expected_revision)
        self.snapshots.append(instance)

    async def delete(self, instance_id: str) -> None:
        await self._dead()
        await self.inner.delete(instance_id)

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: Status | Collection[Status] | None = None,
    ) -> list[Instance]:
        await self._dead()
        return await self.inner.query(workflow=workflow, status=status)

    def revive(self) -> None:
        """Let the storage work again, for the engine that recovers after a crash."""
        self.dead = False
        self.crashed = trio.Event()
