"""Every Engine method: its happy path and every error it can raise."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx

from .helpers import clock, event_workflow, fan_expected, fan_workflow, single_step_workflow

# --- start -------------------------------------------------------------------------------------


async def test_start_persists_pending_snapshot_before_returning(autojump_clock: Any) -> None:
    wf = fan_workflow(delay=1.0)
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "abc-123", {"n": 4}, metadata={"who": "me"})
        assert iid == "fan::abc-123"
        stored = await storage.get(iid)
        assert stored is not None
        assert stored.workflow == "fan"
        assert stored.version == 1
        assert stored.initial == {"n": 4}
        assert stored.metadata == {"who": "me"}
        assert stored.revision == 1  # the first persisted change
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.results == fan_expected(4)
    assert set(final.completed) == {"split", "left", "right", "join"}


async def test_start_by_name_takes_highest_version(autojump_clock: Any) -> None:
    v1 = fan_workflow(version=1)
    v2 = fan_workflow(version=2)
    async with hx.open_engine(workflows=[v2, v1], clock=clock()) as engine:
        latest = await engine.start("fan", "a", {"n": 1})
        old = await engine.start("fan", "b", {"n": 1}, version=1)
        assert (await engine.get(latest)).version == 2
        assert (await engine.get(old)).version == 1
        assert (await engine.wait(old)).status is hx.Status.COMPLETED


async def test_start_accepts_uuid_business_value(autojump_clock: Any) -> None:
    wf = fan_workflow()
    value = "123e4567-e89b-12d3-a456-426614174000"
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        assert await engine.start(wf, value, {"n": 0}) == f"fan::{value}"


@pytest.mark.parametrize(
    ("workflow", "version"),
    [("nope", None), ("fan", 2), ("fan", 99)],
)
async def test_start_unknown_workflow_or_version(
    autojump_clock: Any, workflow: str, version: int | None
) -> None:
    wf = fan_workflow()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        with pytest.raises(hx.UnknownWorkflow, match="not registered"):
            await engine.start(workflow, "a", {"n": 1}, version=version)
        assert await engine.list() == []


async def test_start_unregistered_workflow_object(autojump_clock: Any) -> None:
    registered = fan_workflow()
    other_same_name = fan_workflow()
    stranger = fan_workflow("stranger", key="str")
    async with hx.open_engine(workflows=[registered], clock=clock()) as engine:
        with pytest.raises(hx.UnknownWorkflow):
            await engine.start(stranger, "a", {"n": 1})
        with pytest.raises(hx.UnknownWorkflow, match="different workflow object"):
            await engine.start(other_same_name, "a", {"n": 1})
        with pytest.raises(hx.UnknownWorkflow):
            await engine.start(registered, "a", {"n": 1}, version=2)
        assert await engine.list() == []


@pytest.mark.parametrize("value", ["", "a b", "x" * 129, "é", "a/b", "a::b", 12, None])
async def test_start_invalid_business_key(autojump_clock: Any, value: Any) -> None:
    wf = fan_workflow()
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        with pytest.raises(hx.InvalidBusinessKey) as info:
            await engine.start(wf, value, {"n": 1})
        assert isinstance(info.value, ValueError)
        assert await engine.list() == []


@pytest.mark.parametrize(
    ("initial", "metadata"),
    [
        ({"x": object()}, None),
        ({1: "int key"}, None),
        ({"n": 1}, {"m": {1, 2} and object()}),
        ({"n": 1}, {2: "int key"}),
        (["not", "a", "dict"], None),
    ],
)
async def test_start_non_serialisable_initial_or_metadata(
    autojump_clock: Any, initial: Any, metadata: Any
) -> None:
    wf = fan_workflow()
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        with pytest.raises(hx.InvalidResult):
            await engine.start(wf, "a", initial, metadata=metadata)
        assert await engine.list() == []
        # The id is not held: a good start with the same value works.
        iid = await engine.start(wf, "a", {"n": 1})
        assert (await engine.wait(iid)).status is hx.Status.COMPLETED


async def test_already_running_same_workflow(autojump_clock: Any) -> None:
    wf = event_workflow()
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()  # its first step has suspended
        before = await engine.get(iid)
        with pytest.raises(hx.AlreadyRunning, match="already"):
            await engine.start(wf, "a")
        after = await engine.get(iid)
        assert after.revision == before.revision
        assert after.created_at == before.created_at
        await engine.start(wf, "b")  # another value is fine


@pytest.mark.parametrize("scope", ["workflow", "version", "global"])
async def test_already_running_while_suspended_per_scope(autojump_clock: Any, scope: str) -> None:
    wf = fan_workflow(delay=10.0, scope=scope)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a", {"n": 1})
        with pytest.raises(hx.AlreadyRunning):
            await engine.start(wf, "a", {"n": 2})
        final = await engine.wait(iid)
        assert final.initial == {"n": 1}  # the rejected start changed nothing
        assert final.results == fan_expected(1)


async def test_global_scope_spans_workflows(autojump_clock: Any) -> None:
    first = fan_workflow("first", key="order", delay=10.0, scope="global")
    second = fan_workflow("second", key="order", delay=10.0, scope="global")
    async with hx.open_engine(workflows=[first, second], clock=clock()) as engine:
        iid = await engine.start(first, "a", {"n": 1})
        with pytest.raises(hx.AlreadyRunning):
            await engine.start(second, "a", {"n": 1})
        await engine.wait(iid)
        again = await engine.start(second, "a", {"n": 2})
        assert again == iid
        final = await engine.wait(again)
        assert final.workflow == "second"
        assert final.results == fan_expected(2)


async def test_ids_shared_across_workflows_with_same_key(autojump_clock: Any) -> None:
    # Under scope "global" ids are key::value for every workflow sharing the key, so
    # a second workflow cannot take an id that an active instance holds.
    first = fan_workflow("first", key="order", delay=10.0, scope="global")
    second = fan_workflow("second", key="order", delay=10.0, scope="global")
    async with hx.open_engine(workflows=[first, second], clock=clock()) as engine:
        iid = await engine.start(first, "a", {"n": 1})
        with pytest.raises(hx.AlreadyRunning, match="already running"):
            await engine.start(second, "a", {"n": 1})
        assert (await engine.wait(iid)).workflow == "first"


async def test_version_scope_runs_versions_side_by_side(autojump_clock: Any) -> None:
    v1 = fan_workflow(delay=10.0, scope="version", version=1)
    v2 = fan_workflow(delay=10.0, scope="version", version=2)
    async with hx.open_engine(workflows=[v1, v2], clock=clock()) as engine:
        iid = await engine.start(v1, "a", {"n": 1})
        assert iid == "fan::a::v1"
        with pytest.raises(hx.AlreadyRunning):
            await engine.start(v1, "a", {"n": 1})
        assert await engine.start(v2, "a", {"n": 1}) == "fan::a::v2"
        final = await engine.wait(iid)
        assert final.version == 1
        assert final.status is hx.Status.COMPLETED
        assert (await engine.wait("fan::a::v2")).version == 2


async def test_scope_none_gives_every_start_its_own_id(autojump_clock: Any) -> None:
    wf = fan_workflow(delay=10.0, scope="none")
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        ids = [await engine.start(wf, "a", {"n": i}) for i in range(5)]
        assert len(set(ids)) == 5
        for i, iid in enumerate(ids):
            assert iid.startswith("fan::a::")
            assert len(iid) == len("fan::a::") + 8
            assert (await engine.wait(iid)).results == fan_expected(i)


async def test_concurrent_starts_of_same_id_exactly_one_wins(autojump_clock: Any) -> None:
    wf = fan_workflow(delay=1.0)
    storage = hx.MemoryStorage()
    won: list[str] = []
    lost: list[hx.AlreadyRunning] = []
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:

        async def attempt(n: int) -> None:
            try:
                won.append(await engine.start(wf, "same", {"n": n}))
            except hx.AlreadyRunning as exc:
                lost.append(exc)

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(attempt, n)
        assert len(won) == 1
        assert len(lost) == 19
        final = await engine.wait(won[0])
        assert final.status is hx.Status.COMPLETED
        assert final.revision == (await storage.get(won[0])).revision  # type: ignore[union-attr]
        assert len(await engine.list()) == 1


async def test_concurrent_starts_across_workflows_sharing_a_global_key(
    autojump_clock: Any,
) -> None:
    first = fan_workflow("first", key="order", delay=1.0, scope="global")
    second = fan_workflow("second", key="order", delay=1.0, scope="global")
    won: list[str] = []
    lost: list[str] = []
    async with hx.open_engine(workflows=[first, second], clock=clock()) as engine:

        async def attempt(wf: hx.Workflow) -> None:
            try:
                await engine.start(wf, "same", {"n": 1})
                won.append(wf.name)
            except hx.AlreadyRunning:
                lost.append(wf.name)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(attempt, first)
                nursery.start_soon(attempt, second)
        assert len(won) == 1
        assert len(lost) == 9
        final = await engine.wait("order::same")
        assert final.workflow == won[0]


async def test_concurrent_starts_with_scope_none_all_win(autojump_clock: Any) -> None:
    wf = fan_workflow(delay=1.0, scope="none")
    ids: list[str] = []
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:

        async def attempt(n: int) -> None:
            ids.append(await engine.start(wf, "same", {"n": n}))

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(attempt, n)
        assert len(set(ids)) == 20
        for iid in ids:
            assert (await engine.wait(iid)).status is hx.Status.COMPLETED


async def test_finished_id_starts_again_with_growing_revision(autojump_clock: Any) -> None:
    wf = fan_workflow(delay=1.0)
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a", {"n": 1})
        first = await engine.wait(iid)
        again = await engine.start(wf, "a", {"n": 5})
        assert again == iid
        restarted = await storage.get(iid)
        assert restarted is not None
        # The stored revision never goes back: the new start is one more change.
        assert restarted.revision == first.revision + 1
        assert restarted.initial == {"n": 5}
        assert restarted.results == {}
        second = await engine.wait(iid)
        assert second.results == fan_expected(5)
        assert second.revision > first.revision + 1
        third_id = await engine.start(wf, "a", {"n": 6})
        assert (await engine.wait(third_id)).revision > second.revision
    # ...and across engines too: the stored revision keeps growing.
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        before = (await engine.get(iid)).revision
        await engine.start(wf, "a", {"n": 7})
        assert (await engine.wait(iid)).revision > before


async def test_failed_and_cancelled_ids_can_start_again(autojump_clock: Any) -> None:
    async def boom(ctx: hx.StepContext) -> hx.StepResult:
        if ctx.initial.get("fail"):
            raise RuntimeError("boom")
        await trio.sleep(5)
        return "ok"

    wf = single_step_workflow(boom)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a", {"fail": True})
        assert (await engine.wait(iid)).status is hx.Status.FAILED
        await engine.start(wf, "a")
        await engine.cancel(iid)
        assert (await engine.wait(iid)).status is hx.Status.CANCELLED
        await engine.start(wf, "a")
        assert (await engine.wait(iid)).status is hx.Status.COMPLETED


# --- resume ------------------------------------------------------------------------------------


async def test_resume_delivers_to_suspended_step(autojump_clock: Any) -> None:
    wf = event_workflow()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        waiting = await engine.get(iid)
        assert waiting.status is hx.Status.WAITING
        assert "approve" in waiting.waiting
        await engine.resume(iid, "go", {"by": "alice"})
        stored = await storage.get(iid)  # persisted before resume returned
        assert stored is not None
        assert "approve" in stored.completed
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.results == {
        "prepare": {},  # a bare event: an entry all the same
        "approve": {"by": "alice"},
        "finish": {"approved": "alice"},
    }


async def test_resume_with_dedupe_key_is_accepted_once(autojump_clock: Any) -> None:
    wf = event_workflow()
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        await engine.resume(iid, "go", {"by": "alice"}, dedupe_key="k1")
        await trio.testing.wait_all_tasks_blocked()
        # The instance may be finished by now; a duplicate is ignored either way
        # while it runs, and rejected once it is terminal.
        final = await engine.wait(iid)
        assert final.results["approve"] == {"by": "alice"}


async def test_resume_duplicate_dedupe_key_is_ignored_while_active(autojump_clock: Any) -> None:
    two = hx.WaitForEvent("go", key="two")
    one = hx.WaitForEvent("go", key="one")
    wf = hx.Workflow(
        "dd",
        start=one,
        transitions={(one, "go"): two, (two, "go"): hx.Done},
        unique=hx.Unique("dd"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        await engine.resume(iid, "go", {"n": 1}, dedupe_key="same")
        await trio.testing.wait_all_tasks_blocked()
        revision = (await engine.get(iid)).revision
        await engine.resume(iid, "go", {"n": 2}, dedupe_key="same")
        await trio.testing.wait_all_tasks_blocked()
        after = await engine.get(iid)
        assert after.revision == revision
        assert after.status is hx.Status.WAITING
        await engine.resume(iid, "go", {"n": 3}, dedupe_key="other")
        final = await engine.wait(iid)
        assert final.results == {"one": {"n": 1}, "two": {"n": 3}}


async def test_resume_errors(autojump_clock: Any) -> None:
    wf = event_workflow()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        with pytest.raises(hx.InstanceNotFound) as not_found:
            await engine.resume("ev::missing", "go")
        assert isinstance(not_found.value, LookupError)
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        revision = (await engine.get(iid)).revision
        with pytest.raises(hx.UndeclaredEvent, match="nope"):
            await engine.resume(iid, "nope")
        with pytest.raises(hx.EventRejected, match="no step 'ghost'"):
            await engine.resume(iid, "go", step="ghost")
        with pytest.raises(hx.UndeclaredEvent):
            await engine.resume(iid, "go", step="prepare")
        # "ok" is declared, but only by steps that have completed.
        with pytest.raises(hx.EventRejected, match="cannot be accepted"):
            await engine.resume(iid, "ok", step="prepare")
        with pytest.raises(hx.InvalidResult):
            await engine.resume(iid, "go", {"bad": object()})
        with pytest.raises(hx.InvalidResult):
            await engine.resume(iid, "go", {3: "int key"})  # type: ignore[dict-item]
        with pytest.raises(hx.InvalidResult, match="dict"):
            await engine.resume(iid, "go", [("by", "x")])  # type: ignore[arg-type]
        with pytest.raises(hx.EventRejected):
            await engine.resume(iid, "")
        after = await storage.get(iid)
        assert after is not None
        assert after.revision == revision
        await engine.resume(iid, "go", {"by": "bob"})
        await engine.wait(iid)
        with pytest.raises(hx.EventRejected, match="completed"):
            await engine.resume(iid, "go")


async def test_resume_ambiguous_needs_step(autojump_clock: Any) -> None:
    @hx.step(events=("ok",))
    async def begin(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    left = hx.WaitForEvent("go", key="left")
    right = hx.WaitForEvent("go", key="right")

    @hx.step(events=("ok",))
    async def end(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    wf = hx.Workflow(
        "amb",
        start=begin,
        transitions={
            (begin, "ok"): [left, right],
            (left, "go"): end,
            (right, "go"): end,
            (end, "ok"): hx.Done,
        },
        unique=hx.Unique("amb"),
    )
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(hx.EventRejected, match="step="):
            await engine.resume(iid, "go")
        await engine.resume(iid, "go", {"side": "r"}, step="right")
        await engine.resume(iid, "go", {"side": "l"})  # only one is left
        final = await engine.wait(iid)
        assert final.results == {
            "begin": {},
            "left": {"side": "l"},
            "right": {"side": "r"},
            "end": {},
        }


async def test_resume_instance_of_unregistered_workflow(autojump_clock: Any) -> None:
    wf = event_workflow()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
    other = fan_workflow()
    async with hx.open_engine(workflows=[other], storage=storage, clock=clock()) as engine:
        with pytest.raises(hx.EventRejected, match="register"):
            await engine.resume(iid, "go")
        with pytest.raises(hx.EventRejected):
            await engine.cancel(iid)
        with pytest.raises(hx.EventRejected):
            await engine.wait(iid)
        assert (await engine.get(iid)).status is hx.Status.WAITING


# --- schedule_resume / cancel_timer ------------------------------------------------------------


def _parked_workflow() -> hx.Workflow:
    @hx.step(events=("go", "timeout"))
    async def park(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Suspend()

    @hx.step(events=("ok",))
    async def plain(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    return hx.Workflow(
        "parked",
        start=plain,
        transitions={
            (plain, "ok"): park,
            (park, "go"): hx.Done,
            (park, "timeout"): hx.Done,
        },
        unique=hx.Unique("parked"),
    )


async def test_schedule_resume_fires_after_delay(autojump_clock: Any) -> None:
    wf = _parked_workflow()
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
        timer_id = await engine.schedule_resume(iid, "park", 30)
        assert isinstance(timer_id, str)
        stored = await storage.get(iid)
        assert stored is not None
        assert [t.id for t in stored.timers] == [timer_id]
        final = await engine.wait(iid)
        assert trio.current_time() - t0 == pytest.approx(30)
        assert final.status is hx.Status.COMPLETED
        assert final.history[-1].step == "park"
        assert final.history[-1].event == "timeout"
        assert final.timers == ()


async def test_cancel_timer(autojump_clock: Any) -> None:
    wf = _parked_workflow()
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        timer_id = await engine.schedule_resume(iid, "park", 30)
        assert await engine.cancel_timer(iid, timer_id) is True
        assert await engine.cancel_timer(iid, timer_id) is False
        assert await engine.cancel_timer(iid, "t999") is False
        await trio.sleep(100)
        still = await engine.get(iid)
        assert still.status is hx.Status.WAITING
        assert still.timers == ()
        await engine.resume(iid, "go")
        final = await engine.wait(iid)
        assert final.history[-1].event == "go"
        assert await engine.cancel_timer(iid, timer_id) is False  # terminal: nothing pending


async def test_schedule_resume_errors(autojump_clock: Any) -> None:
    wf = _parked_workflow()
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        with pytest.raises(hx.InstanceNotFound):
            await engine.schedule_resume("parked::missing", "park", 1)
        with pytest.raises(hx.InstanceNotFound):
            await engine.cancel_timer("parked::missing", "t1")
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        revision = (await engine.get(iid)).revision
        for bad in (-1, float("nan"), float("inf"), True, "5"):
            with pytest.raises(ValueError, match="delay"):
                await engine.schedule_resume(iid, "park", bad)  # type: ignore[arg-type]
        with pytest.raises(hx.EventRejected, match="no step"):
            await engine.schedule_resume(iid, "ghost", 1)
        with pytest.raises(hx.UndeclaredEvent, match="timeout"):
            await engine.schedule_resume(iid, "plain", 1)
        assert (await engine.get(iid)).revision == revision
        await engine.resume(iid, "go")
        await engine.wait(iid)
        with pytest.raises(hx.EventRejected):
            await engine.schedule_resume(iid, "park", 1)


# --- cancel ------------------------------------------------------------------------------------


async def test_cancel_is_idempotent_and_rejected_on_finished(autojump_clock: Any) -> None:
    wf = event_workflow()

    async def boom(ctx: hx.StepContext) -> hx.StepResult:
        raise RuntimeError("boom")

    failing = single_step_workflow(boom, name="boom", key="boom")
    async with hx.open_engine(workflows=[wf, failing], clock=clock()) as engine:
        with pytest.raises(hx.InstanceNotFound):
            await engine.cancel("ev::missing")
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        await engine.cancel(iid, "because")
        cancelled = await engine.get(iid)
        assert cancelled.status is hx.Status.CANCELLED
        assert cancelled.cancel_reason == "because"
        assert cancelled.timers == ()
        assert cancelled.waiting == {}
        await engine.cancel(iid)
        await engine.cancel(iid, "again")
        assert (await engine.get(iid)).revision == cancelled.revision
        assert (await engine.wait(iid)).status is hx.Status.CANCELLED

        done = await engine.start(wf, "b")
        await trio.testing.wait_all_tasks_blocked()
        await engine.resume(done, "go")
        await engine.wait(done)
        with pytest.raises(hx.EventRejected, match="completed"):
            await engine.cancel(done)

        failed = await engine.start(failing, "c")
        assert (await engine.wait(failed)).status is hx.Status.FAILED
        with pytest.raises(hx.EventRejected, match="failed"):
            await engine.cancel(failed)


# --- get / list / wait -------------------------------------------------------------------------


async def test_get_and_wait_not_found(autojump_clock: Any) -> None:
    async with hx.open_engine(workflows=[fan_workflow()], clock=clock()) as engine:
        with pytest.raises(hx.InstanceNotFound, match="fan::nope"):
            await engine.get("fan::nope")
        with pytest.raises(hx.InstanceNotFound):
            await engine.wait("fan::nope")


async def test_get_follows_the_instance(autojump_clock: Any) -> None:
    wf = fan_workflow(delay=1.0)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a", {"n": 2})
        first = await engine.get(iid)
        assert first.status in (hx.Status.PENDING, hx.Status.RUNNING)
        await trio.sleep(1.5)
        middle = await engine.get(iid)
        assert middle.status is hx.Status.RUNNING
        assert "split" in middle.completed
        assert middle.revision > first.revision
        final = await engine.wait(iid)
        assert await engine.get(iid) == final  # after the runner is gone: from storage


async def test_wait_on_terminal_returns_at_once(autojump_clock: Any) -> None:
    wf = fan_workflow(delay=1.0)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a", {"n": 2})
        final = await engine.wait(iid)
        now = trio.current_time()
        with trio.fail_after(0.001):  # virtual time: any sleep would trip it
            again = await engine.wait(iid)
        assert trio.current_time() == now
        assert again == final
    # also in a fresh engine, straight from storage
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "b", {"n": 2})
        await engine.wait(iid)
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        with trio.fail_after(0.001):
            assert (await engine.wait(iid)).status is hx.Status.COMPLETED


async def test_many_waiters_all_woken(autojump_clock: Any) -> None:
    wf = fan_workflow(delay=1.0)
    seen: list[hx.Instance] = []
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a", {"n": 2})

        async def waiter() -> None:
            seen.append(await engine.wait(iid))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(waiter)
    assert len(seen) == 5
    assert all(s.status is hx.Status.COMPLETED for s in seen)


async def test_list_filters_by_workflow_and_status(autojump_clock: Any) -> None:
    fan = fan_workflow()
    ev = event_workflow()
    async with hx.open_engine(workflows=[fan, ev], clock=clock()) as engine:
        done = [await engine.start(fan, f"d{i}", {"n": i}) for i in range(3)]
        for iid in done:
            await engine.wait(iid)
        parked = [await engine.start(ev, f"p{i}") for i in range(2)]
        gone = await engine.start(ev, "gone")
        await trio.testing.wait_all_tasks_blocked()
        await engine.cancel(gone)

        def ids(instances: list[hx.Instance]) -> list[str]:
            return [i.id for i in instances]

        assert ids(await engine.list()) == sorted([*done, *parked, gone])
        assert ids(await engine.list(workflow=fan)) == sorted(done)
        assert ids(await engine.list(workflow="ev")) == sorted([*parked, gone])
        assert ids(await engine.list(status=hx.Status.WAITING)) == sorted(parked)
        assert ids(await engine.list(status=[hx.Status.CANCELLED, hx.Status.COMPLETED])) == sorted(
            [*done, gone]
        )
        assert ids(await engine.list(workflow="ev", status=hx.Status.COMPLETED)) == []
        assert await engine.list(workflow="nope") == []
        with pytest.raises(ValueError, match="status"):
            await engine.list(status="bogus")  # type: ignore[arg-type]


async def test_engine_refuses_use_after_exit(autojump_clock: Any) -> None:
    wf = fan_workflow()
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, "a", {"n": 1})
        await engine.wait(iid)
    for call in (
        engine.start(wf, "b", {"n": 1}),
        engine.resume(iid, "ok"),
        engine.cancel(iid),
        engine.get(iid),
        engine.list(),
        engine.wait(iid),
        engine.schedule_resume(iid, "split", 1),
        engine.cancel_timer(iid, "t1"),
    ):
        with pytest.raises(hx.EngineClosed):
            await call


async def test_duplicate_registration_rejected() -> None:
    a = fan_workflow()
    b = fan_workflow()
    with pytest.raises(hx.WorkflowDefinitionError, match="another version"):
        async with hx.open_engine(workflows=[a, b]):
            pass  # pragma: no cover
    async with hx.open_engine(workflows=[a, a]) as engine:  # the same object twice is fine
        assert engine.workflows == [a]
