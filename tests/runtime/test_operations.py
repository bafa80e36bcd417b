"""Operating instances: retry what failed, delete and prune what finished, list in pages."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
import trio
import trio.lowlevel
import trio.testing

import hephaestus as hx
from hephaestus._core._codec import encode_instance
from hephaestus._runtime._paging import for_each_page

from .helpers import Recorder

StorageFactory = Callable[[Path], hx.Storage]

# Every built-in storage.
STORAGES: dict[str, StorageFactory] = {
    "memory": lambda tmp: hx.MemoryStorage(),
    "file": lambda tmp: hx.FileStorage(tmp / "store", durable=False),
    "sqlite": lambda tmp: hx.SQLiteStorage(tmp / "store.sqlite", durable=False),
}


@pytest.fixture(params=sorted(STORAGES))
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], hx.Storage]:
    """Return a factory of one storage per test, the same store every time it is called."""
    factory = STORAGES[request.param]
    made: list[hx.Storage] = []

    def make() -> hx.Storage:
        if not made or request.param != "memory":
            made.append(factory(tmp_path))
        return made[-1]

    return make


class ManualClock:
    """An engine clock that moves only when told to."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


class Flaky:
    """begin -> [pay (fails while ``broken``; 2 attempts), ship] -> join; logs every run."""

    def __init__(self, name: str = "flaky") -> None:
        self.broken = True
        self.runs: list[tuple[str, int]] = []
        self.gate: trio.Event | None = None  # when set, pay waits for it before answering

        @hx.step(events=("ok",))
        async def begin(ctx: hx.StepContext) -> hx.StepResult:
            self.runs.append(("begin", ctx.attempt))
            return hx.Emit("ok", {"n": ctx.initial.get("n", 1)})

        @hx.step(events=("ok",), retry=hx.Retry(max_attempts=2, initial=0.0))
        async def pay(ctx: hx.StepContext) -> hx.StepResult:
            self.runs.append(("pay", ctx.attempt))
            if self.gate is not None:
                await self.gate.wait()
            if self.broken:
                raise RuntimeError("card declined")
            return hx.Emit("ok", {"paid": ctx.results["begin"]["n"]})

        @hx.step(events=("ok",))
        async def ship(ctx: hx.StepContext) -> hx.StepResult:
            self.runs.append(("ship", ctx.attempt))
            return hx.Emit("ok", {"parcel": "p1"})

        @hx.step(events=("ok",))
        async def join(ctx: hx.StepContext) -> hx.StepResult:
            self.runs.append(("join", ctx.attempt))
            return hx.Emit("ok", {"done": ctx.results["pay"]["paid"]})

        self.workflow = hx.Workflow(
            name,
            start=begin,
            transitions={
                (begin, "ok"): [pay, ship],
                (pay, "ok"): join,
                (ship, "ok"): join,
                (join, "ok"): hx.Done,
            },
            unique=hx.Unique("fl"),
        )


async def _failed(engine: hx.Engine, flow: Flaky, value: str = "a") -> hx.Instance:
    iid = await engine.start(flow.workflow, value, {"n": 7})
    final = await engine.wait(iid)
    assert final.status is hx.Status.FAILED
    assert final.error is not None
    assert final.error.step == "pay"
    return final


# -- retry --------------------------------------------------------------------------------


async def test_retry_after_a_step_failed_for_good_completes_and_reruns_only_that_step() -> None:
    flow = Flaky()
    recorder = Recorder()
    async with hx.open_engine(workflows=[flow.workflow], telemetry=recorder) as engine:
        failed = await _failed(engine, flow)
        assert sorted(flow.runs) == [("begin", 1), ("pay", 1), ("pay", 2), ("ship", 1)]
        flow.runs.clear()
        flow.broken = False
        await engine.retry(failed.id)
        final = await engine.wait(failed.id)
    assert final.status is hx.Status.COMPLETED
    assert final.error is None
    assert flow.runs == [("pay", 3), ("join", 1)]  # nothing that completed ran again
    assert final.results == {
        "begin": {"n": 7},
        "pay": {"paid": 7},
        "ship": {"parcel": "p1"},
        "join": {"done": 7},
    }
    assert final.history[: len(failed.history)] == failed.history
    [event] = recorder.named("workflow.retry", failed.id)
    assert event.workflow == "flaky"
    assert event.metadata["steps"] == ["pay"]
    assert recorder.count("workflow.stop", failed.id) == 1


