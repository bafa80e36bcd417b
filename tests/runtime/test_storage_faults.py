"""Storage faults are not bugs (DESIGN.md "Failures", guarantee 8).

A failed write fails the request that caused it; a step outcome that cannot
be stored is written again with capped exponential backoff, without running
the step again and without touching the restart budget; once the fault is
gone the instance goes on, in the same engine. A snapshot changed or deleted
under a running engine is reported once and never crash-loops.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import hephaestus as hx
from hephaestus._runtime._runner import RETRY_FIRST, RETRY_MAX

from .helpers import Recorder, clock, event_workflow, fan_expected, fan_workflow


class DiskFull:
    """Makes a MemoryStorage's ``put`` fail with ENOSPC while ``full`` is set.

    ``only`` limits the fault to one instance id; ``failed_at`` collects the
    trio times of the refused writes.
    """

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, storage: hx.MemoryStorage, only: str | None = None
    ) -> None:
        self.full = False
        self.failed_at: list[float] = []
        real = storage.put

        async def put(instance: hx.Instance, *, expected_revision: int | None = None) -> None:
            await trio.lowlevel.checkpoint()
            if self.full and only in (None, instance.id):
                self.failed_at.append(trio.current_time())
                raise OSError(errno.ENOSPC, "No space left on device")
            await real(instance, expected_revision=expected_revision)

        monkeypatch.setattr(storage, "put", put)


def counted_workflow(calls: list[int], seconds: float = 1.0) -> hx.Workflow:
    """work (sleeps ``seconds``, records its attempt) -> after -> Done."""

    @hx.step(events=("ok",))
    async def work(ctx: hx.StepContext) -> hx.StepResult:
        calls.append(ctx.attempt)
        await trio.sleep(seconds)
        return hx.Emit("ok", {"attempt": ctx.attempt})

    @hx.step(events=("ok",))
    async def after(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    return hx.Workflow(
        "counted",
        start=work,
        transitions={(work, "ok"): after, (after, "ok"): hx.Done},
        unique=hx.Unique("counted"),
    )


async def test_step_outcome_that_hits_enospc_is_written_again_without_rerunning_the_step(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    wf = counted_workflow(calls)
    siblings_wf = fan_workflow(delay=1.0)
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf, siblings_wf],
        storage=storage,
        clock=clock(),
        telemetry=recorder,
        max_restarts=0,  # any crash would leave the instance stuck
    ) as engine:
        iid = await engine.start(wf, "a")
        disk = DiskFull(monkeypatch, storage, only=iid)
        disk.full = True
        siblings = [await engine.start(siblings_wf, f"s{i}", {"n": i}) for i in range(3)]
        await trio.sleep(100)  # the disk stays full for 99 s after the step ended
        assert calls == [1]
        stored = await storage.get(iid)
        assert stored is not None
        assert stored.active == ("work",)  # its outcome is not stored yet
        for i, sibling in enumerate(siblings):
            assert (await engine.wait(sibling)).results == fan_expected(i)
        disk.full = False
        with trio.fail_after(RETRY_MAX + 1):
            final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert calls == [1]
    assert [(h.step, h.attempt) for h in final.history] == [("work", 1), ("after", 1)]
    assert recorder.count("runner.crash") == 0
    assert recorder.count("runner.restart") == 0
    errors = recorder.named("storage.error", iid)
    assert len(errors) == len(disk.failed_at)
    assert {e.metadata["error"] for e in errors} == {"OSError"}
    assert "No space left on device" in str(errors[0].metadata["message"])
    # Capped exponential backoff: 0.1, 0.2, 0.4 ... then never more than RETRY_MAX apart.
    gaps = [b - a for a, b in zip(disk.failed_at, disk.failed_at[1:], strict=False)]
    assert gaps[:4] == pytest.approx([RETRY_FIRST * 2**k for k in range(4)])
    assert max(gaps) == pytest.approx(RETRY_MAX)
    assert len(disk.failed_at) < 25  # about 99 s of outage: backoff, not a busy loop
    assert [e.metadata["retry_in"] for e in errors[:3]] == pytest.approx([0.1, 0.2, 0.4])


async def test_resume_retried_by_a_client_while_the_disk_is_full_then_succeeds(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = event_workflow()
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder, max_restarts=3
    ) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        before = await storage.get(iid)
        assert before is not None
        disk = DiskFull(monkeypatch, storage)
        disk.full = True
        for attempt in range(5):
            with pytest.raises(OSError, match="No space left") as info:
                await engine.resume(iid, "go", {"try": attempt})
            assert info.value.errno == errno.ENOSPC
            assert await storage.get(iid) == before  # nothing acknowledged, nothing stored
            assert (await engine.get(iid)).revision == before.revision
        disk.full = False
        await engine.resume(iid, "go", {"try": 5})
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.results["approve"] == {"try": 5}
    assert recorder.count("runner.crash") == 0
    errors = recorder.named("storage.error", iid)
    assert len(errors) == 5
    assert all(e.metadata["retry_in"] is None for e in errors)  # the caller retries


async def test_request_during_an_outcome_backoff_fails_fast_and_works_once_healed(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    two = hx.WaitForEvent("go", key="two")

    @hx.step(events=("ok",))
    async def one(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(1)
        return "ok"

    wf = hx.Workflow(
        "pair",
        start=one,
        transitions={(one, "ok"): two, (two, "go"): hx.Done},
        unique=hx.Unique("pair"),
    )
    storage = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a")
        disk = DiskFull(monkeypatch, storage)
        disk.full = True
        await trio.sleep(30)  # one ended at t=1; its outcome is being written again
        asked = trio.current_time()
        with pytest.raises(OSError, match="No space left"):
            await engine.resume(iid, "go")
        assert trio.current_time() == asked  # told at once, not after the backoff
        disk.full = False
        await trio.sleep(RETRY_MAX)  # the next retry stores one's outcome; two suspends
        assert (await engine.get(iid)).waiting == {"two": ("go",)}
        await engine.resume(iid, "go")
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert [h.step for h in final.history] == ["one", "two"]


async def test_request_during_an_outcome_backoff_stores_both_once_the_write_succeeds(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    wf = counted_workflow(calls, seconds=1.0)
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder
    ) as engine:
        iid = await engine.start(wf, "a")
        disk = DiskFull(monkeypatch, storage)
        disk.full = True
        await trio.sleep(5)
        disk.full = False
        # The caller's cancel retries the pending write first, then is applied on top.
        await engine.cancel(iid, "operator")
        final = await engine.wait(iid)
    assert final.status is hx.Status.CANCELLED
    assert final.cancel_reason == "operator"
    assert [(h.step, h.event) for h in final.history] == [("work", "ok")]
    assert calls == [1]
    assert recorder.count("runner.crash") == 0


async def test_engine_closing_during_an_outcome_backoff_leaves_the_instance_recoverable(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    wf = counted_workflow(calls)
    storage = hx.MemoryStorage()
    with trio.fail_after(60):
        async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
            iid = await engine.start(wf, "a")
            disk = DiskFull(monkeypatch, storage)
            disk.full = True
            await trio.sleep(20)
    disk.full = False
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert calls == [1, 2]  # its outcome was never stored: it runs again (at least once)


# --- snapshots changed under a running engine ---------------------------------------------------


async def test_snapshot_overwritten_under_the_engine_is_reloaded_and_reported_once(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    wf = event_workflow()
    other = fan_workflow(delay=1.0)
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf, other], storage=storage, clock=clock(), telemetry=recorder, max_restarts=0
    ) as engine:
        iid = await engine.start(wf, "a", {"who": "engine"})
        await trio.testing.wait_all_tasks_blocked()
        stored = await storage.get(iid)
        assert stored is not None
        # Someone else (a restore, an operator's tool) writes a newer snapshot.
        newer = msgspec.structs.replace(
            stored, initial={"who": "operator"}, revision=stored.revision + 1
        )
        await storage.put(newer, expected_revision=stored.revision)
        siblings = [await engine.start(other, f"s{i}", {"n": i}) for i in range(3)]
        with caplog.at_level(logging.WARNING, logger="hephaestus.engine"):
            await engine.resume(iid, "go", {"by": "ops"})  # applied to the stored snapshot
            final = await engine.wait(iid)
        for i, sibling in enumerate(siblings):
            assert (await engine.wait(sibling)).results == fan_expected(i)
    assert final.status is hx.Status.COMPLETED
    assert final.initial == {"who": "operator"}
    assert final.results["approve"] == {"by": "ops"}
    assert recorder.count("runner.crash") == 0
    [report] = recorder.named("storage.error", iid)
    assert report.metadata["reason"] == "replaced"
    assert report.metadata["stored_revision"] == newer.revision
    assert len([r for r in caplog.records if "was replaced in storage" in r.message]) == 1


async def test_snapshot_deleted_under_the_engine_drops_the_instance_and_reports_it_once(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []
    wf = counted_workflow(calls, seconds=10.0)
    other = fan_workflow(delay=1.0)
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf, other], storage=storage, clock=clock(), telemetry=recorder, max_restarts=0
    ) as engine:
        iid = await engine.start(wf, "a")
        await trio.sleep(1)
        await storage.delete(iid)  # under the running step
        siblings = [await engine.start(other, f"s{i}", {"n": i}) for i in range(3)]
        with (
            caplog.at_level(logging.WARNING, logger="hephaestus.engine"),
            pytest.raises(hx.InstanceNotFound, match="deleted"),
        ):
            await engine.wait(iid)
        with pytest.raises(hx.InstanceNotFound):
            await engine.get(iid)
        with pytest.raises(hx.InstanceNotFound):
            await engine.resume(iid, "ok")
        for i, sibling in enumerate(siblings):
            assert (await engine.wait(sibling)).results == fan_expected(i)
        await trio.sleep(60)
        assert await storage.get(iid) is None  # nothing wrote it back
        again = await engine.start(wf, "a")  # the id is free again
        assert (await engine.wait(again)).status is hx.Status.COMPLETED
    assert calls == [1, 1]
    assert recorder.count("runner.crash") == 0
    [report] = recorder.named("storage.error", iid)[:1]
    assert report.metadata["reason"] == "deleted"
    assert len([r for r in caplog.records if "was deleted from storage" in r.message]) == 1


async def test_two_engines_writing_one_single_engine_store_do_not_livelock(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Misuse (FileStorage and SQLiteStorage lock against it; MemoryStorage cannot): both
    # engines run the same instance and each write of one replaces the other's snapshot.
    calls: list[int] = []
    wf = counted_workflow(calls, seconds=1.0)
    storage = hx.MemoryStorage()
    first_events, second_events = Recorder(), Recorder()
    outcomes: list[str] = []

    async def watch(engine: hx.Engine, iid: str) -> None:
        outcomes.append((await engine.wait(iid)).status.value)

    with trio.fail_after(600):
        async with hx.open_engine(
            workflows=[wf], storage=storage, clock=clock(), telemetry=first_events
        ) as first:
            iid = await first.start(wf, "a")
            async with (
                hx.open_engine(
                    workflows=[wf], storage=storage, clock=clock(), telemetry=second_events
                ) as second,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(watch, first, iid)
                nursery.start_soon(watch, second, iid)
            assert (await first.get(iid)).status is hx.Status.COMPLETED
    assert outcomes == ["completed", "completed"]
    assert first_events.count("runner.crash") + second_events.count("runner.crash") == 0
    replaced = first_events.named("storage.error") + second_events.named("storage.error")
    assert replaced
    assert {e.metadata["reason"] for e in replaced} == {"replaced"}


async def test_outcomes_of_parallel_steps_and_timers_wait_for_the_write_and_none_reruns(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    nap = hx.Wait(3, key="nap")

    @hx.step(events=("ok",))
    async def split(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    @hx.step(events=("ok",))
    async def busy(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(2)
        return hx.Emit("ok", {"attempt": ctx.attempt})

    @hx.step(events=("ok",))
    async def join(ctx: hx.StepContext) -> hx.StepResult:
        return "ok"

    wf = hx.Workflow(
        "par",
        start=split,
        transitions={
            (split, "ok"): [busy, nap],
            (busy, "ok"): join,
            (nap, "timeout"): join,
            (join, "ok"): hx.Done,
        },
        unique=hx.Unique("par"),
    )
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder, max_restarts=0
    ) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()  # busy running, nap sleeping
        disk = DiskFull(monkeypatch, storage)
        disk.full = True
        await trio.sleep(60)  # busy ended at 2 s, nap's timer came due at 3 s
        disk.full = False
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert sorted((h.step, h.attempt) for h in final.history) == [
        ("busy", 1),
        ("join", 1),
        ("nap", 1),
        ("split", 1),
    ]
    assert final.results["busy"] == {"attempt": 1}
    assert recorder.count("runner.crash") == 0
    assert recorder.count("step.start") == 4  # split, busy, nap, join: nothing ran twice


async def test_resume_of_a_waiting_instance_deleted_under_the_engine_is_not_found(
    autojump_clock: Any,
) -> None:
    wf = event_workflow()
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder, max_restarts=0
    ) as engine:
        iid = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        await storage.delete(iid)
        with pytest.raises(hx.InstanceNotFound, match="deleted"):
            await engine.resume(iid, "go")
        with pytest.raises(hx.InstanceNotFound):
            await engine.resume(iid, "go")  # the engine has let go of it
        assert await storage.get(iid) is None
        again = await engine.start(wf, "a")
        await trio.testing.wait_all_tasks_blocked()
        await engine.resume(again, "go", {"by": "ops"})
        assert (await engine.wait(again)).status is hx.Status.COMPLETED
    assert recorder.count("runner.crash") == 0
    assert [e.metadata["reason"] for e in recorder.named("storage.error")] == ["deleted"]
