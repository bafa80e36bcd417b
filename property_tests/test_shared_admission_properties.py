"""max_active across engines holds whatever happens to the engines.

Hypothesis draws a schedule of starts sent to random engines of three on one
MemorySharedStorage, interleaved with engines killed (some just after a write
that freed a slot committed), paused past their lease, stopped and replaced,
cancels, and idle time. After every change to a row the store counts the
admitted instances (stored RUNNING or WAITING, or holding a slot): never more
than ``max_active``. Every instance ends (COMPLETED, or CANCELLED when it was
cancelled), and slots are granted in the order the instances were created.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hephaestus as hx
from hephaestus.storage._shared_memory import (
    ConnectionKilled,
    MemorySharedConnection,
    MemorySharedStorage,
)

TTL = 2.0
ENGINES = 3
LIMIT = 2
_ADMITTED = (hx.Status.RUNNING, hx.Status.WAITING)


class Counting(MemorySharedStorage):  # type: ignore[misc]  # final: a test-only subclass
    """Checks the admitted count after every row change; records the order of grants."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.peak = 0
        self.granted: list[str] = []
        self.created: dict[str, int] = {}
        """Id -> place of the write that first stored it PENDING (the creation order)."""
        self.over: list[list[str]] = []
        """The admitted ids at every moment there were more than LIMIT."""

    def _write(self, instance: hx.Instance, owner: Any) -> None:
        super()._write(instance, owner)
        if instance.status is hx.Status.PENDING:
            self.created.setdefault(instance.id, len(self.created))
        self._check()

    def _fill(self, workflow: str, max_active: int) -> int:
        promoted = super()._fill(workflow, max_active)
        self._check()
        return promoted

    def _check(self) -> None:
        admitted = [
            iid for iid, row in self._rows.items() if row.status in _ADMITTED or row.holds_slot
        ]
        for iid in sorted(admitted):
            if iid not in self.granted:
                self.granted.append(iid)
        self.peak = max(self.peak, len(admitted))
        if len(admitted) > LIMIT:
            self.over.append(admitted)


@hx.step(events=("done",))
async def work(ctx: hx.StepContext) -> hx.StepResult:
    await trio.sleep(1.0 + int(ctx.initial["n"]) % 3)
    return "done"


WORKFLOW = hx.Workflow(
    "capped",
    start=work,
    transitions={(work, "done"): hx.Done},
    unique=hx.Unique("c"),
    max_active=LIMIT,
)

Action = tuple[str, int, int]
"""(what, a number, engine)."""

actions = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "start",
                "start",
                "start",
                "kill",
                "die_after_finish",
                "pause",
                "stop",
                "cancel",
                "sleep",
            ]
        ),
        st.integers(0, 5),
        st.integers(0, ENGINES - 1),
    ),
    min_size=1,
    max_size=16,
)


async def run_schedule(schedule: list[Action]) -> tuple[Counting, list[str], set[str]]:
    clock = hx.testing.VirtualClock()
    store = Counting(clock=clock, lease_ttl=TTL)
    ids: list[str] = []
    cancelled: set[str] = set()
    async with store, trio.open_nursery() as nursery:

        async def spawn() -> tuple[hx.Engine, MemorySharedConnection, trio.CancelScope]:
            async def run(*, task_status: trio.TaskStatus[Any]) -> None:
                conn = store.connect()
                with trio.CancelScope() as scope:
                    async with hx.open_engine(
                        workflows=[WORKFLOW], storage=conn, clock=clock
                    ) as engine:
                        task_status.started((engine, conn, scope))
                        await trio.sleep_forever()

            started: tuple[hx.Engine, MemorySharedConnection, trio.CancelScope]
            started = await nursery.start(run)
            return started

        slots = [await spawn() for _ in range(ENGINES)]

        async def on(index: int, call: Callable[[hx.Engine], Awaitable[object]]) -> None:
            """``call`` on that engine; ConnectionKilled if the engine died meanwhile.

            A process that dies takes its callers with it: a call still waiting
            inside a dead engine is cancelled (it would retry its write forever).
            """
            engine, conn, _ = slots[index]
            scope = trio.CancelScope()
            finished = trio.Event()

            async def watch() -> None:
                # conn.killed is a flag the connection sets, with no event to wait on
                while not conn.killed and not finished.is_set():  # noqa: ASYNC110
                    await trio.sleep(0.05)
                scope.cancel()

            nursery.start_soon(watch)
            try:
                with scope:
                    await call(engine)
            finally:
                finished.set()
            if conn.killed:
                raise ConnectionKilled("the engine died during the call")

        async def replace(index: int, *, kill: bool) -> None:
            _, conn, scope = slots[index]
            if kill:
                conn.kill()
            scope.cancel()
            slots[index] = await spawn()

        for what, n, slot in schedule:
            conn = slots[slot][1]
            if conn.killed:  # a die_after_finish struck: that process is gone
                await replace(slot, kill=True)
                conn = slots[slot][1]
            if what == "start":
                iid = f"c::s{len(ids)}"
                try:

                    async def start(engine: hx.Engine, value: str = iid[3:], k: int = n) -> object:
                        return await engine.start(WORKFLOW, value, {"n": k})

                    await on(slot, start)
                except ConnectionKilled:  # it died: before its write, or right after it
                    if await store.get(iid) is None:
                        continue
                ids.append(iid)
            elif what == "kill":
                await replace(slot, kill=True)
            elif what == "die_after_finish":
                conn.kill_after("put_limited")  # its next slot change commits, then it dies
            elif what == "stop":
                await replace(slot, kill=False)
            elif what == "pause":
                conn.pause()
                await trio.sleep(1.5 * TTL)
                conn.resume()
            elif what == "cancel" and ids:
                target = ids[n % len(ids)]
                for attempt in range(ENGINES):  # an engine dying on the way: retry elsewhere
                    index = (slot + attempt) % ENGINES
                    if slots[index][1].killed:
                        await replace(index, kill=True)
                    try:

                        async def cancel(engine: hx.Engine, target: str = target) -> object:
                            await engine.cancel(target)
                            return None

                        await on(index, cancel)
                    except hx.EventRejected:
                        break  # it had completed already
                    except ConnectionKilled:
                        continue
                    cancelled.add(target)
                    break
            elif what == "sleep":
                await trio.sleep(0.5 + n)
        for index in range(ENGINES):
            if slots[index][1].killed:
                await replace(index, kill=True)
            slots[index][1].kill_after(None)
        with trio.fail_after(1000):
            for iid in ids:
                final = await slots[0][0].wait(iid)
                expected = hx.Status.CANCELLED if iid in cancelled else hx.Status.COMPLETED
                assert final.status is expected, (iid, final.status)
        nursery.cancel_scope.cancel()
    return store, ids, cancelled


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=actions)
def test_max_active_holds_across_engines_that_crash_pause_and_restart(
    schedule: list[Action],
) -> None:
    async def main() -> tuple[Counting, list[str], set[str]]:
        return await run_schedule(schedule)

    store, ids, cancelled = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert store.over == []
    assert store.slots("capped") == []
    granted = store.granted
    # Every instance that ran got a slot, in queue order; cancelled ones may never have.
    assert set(ids) - cancelled <= set(granted)
    assert granted == sorted(granted, key=lambda iid: store.created[iid])