async def test_retry_across_a_restart(make_storage: Callable[[], hx.Storage]) -> None:
    flow = Flaky()
    async with hx.open_engine(workflows=[flow.workflow], storage=make_storage()) as engine:
        failed = await _failed(engine, flow)
    flow.broken = False
    flow.runs.clear()
    async with hx.open_engine(workflows=[flow.workflow], storage=make_storage()) as engine:
        await engine.retry(failed.id)
        final = await engine.wait(failed.id)
    assert final.status is hx.Status.COMPLETED
    assert flow.runs == [("pay", 3), ("join", 1)]


async def test_an_acknowledged_retry_survives_the_engine_closing(
    make_storage: Callable[[], hx.Storage],
) -> None:
    flow = Flaky()
    async with hx.open_engine(workflows=[flow.workflow], storage=make_storage()) as engine:
        failed = await _failed(engine, flow)
        flow.broken = False
        flow.gate = trio.Event()  # the retried attempt cannot finish in this engine
        await engine.retry(failed.id)
        stored = await engine.get(failed.id)
        assert stored.status is hx.Status.RUNNING
    flow.gate = None
    flow.runs.clear()
    async with hx.open_engine(workflows=[flow.workflow], storage=make_storage()) as engine:
        final = await engine.wait(failed.id)
    assert final.status is hx.Status.COMPLETED
    assert flow.runs == [("pay", 4), ("join", 1)]  # attempt 3 was cut short by the close


async def test_retry_of_an_instance_that_has_not_failed_is_rejected_unchanged() -> None:
    flow = Flaky()
    flow.broken = False
    flow.gate = trio.Event()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[flow.workflow], storage=storage) as engine:
        running = await engine.start(flow.workflow, "run")
        await trio.testing.wait_all_tasks_blocked()
        async with storage:  # already open: this only borrows it
            before = encode_instance(await _stored(storage, running))
            with pytest.raises(hx.EventRejected, match="only a failed instance can be retried"):
                await engine.retry(running)
            assert encode_instance(await _stored(storage, running)) == before
            flow.gate.set()
            done = await engine.wait(running)
            assert done.status is hx.Status.COMPLETED
            with pytest.raises(hx.EventRejected, match="it is completed"):
                await engine.retry(running)
            assert (await _stored(storage, running)).revision == done.revision
            with pytest.raises(hx.InstanceNotFound):
                await engine.retry("fl::nobody")
            with pytest.raises(TypeError, match="instance_id must be a str"):
                await engine.retry(42)  # type: ignore[arg-type]


async def test_retry_in_an_engine_without_the_workflow_is_refused_unchanged() -> None:
    flow = Flaky()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[flow.workflow], storage=storage) as engine:
        failed = await _failed(engine, flow)
    async with hx.open_engine(workflows=[], storage=storage) as engine:
        with pytest.raises(hx.UnknownWorkflow, match="register that version"):
            await engine.retry(failed.id)
        assert await engine.get(failed.id) == failed


async def _stored(storage: hx.Storage, instance_id: str) -> hx.Instance:
    found = await storage.get(instance_id)
    assert found is not None
    return found


# -- delete and prune ---------------------------------------------------------------------


def _ops_workflow() -> hx.Workflow:
    """One step whose outcome ``initial["mode"]`` picks: ok, fail, or park (wait for "go")."""

    @hx.step(events=("ok", "park"))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        mode = ctx.initial["mode"]
        if mode == "fail":
            raise RuntimeError("asked to fail")
        return "park" if mode == "park" else "ok"

    park = hx.WaitForEvent("go", key="parked")
    return hx.Workflow(
        "ops",
        start=work,
        transitions={(work, "ok"): hx.Done, (work, "park"): park, (park, "go"): hx.Done},
        unique=hx.Unique("ops"),
    )


OPS = _ops_workflow()


async def _settled(engine: hx.Engine, iid: str) -> hx.Instance:
    instance = await engine.get(iid)
    while instance.status in (hx.Status.PENDING, hx.Status.RUNNING):
        await trio.testing.wait_all_tasks_blocked()
        await trio.lowlevel.checkpoint()
        instance = await engine.get(iid)
    return instance


