"""A request that waits for the token while the instance's passivation releases it (issue #14).

The kill runs (``python -m bench.scaleout``) left about one instance in 15
WAITING with no owner and its ``resume`` answered ``RevisionConflict``:
engine A passivated the instance and held its token to release it; a
``resume`` for it (B's, through A's inbox, or one made on A) waited for
that token; once the release had committed and A had forgotten the
instance, the waiting request applied the event to the snapshot it read
from the store and wrote it, though A no longer held it. On PostgreSQL that
write was refused (nobody owned the row) and explained as a conflict, an
answer the caller took as final, and the event was lost. A request whose
instance was let go while it waited must write nothing and be routed again.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import hephaestus as hx

from .shared_cluster import TTL, spawn

WAIT_GO = hx.WaitForEvent("go", key="wait_go")


@hx.step(events=("ok",))
async def finish(ctx: hx.StepContext) -> hx.StepResult:
    return "ok"


WF = hx.Workflow(
    "letgo",
    start=WAIT_GO,
    transitions={(WAIT_GO, "go"): finish, (finish, "ok"): hx.Done},
    unique=hx.Unique("lg"),
)


@pytest.mark.parametrize("sender", ["other engine", "same engine"])
async def test_a_request_waiting_while_the_release_commits_is_routed_not_written(
    autojump_clock: Any, sender: str
) -> None:
    """The resume is applied once, by an engine that holds the instance, and answered None.

    A's release of the passivated instance is held open (committed at the
    end) until the resume is waiting for A's token. Every write A makes of
    the instance must come while A's registry holds it.
    """
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=TTL)
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [WF], clock)
        b = await spawn(nursery, store, [WF], clock)
        iid = "lg::x"
        release = a.conn.release_instances
        put_owned = a.conn.put_owned
        raced: list[bool] = []
        unheld_writes: list[int] = []
        answered: list[str] = []

        async def resume() -> None:
            node = b if sender == "other engine" else a
            await node.engine.resume(iid, "go", dedupe_key="go-x")  # raises if refused
            answered.append(sender)

        async def release_after_the_resume_waits(lease: hx.Lease, instance_ids: Any) -> None:
            if iid in instance_ids and not raced:
                raced.append(True)
                nursery.start_soon(resume)
                await trio.sleep(TTL / 16)  # the resume reaches A and waits for its token
            await release(lease, instance_ids)

        async def watched_put(lease: hx.Lease, instance: hx.Instance, **kwargs: Any) -> None:
            entry = a.engine._registry.get(instance.id)
            if instance.id == iid and entry is None:
                unheld_writes.append(instance.revision)
            await put_owned(lease, instance, **kwargs)

        a.conn.release_instances = release_after_the_resume_waits  # type: ignore[method-assign]
        a.conn.put_owned = watched_put  # type: ignore[method-assign]
        await a.engine.start(WF, "x")
        with trio.fail_after(20 * TTL):
            done = await b.engine.wait(iid)
        assert raced, "the release never ran: the race was not forced"
        assert unheld_writes == [], "A wrote an instance it had let go"
        assert answered == [sender]
        assert done.status is hx.Status.COMPLETED
        assert [h.step for h in done.history if h.event == "go"] == ["wait_go"]
        nursery.cancel_scope.cancel()


async def test_a_request_that_meets_the_release_at_its_first_checkpoint_is_routed(
    autojump_clock: Any,
) -> None:
    """The same race one checkpoint earlier: the entry goes as the request starts.

    A serves B's inbox row: the instance is still held when ``_serve_row``
    looks, and A's release returns at the request's first checkpoint. Which
    of the two tasks trio runs first there is random, so the race is run for
    several instances; none may be written by A once it let go of it.
    """
    clock = hx.testing.VirtualClock()
    store = hx.MemorySharedStorage(clock=clock, lease_ttl=TTL)
    async with store, trio.open_nursery() as nursery:
        a = await spawn(nursery, store, [WF], clock)
        b = await spawn(nursery, store, [WF], clock)
        release = a.conn.release_instances
        pending = a.conn.pending_requests
        put_owned = a.conn.put_owned
        racing: dict[str, tuple[trio.Event, trio.Event]] = {}
        unheld_writes: list[str] = []

        async def resume_on_b(iid: str) -> None:
            await b.engine.resume(iid, "go", dedupe_key=f"go-{iid}")

        async def release_then_wait(lease: hx.Lease, instance_ids: Any) -> None:
            ids = [i for i in instance_ids if i.startswith("lg::") and i not in racing]
            if not ids:
                await release(lease, instance_ids)
                return
            committed, served = racing[ids[0]] = (trio.Event(), trio.Event())
            nursery.start_soon(resume_on_b, ids[0])
            await trio.sleep(TTL / 16)  # B's row is in A's inbox; A waits to read it
            await release(lease, instance_ids)
            committed.set()
            await served.wait()  # returns at the request's first checkpoint (or after it)

        async def pending_after_the_release(instance_id: str) -> Any:
            events = racing.get(instance_id)
            if events is not None and not events[1].is_set():
                await events[0].wait()
                rows = await pending(instance_id)
                events[1].set()
                return rows
            return await pending(instance_id)

        async def watched_put(lease: hx.Lease, instance: hx.Instance, **kwargs: Any) -> None:
            if a.engine._registry.get(instance.id) is None:
                unheld_writes.append(instance.id)
            await put_owned(lease, instance, **kwargs)

        a.conn.release_instances = release_then_wait  # type: ignore[method-assign]
        a.conn.pending_requests = pending_after_the_release  # type: ignore[method-assign]
        a.conn.put_owned = watched_put  # type: ignore[method-assign]
        with trio.fail_after(100 * TTL):
            for n in range(8):
                iid = await a.engine.start(WF, str(n))
                done = await b.engine.wait(iid)
                assert done.status is hx.Status.COMPLETED
                assert [h.step for h in done.history if h.event == "go"] == ["wait_go"]
        assert len(racing) == 8, "the race was not run for every instance"
        assert unheld_writes == [], "A wrote an instance it had let go"
        nursery.cancel_scope.cancel()
