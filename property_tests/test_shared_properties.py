"""Several engines on one shared store end where one engine ends, whatever happens to them.

Hypothesis draws a schedule of starts and resumes sent to random engines,
interleaved with engines being killed (SIGKILL: no release, possibly just
after a write committed and before its caller heard back), paused past
their lease (SIGSTOP), stopped gracefully and replaced (some by engines
that miss every notification), store calls failing once (callers retry),
and idle time. Every
instance must end exactly as it does on one engine with no faults: the same
status, results and history of step outcomes (so no step completion is lost
or applied twice, and no event is delivered twice).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hephaestus as hx
from hephaestus.storage._shared_memory import ConnectionKilled, MemorySharedConnection

TTL = 2.0
ENGINES = 3
INSTANCES = 4


def workflow() -> hx.Workflow:
    """work (1 s) -> approve (WaitForEvent go) -> settle (Wait 3 s) -> finish -> Done."""

    @hx.step(events=("ok",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(1.0)
        return hx.Emit("ok", {"n": ctx.initial["n"]})

    @hx.step(events=("ok",))
    async def finish(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(0.5)
        return hx.Emit("ok", {"total": ctx.results["work"]["n"] + ctx.results["approve"]["v"]})

    approve = hx.WaitForEvent("go", key="approve")
    settle = hx.Wait(3.0, key="settle")
    return hx.Workflow(
        "flow",
        start=work,
        transitions={
            (work, "ok"): approve,
            (approve, "go"): settle,
            (settle, "timeout"): finish,
            (finish, "ok"): hx.Done,
        },
        unique=hx.Unique("f"),
    )


WORKFLOW = workflow()

Action = tuple[str, int, int]
"""(what, instance or seconds, engine)."""

actions = st.lists(
    st.tuples(
        st.sampled_from(
            ["start", "resume", "resume_then_die", "kill", "pause", "stop", "flaky", "sleep"]
        ),
        st.integers(0, INSTANCES - 1),
        st.integers(0, ENGINES - 1),
    ),
    max_size=14,
)


def summary(instance: hx.Instance) -> tuple[Any, ...]:
    return (
        instance.status,
        instance.results,
        [(h.step, h.event) for h in instance.history],
        instance.dedupe_keys,
    )


class Cluster:
    """``ENGINES`` engine slots on one store; a slot whose engine dies gets a new one."""

    def __init__(
        self, nursery: trio.Nursery, store: hx.MemorySharedStorage, clock: Any, *, shared: bool
    ) -> None:
        self.shared = shared
        self.nursery = nursery
        self.store = store
        self.clock = clock
        self.slots: list[tuple[hx.Engine, MemorySharedConnection, trio.CancelScope]] = []

    async def spawn(
        self, *, deaf: bool = False
    ) -> tuple[hx.Engine, MemorySharedConnection, trio.CancelScope]:
        async def run(*, task_status: trio.TaskStatus[Any]) -> None:
            conn = self.store.connect()
            conn.deaf = deaf  # it misses every notification: polling must do
            # The reference run: one engine on a plain MemoryStorage (no shared path at all).
            storage = conn if self.shared else hx.MemoryStorage()
            with trio.CancelScope() as scope:
                async with hx.open_engine(
                    workflows=[WORKFLOW], storage=storage, clock=self.clock
                ) as engine:
                    task_status.started((engine, conn, scope))
                    await trio.sleep_forever()

        slot: tuple[hx.Engine, MemorySharedConnection, trio.CancelScope] = await self.nursery.start(
            run
        )
        return slot

    async def replace(self, index: int, *, kill: bool, deaf: bool = False) -> None:
        _, conn, scope = self.slots[index]
        if kill:
            conn.kill()
        scope.cancel()
        self.slots[index] = await self.spawn(deaf=deaf)

    def engine(self, index: int) -> hx.Engine:
        return self.slots[index][0]


FLAKY = (
    "put_owned",
    "claim",
    "heartbeat",
    "pending_requests",
    "release_instances",
    "claim_instance",
)
"""Store calls a "flaky" action makes fail once (an OSError, nothing stored)."""


async def retrying(call: Callable[[], Awaitable[Any]]) -> Any:
    """Call ``call``, again after an injected fault, as a caller would retry a failed request."""
    for _ in range(len(FLAKY)):
        try:
            return await call()
        except OSError as exc:
            if isinstance(exc, ConnectionKilled):
                raise
    return await call()


async def resume(engine: hx.Engine, n: int) -> None:
    await retrying(lambda: engine.resume(f"f::i{n}", "go", {"v": 10 * n}, dedupe_key=f"go-{n}"))


async def run_schedule(schedule: list[Action], faults: bool) -> list[tuple[Any, ...]]:
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=TTL)
    started: set[int] = set()
    async with store, trio.open_nursery() as nursery:
        cluster = Cluster(nursery, store, clock, shared=faults)
        cluster.slots = [await cluster.spawn() for _ in range(ENGINES if faults else 1)]

        def pick(index: int) -> int:
            return index % len(cluster.slots)

        async def ensure_started(n: int, slot: int) -> None:
            if n not in started:
                engine = cluster.engine(slot)
                await retrying(lambda: engine.start(WORKFLOW, f"i{n}", {"n": n}))
                started.add(n)

        for what, n, slot in schedule:
            slot = pick(slot)
            if what == "start":
                await ensure_started(n, slot)
            elif what in ("resume", "resume_then_die"):
                await ensure_started(n, slot)
                if what == "resume_then_die" and faults:
                    conn = cluster.slots[slot][1]
                    conn.kill_after("put_owned" if n % 2 else "append_request")
                    try:
                        await resume(cluster.engine(slot), n)
                    except ConnectionKilled:
                        await cluster.replace(slot, kill=True)
                        await resume(cluster.engine(pick(slot + 1)), n)  # the caller retries
                    else:
                        conn.kill_after(None)
                        if conn.killed:  # it struck another task of that engine: it is dead
                            await cluster.replace(slot, kill=True)
                else:
                    await resume(cluster.engine(slot), n)
            elif what == "kill" and faults:
                await cluster.replace(slot, kill=True, deaf=n % 2 == 1)
            elif what == "stop" and faults:
                await cluster.replace(slot, kill=False)
            elif what == "pause" and faults:
                conn = cluster.slots[slot][1]
                conn.pause()
                await trio.sleep(1.5 * TTL)
                conn.resume()
            elif what == "flaky" and faults:
                cluster.slots[slot][1].fail_next(FLAKY[n % len(FLAKY)])
            elif what == "sleep" or not faults:
                await trio.sleep(1.0 + n)
        for n in range(INSTANCES):
            await ensure_started(n, 0)
            await resume(cluster.engine(0), n)
        with trio.fail_after(1000):
            finals = [await cluster.engine(0).wait(f"f::i{n}") for n in range(INSTANCES)]
        nursery.cancel_scope.cancel()
    return [summary(final) for final in finals]


def in_trio(fn: Callable[[], Any]) -> Any:
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(schedule=actions)
def test_engines_that_crash_pause_and_restart_end_as_one_engine(schedule: list[Action]) -> None:
    async def single() -> list[tuple[Any, ...]]:
        return await run_schedule(schedule, faults=False)

    async def shared() -> list[tuple[Any, ...]]:
        return await run_schedule(schedule, faults=True)

    assert in_trio(shared) == in_trio(single)