async def test_delete_removes_a_finished_instance_and_refuses_an_active_one(
    make_storage: Callable[[], hx.Storage],
) -> None:
    storage = make_storage()
    async with hx.open_engine(workflows=[OPS], storage=storage) as engine:
        done = await engine.start(OPS, "d1", {"mode": "ok"})
        await engine.wait(done)
        parked = await engine.start(OPS, "d2", {"mode": "park"})
        waiting = await _settled(engine, parked)
        assert waiting.status is hx.Status.WAITING
        await engine.delete(done)
        with pytest.raises(hx.InstanceNotFound):
            await engine.get(done)
        assert [i.id for i in await engine.list()] == [parked]
        with pytest.raises(
            hx.EventRejected,
            match=r"not deleted: it is waiting; only a finished instance is deleted \(cancel it",
        ):
            await engine.delete(parked)
        assert await engine.get(parked) == waiting
        with pytest.raises(hx.InstanceNotFound):
            await engine.delete(done)  # gone already
        with pytest.raises(TypeError, match="instance_id must be a str"):
            await engine.delete(None)  # type: ignore[arg-type]
        # A deleted id is free: it starts afresh.
        again = await engine.start(OPS, "d1", {"mode": "ok"})
        assert (await engine.wait(again)).revision == 2
        await engine.resume(parked, "go")
        await engine.wait(parked)


async def test_prune_deletes_exactly_the_finished_instances_older_than_the_cut(
    make_storage: Callable[[], hx.Storage],
) -> None:
    clock = ManualClock(100.0)
    storage = make_storage()
    async with hx.open_engine(workflows=[OPS], storage=storage, clock=clock) as engine:
        old_done = await engine.start(OPS, "p1", {"mode": "ok"})
        await engine.wait(old_done)
        old_parked = await engine.start(OPS, "p2", {"mode": "park"})  # active, and old
        await _settled(engine, old_parked)
        clock.t = 200.0
        old_failed = await engine.start(OPS, "p3", {"mode": "fail"})
        await engine.wait(old_failed)
        clock.t = 300.0
        cancelled = await engine.start(OPS, "p4", {"mode": "park"})
        await _settled(engine, cancelled)
        await engine.cancel(cancelled)
        fresh = await engine.start(OPS, "p5", {"mode": "ok"})
        await engine.wait(fresh)
        clock.t = 1000.0
        # The cut is 1000 - 750 = 250: p1 (100) and p3 (200) are older; p4, p5 (300) not.
        assert await engine.prune(older_than=750) == 2
        left = {i.id: i.status for i in await engine.list()}
        assert left == {
            old_parked: hx.Status.WAITING,
            cancelled: hx.Status.CANCELLED,
            fresh: hx.Status.COMPLETED,
        }
        assert await engine.prune(older_than=0, status=hx.Status.CANCELLED) == 1
        assert await engine.prune(older_than=0, status=[hx.Status.FAILED]) == 0
        assert [i.id for i in await engine.list()] == [old_parked, fresh]
        assert await engine.prune(older_than=0.0) == 1
        assert [i.id for i in await engine.list()] == [old_parked]  # never an active one
        assert (await engine.get(old_parked)).status is hx.Status.WAITING
        await engine.resume(old_parked, "go")
        await engine.wait(old_parked)
    async with storage:
        assert [i.id for i in await storage.query()] == [old_parked]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"older_than": -1}, ValueError, "older_than must be a finite number"),
        ({"older_than": float("nan")}, ValueError, "older_than must be a finite number"),
        ({"older_than": float("inf")}, ValueError, "older_than must be a finite number"),
        ({"older_than": "7d"}, ValueError, "older_than must be a finite number"),
        ({"older_than": True}, ValueError, "older_than must be a finite number"),
        ({"older_than": 1, "status": hx.Status.RUNNING}, ValueError, "only finished instances"),
        ({"older_than": 1, "status": "sleepy"}, ValueError, "status must be one of"),
    ],
)
async def test_prune_checks_its_arguments_and_deletes_nothing(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[OPS], storage=storage) as engine:
        iid = await engine.start(OPS, "x", {"mode": "ok"})
        await engine.wait(iid)
        with pytest.raises(error, match=match):
            await engine.prune(**kwargs)
        assert [i.id for i in await engine.list()] == [iid]


# -- list in pages ------------------------------------------------------------------------


