"""hx.SubWorkflow in a running engine: children started once, heard of, cancelled with parents."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import hephaestus as hx
from hephaestus._runtime._children import Children

from .helpers import Recorder, clock


def _never(self: Children, arg: object) -> None:
    """Stands in for a Children method: the engine "dies" before it does its work."""


def child_workflow(name: str = "child", *, fail: bool = False, sleep: float = 5.0) -> hx.Workflow:
    @hx.step(events=("ok",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(sleep)
        if fail:
            raise RuntimeError("the child broke")
        return hx.Emit("ok", {"doubled": ctx.initial.get("n", 0) * 2})

    return hx.Workflow(
        name, start=work, transitions={(work, "ok"): hx.Done}, unique=hx.Unique(f"{name}id")
    )


def parent_workflow(
    child: hx.Workflow | str,
    *,
    name: str = "parent",
    value: Any = None,
    initial: Any = None,
) -> hx.Workflow:
    sub = hx.SubWorkflow(
        child,
        key="sub",
        value=value,
        initial=initial if initial is not None else (lambda ctx: {"n": ctx.initial["n"]}),
    )

    def ender(event: str) -> hx.Step:
        async def end(ctx: hx.StepContext) -> hx.StepResult:
            return hx.Emit("ok", {"saw": event, "child": dict(ctx.results["sub"])})

        return hx.step(end, events=("ok",), key=f"on_{event}")

    on_completed, on_failed, on_cancelled = ender("completed"), ender("failed"), ender("cancelled")
    return hx.Workflow(
        name,
        start=sub,
        transitions={
            (sub, "completed"): on_completed,
            (sub, "failed"): on_failed,
            (sub, "cancelled"): on_cancelled,
            (on_completed, "ok"): hx.Done,
            (on_failed, "ok"): hx.Done,
            (on_cancelled, "ok"): hx.Done,
        },
        unique=hx.Unique(f"{name}id"),
    )


async def test_parent_waits_for_its_child_and_gets_its_results(autojump_clock: Any) -> None:
    child = child_workflow()
    parent = parent_workflow(child)
    async with hx.open_engine(workflows=[parent, child], clock=clock()) as engine:
        iid = await engine.start(parent, "p1", {"n": 21})
        await trio.sleep(1)
        waiting = await engine.get(iid)
        assert waiting.status is hx.Status.WAITING
        assert waiting.waiting == {"sub": ("completed", "failed", "cancelled")}
        child_id = waiting.children["sub"].id
        assert child_id == "childid::parentid-p1-sub"
        running = await engine.get(child_id)
        assert running.status is hx.Status.RUNNING
        assert running.parent is not None
        assert running.parent.id == iid
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.results["sub"] == {"id": child_id, "results": {"work": {"doubled": 42}}}
    assert final.results["on_completed"]["saw"] == "completed"


async def test_a_failing_child_ends_the_step_with_failed(autojump_clock: Any) -> None:
    child = child_workflow(fail=True)
    parent = parent_workflow(child)
    async with hx.open_engine(workflows=[parent, child], clock=clock()) as engine:
        iid = await engine.start(parent, "p1", {"n": 1})
        final = await engine.wait(iid)
        kid = await engine.get(final.results["sub"]["id"])
    assert kid.status is hx.Status.FAILED
    assert final.status is hx.Status.COMPLETED
    assert final.completed == ("sub", "on_failed")
    assert final.results["on_failed"]["child"] == {"id": kid.id, "results": {}}


async def test_cancelling_the_parent_cancels_the_child(autojump_clock: Any) -> None:
    child = child_workflow(sleep=1000)
    parent = parent_workflow(child)
    async with hx.open_engine(workflows=[parent, child], clock=clock()) as engine:
        iid = await engine.start(parent, "p1", {"n": 1})
        await trio.sleep(1)
        child_id = (await engine.get(iid)).children["sub"].id
        await engine.cancel(iid, "no longer needed")
        kid = await engine.wait(child_id)
        final = await engine.get(iid)
    assert final.status is hx.Status.CANCELLED
    assert kid.status is hx.Status.CANCELLED
    assert kid.cancel_reason is not None
    assert iid in kid.cancel_reason


async def test_cancelling_the_child_ends_the_step_with_cancelled(autojump_clock: Any) -> None:
    child = child_workflow(sleep=1000)
    parent = parent_workflow(child)
    async with hx.open_engine(workflows=[parent, child], clock=clock()) as engine:
        iid = await engine.start(parent, "p1", {"n": 1})
        await trio.sleep(1)
        await engine.cancel((await engine.get(iid)).children["sub"].id)
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.completed == ("sub", "on_cancelled")


async def test_a_parent_failing_elsewhere_cancels_the_child(autojump_clock: Any) -> None:
    child = child_workflow(sleep=1000)
    sub = hx.SubWorkflow(child, key="sub")

    @hx.step(events=("ok",))
    async def split(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    @hx.step(events=("ok",))
    async def boom(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(10)
        raise RuntimeError("boom")

    parent = hx.Workflow(
        "parent",
        start=split,
        transitions={
            (split, "ok"): [sub, boom],
            (sub, "completed"): hx.Done,
            (sub, "failed"): hx.Done,
            (sub, "cancelled"): hx.Done,
            (boom, "ok"): hx.Done,
        },
        unique=hx.Unique("parentid"),
    )
    async with hx.open_engine(workflows=[parent, child], clock=clock()) as engine:
        iid = await engine.start(parent, "p1")
        final = await engine.wait(iid)
        kid = await engine.wait(final.children["sub"].id)
    assert final.status is hx.Status.FAILED
    assert kid.status is hx.Status.CANCELLED


async def test_retrying_a_failed_parent_starts_a_new_child(autojump_clock: Any) -> None:
    child = child_workflow(sleep=1000)
    sub = hx.SubWorkflow(child, key="sub")

    @hx.step(events=("ok",))
    async def boom(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(10)
        if ctx.attempt == 1:
            raise RuntimeError("boom")
        await trio.sleep(5000)
        return "ok"

    @hx.step(events=("ok",))
    async def split(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    parent = hx.Workflow(
        "parent",
        start=split,
        transitions={
            (split, "ok"): [sub, boom],
            (sub, "completed"): hx.Done,
            (sub, "failed"): hx.Done,
            (sub, "cancelled"): hx.Done,
            (boom, "ok"): hx.Done,
        },
        unique=hx.Unique("parentid"),
    )
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[parent, child], clock=clock(), telemetry=recorder
    ) as engine:
        iid = await engine.start(parent, "p1")
        failed = await engine.wait(iid)
        child_id = failed.children["sub"].id
        assert (await engine.wait(child_id)).status is hx.Status.CANCELLED
        await engine.retry(iid)
        await trio.sleep(100)
        again = await engine.get(iid)
        kid = await engine.get(child_id)
        final = await engine.wait(iid)
    assert again.children["sub"].attempt == 2
    assert kid.status is hx.Status.RUNNING  # the cancelled one was replaced, not reused
    assert kid.parent is not None
    assert kid.parent.attempt == 2
    assert recorder.count("workflow.start", child_id) == 2
    assert final.status is hx.Status.COMPLETED
    assert final.results["sub"]["results"] == {"work": {"doubled": 0}}


async def test_value_and_initial_come_from_the_parent_context(autojump_clock: Any) -> None:
    child = child_workflow(sleep=0)
    parent = parent_workflow(
        "child", value=lambda ctx: f"for-{ctx.initial['order']}", initial={"n": 4}
    )
    async with hx.open_engine(workflows=[parent, child], clock=clock()) as engine:
        iid = await engine.start(parent, "p1", {"order": "o42"})
        final = await engine.wait(iid)
    assert final.results["sub"] == {"id": "childid::for-o42", "results": {"work": {"doubled": 8}}}


async def test_a_child_id_held_by_another_instance_fails_the_step(autojump_clock: Any) -> None:
    child = child_workflow(sleep=1000)
    parent = parent_workflow(child, value="shared")
    async with hx.open_engine(workflows=[parent, child], clock=clock()) as engine:
        await engine.start(child, "shared", {"n": 1})
        iid = await engine.start(parent, "p1", {"n": 1})
        final = await engine.wait(iid)
    assert final.status is hx.Status.FAILED
    assert final.error is not None
    assert final.error.type == "AlreadyRunning"
    assert "value=" in final.error.message


async def test_a_bad_value_from_the_context_fails_the_attempt(autojump_clock: Any) -> None:
    child = child_workflow(sleep=0)
    parent = parent_workflow(child, value=lambda ctx: "not valid!")
    async with hx.open_engine(workflows=[parent, child], clock=clock()) as engine:
        final = await engine.wait(await engine.start(parent, "p1", {"n": 1}))
    assert final.status is hx.Status.FAILED
    assert final.error is not None
    assert final.error.type == "InvalidBusinessKey"
    assert final.children == {}


async def test_a_subworkflow_step_takes_no_resume(autojump_clock: Any) -> None:
    child = child_workflow(sleep=1000)
    parent = parent_workflow(child)
    async with hx.open_engine(workflows=[parent, child], clock=clock()) as engine:
        iid = await engine.start(parent, "p1", {"n": 1})
        await trio.sleep(1)
        with pytest.raises(hx.EventRejected, match="cannot be accepted"):
            await engine.resume(iid, "completed")
        with pytest.raises(hx.EventRejected, match="SubWorkflow"):
            await engine.resume(iid, "completed", step="sub")
        assert (await engine.get(iid)).status is hx.Status.WAITING


async def test_grandchildren(autojump_clock: Any) -> None:
    grandchild = child_workflow("grand", sleep=3)
    middle = parent_workflow(grandchild, name="middle")
    top = parent_workflow(middle, name="top")
    async with hx.open_engine(workflows=[top, middle, grandchild], clock=clock()) as engine:
        final = await engine.wait(await engine.start(top, "t", {"n": 5}))
    inner = final.results["sub"]["results"]
    assert inner["sub"]["results"] == {"work": {"doubled": 10}}


async def test_a_child_that_ended_unheard_of_is_reported_on_recovery(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash window between the child's last write and the parent being told."""
    child = child_workflow(sleep=5)
    parent = parent_workflow(child)
    storage = hx.MemoryStorage()
    async with storage:
        with monkeypatch.context() as patch:
            patch.setattr(Children, "finished", _never)
            async with hx.open_engine(
                workflows=[parent, child], clock=clock(), storage=storage
            ) as engine:
                iid = await engine.start(parent, "p1", {"n": 2})
                await trio.sleep(1)
                child_id = (await engine.get(iid)).children["sub"].id
                await engine.wait(child_id)
                await trio.sleep(10)
                assert (await engine.get(iid)).status is hx.Status.WAITING  # never told
        async with hx.open_engine(
            workflows=[parent, child], clock=clock(), storage=storage
        ) as engine:
            with trio.fail_after(1000):  # hangs without the recovery under test
                final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.results["sub"]["results"] == {"work": {"doubled": 4}}