class PlainStorage:
    """A storage written from API.md alone (no paging): delegates to a MemoryStorage."""

    def __init__(self) -> None:
        self.inner = hx.MemoryStorage()
        self.queries = 0

    @property
    def is_open(self) -> bool:
        return self.inner.is_open

    async def aopen(self) -> None:
        await self.inner.aopen()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> Self:
        await self.aopen()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def get(self, instance_id: str) -> hx.Instance | None:
        return await self.inner.get(instance_id)

    async def put(self, instance: hx.Instance, *, expected_revision: int | None = None) -> None:
        await self.inner.put(instance, expected_revision=expected_revision)

    async def delete(self, instance_id: str) -> None:
        await self.inner.delete(instance_id)

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: hx.Status | Collection[hx.Status] | None = None,
    ) -> list[hx.Instance]:
        self.queries += 1
        found = await self.inner.query(workflow=workflow, status=status)
        return found[::-1]  # an adapter may answer in any order: the engine sorts


class PagingStorage(PlainStorage):
    """The same, plus the optional ``query_page``; records how it was called."""

    def __init__(self) -> None:
        super().__init__()
        self.pages: list[dict[str, Any]] = []

    async def query_page(
        self,
        *,
        workflow: str | None = None,
        status: hx.Status | Collection[hx.Status] | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[hx.Instance]:
        self.pages.append({"workflow": workflow, "status": status, "after": after, "limit": limit})
        found = sorted(await self.inner.query(workflow=workflow, status=status), key=lambda i: i.id)
        found = [i for i in found if after is None or i.id > after]
        return found if limit is None else found[:limit]


@pytest.mark.parametrize("storage_class", [PlainStorage, PagingStorage])
async def test_list_pages_through_a_store_in_id_order(storage_class: type[PlainStorage]) -> None:
    storage = storage_class()
    clock = ManualClock()
    async with hx.open_engine(workflows=[OPS], storage=storage, clock=clock) as engine:
        ids = [await engine.start(OPS, f"o{n}", {"mode": "ok"}) for n in (1, 2, 10, 3)]
        for iid in ids:
            await engine.wait(iid)
        everything = sorted(ids)  # by id: o1, o10, o2, o3
        pages: list[list[str]] = []
        after: str | None = None
        while True:
            page = await engine.list(limit=3, after=after)
            pages.append([i.id for i in page])
            if len(page) < 3:
                break
            after = page[-1].id
        assert pages == [everything[:3], everything[3:]]
        assert [i.id for i in await engine.list(workflow=OPS, after=everything[1])] == (
            everything[2:]
        )
        assert await engine.list(limit=0) == []
        with pytest.raises(TypeError, match="limit must be an int"):
            await engine.list(limit="3")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="limit must be >= 0"):
            await engine.list(limit=-1)
        with pytest.raises(TypeError, match="after must be an instance id"):
            await engine.list(after=3)  # type: ignore[arg-type]
        clock.t += 1
        assert await engine.prune(older_than=0) == 4  # prune pages through the store too
        assert await engine.list() == []
    if isinstance(storage, PagingStorage):
        terminal = (hx.Status.COMPLETED, hx.Status.FAILED, hx.Status.CANCELLED)
        assert {"workflow": None, "status": terminal, "after": None, "limit": 500} in (
            storage.pages
        )
        assert storage.pages[0] == {"workflow": None, "status": None, "after": None, "limit": 3}
        assert {"workflow": "ops", "status": None, "after": everything[1], "limit": None} in (
            storage.pages
        )


@pytest.mark.parametrize("storage_class", [PlainStorage, PagingStorage])
async def test_for_each_page_reads_a_store_once_or_page_by_page(
    storage_class: type[PlainStorage],
) -> None:
    storage = storage_class()
    async with storage:
        for n in range(7):
            await storage.put(hx.Instance(id=f"i{n}", workflow="w", version=1))
        seen: list[list[str]] = []

        async def handle(page: list[hx.Instance]) -> None:
            seen.append([i.id for i in page])
            for instance in page:  # deleting what a page holds does not disturb the next
                await storage.delete(instance.id)

        await for_each_page(storage, handle, size=3)
        assert seen == [["i0", "i1", "i2"], ["i3", "i4", "i5"], ["i6"]]
        assert await storage.query() == []
    if isinstance(storage, PagingStorage):
        assert [p["after"] for p in storage.pages] == [None, "i2", "i5"]
        assert storage.queries == 1  # the final check above
    else:
        assert storage.queries == 2  # one read for every page, and the final check