async def test_a_child_whose_parent_was_cancelled_unheard_is_cancelled_on_recovery(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash window between the parent's cancel being stored and the child's."""
    child = child_workflow(sleep=1000)
    parent = parent_workflow(child)
    storage = hx.MemoryStorage()
    async with storage:
        async with hx.open_engine(
            workflows=[parent, child], clock=clock(), storage=storage
        ) as engine:
            iid = await engine.start(parent, "p1", {"n": 2})
            await trio.sleep(1)
            child_id = (await engine.get(iid)).children["sub"].id
            with monkeypatch.context() as patch:
                patch.setattr(Children, "carry_out", _never)
                await engine.cancel(iid)
                await trio.sleep(10)
            assert (await engine.get(child_id)).status is hx.Status.RUNNING
        async with hx.open_engine(
            workflows=[parent, child], clock=clock(), storage=storage
        ) as engine:
            with trio.fail_after(1000):
                kid = await engine.wait(child_id)
    assert kid.status is hx.Status.CANCELLED


async def test_a_child_asked_for_but_not_started_is_started_on_recovery(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash window between the parent recording the child and the child's first write."""
    child = child_workflow(sleep=1)
    parent = parent_workflow(child)
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with storage:
        with monkeypatch.context() as patch:
            patch.setattr(Children, "carry_out", _never)
            async with hx.open_engine(
                workflows=[parent, child], clock=clock(), storage=storage, telemetry=recorder
            ) as engine:
                iid = await engine.start(parent, "p1", {"n": 3})
                await trio.sleep(10)
                waiting = await engine.get(iid)
                assert waiting.status is hx.Status.WAITING
                assert await engine.list(workflow=child) == []
        async with hx.open_engine(
            workflows=[parent, child], clock=clock(), storage=storage, telemetry=recorder
        ) as engine:
            with trio.fail_after(1000):  # hangs without the recovery under test
                final = await engine.wait(iid)
    assert final.results["sub"]["results"] == {"work": {"doubled": 6}}
    assert recorder.count("workflow.start", waiting.children["sub"].id) == 1


async def test_open_engine_refuses_an_unregistered_child() -> None:
    child = child_workflow()
    parent = parent_workflow(child)
    with pytest.raises(hx.WorkflowDefinitionError) as info:
        async with hx.open_engine(workflows=[parent]):
            pass
    assert "'child', which is not registered" in str(info.value)
    named = parent_workflow("nowhere")
    with pytest.raises(hx.WorkflowDefinitionError, match="'nowhere', which is not registered"):
        async with hx.open_engine(workflows=[named, child]):
            pass


async def test_open_engine_refuses_another_object_under_the_child_name() -> None:
    parent = parent_workflow(child_workflow())
    with pytest.raises(hx.WorkflowDefinitionError, match="not the one registered"):
        async with hx.open_engine(workflows=[parent, child_workflow()]):
            pass


async def test_open_engine_refuses_workflows_that_contain_each_other() -> None:
    a = parent_workflow("b", name="a")
    b = parent_workflow("a", name="b")
    with pytest.raises(hx.WorkflowDefinitionError) as info:
        async with hx.open_engine(workflows=[a, b]):
            pass
    assert any("'a' -> 'b' -> 'a' contains itself" in p for p in info.value.problems)


def test_a_workflow_cannot_contain_itself_directly() -> None:
    with pytest.raises(hx.WorkflowDefinitionError, match="cannot contain itself"):
        parent_workflow("parent", name="parent")


def test_subworkflow_arguments_are_checked() -> None:
    with pytest.raises(hx.WorkflowDefinitionError, match=r"must be an hx\.Workflow or its name"):
        hx.SubWorkflow(42, key="sub")  # type: ignore[arg-type]
    with pytest.raises(hx.WorkflowDefinitionError, match="value"):
        hx.SubWorkflow("child", key="sub", value="no spaces allowed")
    with pytest.raises(hx.WorkflowDefinitionError, match="value must be"):
        hx.SubWorkflow("child", key="sub", value=3)  # type: ignore[arg-type]
    with pytest.raises(hx.WorkflowDefinitionError, match="initial must be"):
        hx.SubWorkflow("child", key="sub", initial=3)  # type: ignore[arg-type]
    with pytest.raises(hx.WorkflowDefinitionError, match="serialis"):
        hx.SubWorkflow("child", key="sub", initial={"x": object()})
    with pytest.raises(hx.WorkflowDefinitionError, match="step key"):
        hx.SubWorkflow("child", key="Bad Key")


@pytest.mark.parametrize("passivate_after", [None, 0.0, 30.0])
async def test_resident_and_passivated_parents_alike(
    autojump_clock: Any, passivate_after: float | None
) -> None:
    child = child_workflow(sleep=60)
    parent = parent_workflow(child)
    async with hx.open_engine(
        workflows=[parent, child], clock=clock(), passivate_after=passivate_after
    ) as engine:
        done = await engine.start(parent, "done", {"n": 1})
        stopped = await engine.start(parent, "stopped", {"n": 1})
        await trio.sleep(10)
        await engine.cancel(stopped)
        kid = await engine.wait((await engine.get(stopped)).children["sub"].id)
        final = await engine.wait(done)
    assert kid.status is hx.Status.CANCELLED
    assert final.completed == ("sub", "on_completed")


async def test_children_queue_under_their_workflows_max_active(autojump_clock: Any) -> None:
    @hx.step(events=("ok",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(10)
        return "ok"

    child = hx.Workflow(
        "child",
        start=work,
        transitions={(work, "ok"): hx.Done},
        unique=hx.Unique("childid"),
        max_active=1,
    )
    parent = parent_workflow(child, initial={})
    async with hx.open_engine(workflows=[parent, child], clock=clock()) as engine:
        first = await engine.start(parent, "p1")
        second = await engine.start(parent, "p2")
        await trio.sleep(1)
        queued = (await engine.get(second)).children["sub"].id
        assert (await engine.get(queued)).status is hx.Status.PENDING
        finals = [await engine.wait(first), await engine.wait(second)]
    assert [f.completed for f in finals] == [("sub", "on_completed")] * 2
    assert finals[1].updated_at - finals[0].updated_at == 10