# -- races with the runner and with other requests -------------------------------------------


async def test_retry_sent_while_the_failed_runner_is_still_letting_go() -> None:
    # A sibling that takes its time to wind down keeps the failed instance's runner
    # alive: a retry sent meanwhile waits for it, then re-opens the instance.
    release = trio.Event()
    winding_down = trio.Event()
    attempts: list[tuple[str, int]] = []

    @hx.step(events=("ok",))
    async def begin(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    @hx.step(events=("ok",))
    async def fail_once(ctx: hx.StepContext) -> hx.StepResult:
        attempts.append(("fail_once", ctx.attempt))
        if ctx.attempt == 1:
            await trio.testing.wait_all_tasks_blocked()  # the sibling is running
            raise RuntimeError("first attempt fails")
        return "ok"

    @hx.step(events=("ok",))
    async def slow(ctx: hx.StepContext) -> hx.StepResult:
        attempts.append(("slow", ctx.attempt))
        if ctx.attempt == 1:
            try:
                await trio.sleep_forever()
            finally:
                winding_down.set()
                with trio.CancelScope(shield=True):
                    await release.wait()
        return "ok"

    @hx.step(events=("ok",))
    async def end(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    wf = hx.Workflow(
        "winding",
        start=begin,
        transitions={
            (begin, "ok"): [fail_once, slow],
            (fail_once, "ok"): end,
            (slow, "ok"): end,
            (end, "ok"): hx.Done,
        },
        unique=hx.Unique("wd"),
    )
    async with hx.open_engine(workflows=[wf]) as engine:
        try:
            iid = await engine.start(wf, "x")
            await winding_down.wait()
            assert (await engine.get(iid)).status is hx.Status.FAILED
            async with trio.open_nursery() as nursery:
                nursery.start_soon(engine.retry, iid)
                await trio.testing.wait_all_tasks_blocked()
                assert (await engine.get(iid)).status is hx.Status.FAILED  # the retry waits
                release.set()
            final = await engine.wait(iid)
        finally:
            release.set()  # whatever failed, let the engine close
    assert final.status is hx.Status.COMPLETED
    assert sorted(attempts) == [("fail_once", 1), ("fail_once", 2), ("slow", 1), ("slow", 2)]


@pytest.mark.parametrize("first", ["retry", "start"])
async def test_retry_and_start_of_one_failed_id_do_not_both_win(first: str) -> None:
    flow = Flaky()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[flow.workflow], storage=storage) as engine:
        failed = await _failed(engine, flow)
        flow.broken = False
        results: dict[str, str] = {}

        async def do(what: str) -> None:
            try:
                if what == "retry":
                    await engine.retry(failed.id)
                else:
                    await engine.start(flow.workflow, "a", {"n": 1})
                results[what] = "ok"
            except (hx.AlreadyRunning, hx.EventRejected) as exc:
                results[what] = type(exc).__name__

        async with trio.open_nursery() as nursery:
            order = ["retry", "start"] if first == "retry" else ["start", "retry"]
            for what in order:
                nursery.start_soon(do, what)
                await trio.lowlevel.checkpoint()
        assert sorted(results.values()).count("ok") == 1, results
        final = await engine.wait(failed.id)
    assert final.status is hx.Status.COMPLETED
    stored = await _stored_after(storage, failed.id)
    assert stored == final


async def _stored_after(storage: hx.Storage, instance_id: str) -> hx.Instance:
    async with storage:
        return await _stored(storage, instance_id)


async def test_delete_and_retry_of_one_failed_id_do_not_both_win() -> None:
    flow = Flaky()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[flow.workflow], storage=storage) as engine:
        failed = await _failed(engine, flow)
        flow.broken = False
        results: dict[str, str] = {}

        async def do(what: str) -> None:
            try:
                await (engine.delete if what == "delete" else engine.retry)(failed.id)
                results[what] = "ok"
            except (hx.EventRejected, hx.InstanceNotFound) as exc:
                results[what] = type(exc).__name__

        async with trio.open_nursery() as nursery:
            nursery.start_soon(do, "delete")
            nursery.start_soon(do, "retry")
        assert list(results.values()).count("ok") == 1, results
        if results["delete"] == "ok":
            with pytest.raises(hx.InstanceNotFound):
                await engine.get(failed.id)
        else:
            assert (await engine.wait(failed.id)).status is hx.Status.COMPLETED
