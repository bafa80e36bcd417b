"""Runner crashes (bugs) restart that runner only, within a per-instance budget.

Storage faults are not crashes (see test_storage_faults.py); the bug injected
here is a transition that raises where it would have recorded a given state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

import hephaestus as hx

from .helpers import Recorder, clock, fan_expected, fan_workflow, single_step_workflow


class InjectedFaultError(OSError):
    """The storage error the tests inject."""


def break_put(
    monkeypatch: pytest.MonkeyPatch,
    storage: hx.MemoryStorage,
    instance_id: str,
    failures: int,
    when: Callable[[hx.Instance], bool] = lambda instance: True,
) -> list[float]:
    """Make ``storage.put`` fail ``failures`` times for ``instance_id`` (only when ``when``).

    Returns the list the virtual times of the injected failures are appended to.
    """
    real = storage.put
    failed_at: list[float] = []

    async def put(instance: hx.Instance, *, expected_revision: int | None = None) -> None:
        if instance.id == instance_id and len(failed_at) < failures and when(instance):
            failed_at.append(trio.current_time())
            await trio.lowlevel.checkpoint()
            raise InjectedFaultError(f"injected put failure #{len(failed_at)}")
        await real(instance, expected_revision=expected_revision)

    monkeypatch.setattr(storage, "put", put)
    return failed_at


def break_get(
    monkeypatch: pytest.MonkeyPatch, storage: hx.MemoryStorage, instance_id: str, failures: int
) -> list[float]:
    real = storage.get
    failed_at: list[float] = []

    async def get(iid: str) -> hx.Instance | None:
        if iid == instance_id and len(failed_at) < failures:
            failed_at.append(trio.current_time())
            await trio.lowlevel.checkpoint()
            raise InjectedFaultError(f"injected get failure #{len(failed_at)}")
        return await real(iid)

    monkeypatch.setattr(storage, "get", get)
    return failed_at


class InjectedBugError(RuntimeError):
    """The engine bug the tests inject."""


def break_runner(
    monkeypatch: pytest.MonkeyPatch,
    instance_id: str,
    failures: int,
    when: Callable[[hx.Instance], bool] = lambda instance: True,
) -> list[float]:
    """Make the runner's transition raise ``failures`` times for ``instance_id``.

    It raises when the transition would produce a snapshot for which ``when``
    holds, so nothing of that transition is stored: a crash just before the
    write. Returns the list the virtual times of the crashes are appended to.
    """
    from hephaestus._runtime import _runner

    real_apply = _runner.apply  # type: ignore[attr-defined]
    failed_at: list[float] = []

    def apply(workflow: hx.Workflow, instance: hx.Instance, event: Any, now: float) -> Any:
        transition = real_apply(workflow, instance, event, now)
        if (
            instance.id == instance_id
            and transition.changed
            and len(failed_at) < failures
            and when(transition.instance)
        ):
            failed_at.append(trio.current_time())
            raise InjectedBugError(f"injected bug #{len(failed_at)}")
        return transition

    monkeypatch.setattr(_runner, "apply", apply)
    return failed_at


def split_done(instance: hx.Instance) -> bool:
    return "split" in instance.completed


async def start_siblings(engine: hx.Engine, wf: hx.Workflow, n: int) -> list[str]:
    return [await engine.start(wf, f"sib{i}", {"n": i}) for i in range(n)]


async def check_siblings(engine: hx.Engine, ids: list[str]) -> None:
    for i, iid in enumerate(ids):
        final = await engine.wait(iid)
        assert final.status is hx.Status.COMPLETED
        assert final.results == fan_expected(i)
        assert all(h.attempt == 1 for h in final.history)


@pytest.mark.parametrize("failures", [1, 3])
async def test_runner_crash_restarts_that_runner_and_instance_completes(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch, failures: int
) -> None:
    wf = fan_workflow(delay=1.0)
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf],
        storage=storage,
        clock=clock(),
        telemetry=recorder,
        max_restarts=3,
        restart_window=5.0,
    ) as engine:
        victim = await engine.start(wf, "victim", {"n": 7})
        failed_at = break_runner(monkeypatch, victim, failures, when=split_done)
        siblings = await start_siblings(engine, wf, 5)
        final = await engine.wait(victim)
        await check_siblings(engine, siblings)
    assert len(failed_at) == failures
    assert final.status is hx.Status.COMPLETED
    assert final.results == fan_expected(7)
    # The completion of split was never persisted, so split ran again each time.
    assert final.history[0].step == "split"
    assert final.history[0].attempt == failures + 1
    assert recorder.count("runner.crash", victim) == failures
    assert recorder.count("runner.restart", victim) == failures
    crash = recorder.named("runner.crash", victim)[0]
    assert crash.metadata["error"] == "InjectedBugError"
    assert crash.metadata["message"] == "injected bug #1"
    for sibling in siblings:
        assert recorder.count("runner.crash", sibling) == 0
        assert recorder.count("runner.restart", sibling) == 0


async def test_runner_past_restart_budget_is_left_as_stored_and_reported(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = fan_workflow(delay=1.0)
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf],
        storage=storage,
        clock=clock(),
        telemetry=recorder,
        max_restarts=2,
        restart_window=5.0,
    ) as engine:
        victim = await engine.start(wf, "victim", {"n": 7})
        failed_at = break_runner(monkeypatch, victim, 3, when=split_done)
        siblings = await start_siblings(engine, wf, 5)
        with pytest.raises(hx.RunnerFailed, match="victim"):
            await engine.wait(victim)
        assert len(failed_at) == 3
        stored = await storage.get(victim)
        assert stored is not None
        # Left exactly as stored: split still running, nothing failed or dropped.
        assert stored.status is hx.Status.RUNNING
        assert stored.active == ("split",)
        assert stored.completed == ()
        assert stored.error is None
        assert await engine.get(victim) == stored
        with pytest.raises(hx.RunnerFailed):
            await engine.wait(victim)  # reported again, at once
        with pytest.raises(hx.RunnerFailed):
            await engine.resume(victim, "ok")
        with pytest.raises(hx.AlreadyRunning):
            await engine.start(wf, "victim", {"n": 1})
        await check_siblings(engine, siblings)
        assert [i.id for i in await engine.list(status=hx.Status.RUNNING)] == [victim]
        await trio.sleep(60)  # nothing runs for it any more
        assert await storage.get(victim) == stored
    assert recorder.count("runner.crash", victim) == 3
    assert recorder.count("runner.restart", victim) == 2
    starts = [e.metadata["attempt"] for e in recorder.named("step.start", victim)]
    assert starts == [1, 2, 3]
    # The next engine on the same storage recovers it (the fault is gone by now).
    async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
        final = await engine.wait(victim)
    assert final.status is hx.Status.COMPLETED
    assert final.results == fan_expected(7)


async def test_stuck_instance_can_still_be_cancelled(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = fan_workflow(delay=1.0)
    storage = hx.MemoryStorage()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), max_restarts=0
    ) as engine:
        victim = await engine.start(wf, "victim", {"n": 7})
        break_runner(monkeypatch, victim, 1, when=split_done)
        with pytest.raises(hx.RunnerFailed):
            await engine.wait(victim)
        await engine.cancel(victim, "operator gave up")
        cancelled = await engine.wait(victim)
        assert cancelled.status is hx.Status.CANCELLED
        stored = await storage.get(victim)
        assert stored is not None
        assert stored.status is hx.Status.CANCELLED
        again = await engine.start(wf, "victim", {"n": 8})
        assert (await engine.wait(again)).results == fan_expected(8)


@pytest.mark.parametrize(("window", "stuck"), [(5.0, False), (60.0, True)])
async def test_restart_budget_counts_crashes_within_the_window(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch, window: float, stuck: bool
) -> None:
    # a, b, c take 10 s each. The put recording a's completion fails once (t=10),
    # and so does the one recording b's (t=30, after a ran again): two crashes 20 s apart.
    def slow(key: str) -> hx.Step:
        async def body(ctx: hx.StepContext) -> hx.StepResult:
            await trio.sleep(10)
            return hx.Emit("ok", {"step": key})

        return hx.step(body, events=("ok",), key=key)

    a, b, c = slow("a"), slow("b"), slow("c")
    wf = hx.Workflow(
        "lin",
        start=a,
        transitions={(a, "ok"): b, (b, "ok"): c, (c, "ok"): hx.Done},
        unique=hx.Unique("lin"),
    )
    storage = hx.MemoryStorage()
    seen: set[tuple[str, ...]] = set()

    def first_put_of_each_completion(instance: hx.Instance) -> bool:
        if instance.completed in {("a",), ("a", "b")} and instance.completed not in seen:
            seen.add(instance.completed)
            return True
        return False

    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), max_restarts=1, restart_window=window
    ) as engine:
        iid = await engine.start(wf, "x")
        failed_at = break_runner(monkeypatch, iid, 2, when=first_put_of_each_completion)
        if stuck:
            with pytest.raises(hx.RunnerFailed):
                await engine.wait(iid)
        else:
            final = await engine.wait(iid)
            assert final.status is hx.Status.COMPLETED
            assert [(h.step, h.attempt) for h in final.history] == [("a", 2), ("b", 2), ("c", 1)]
    assert failed_at == [10.0, 30.0]


async def test_failing_reload_after_a_crash_is_retried_not_one_more_crash(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = fan_workflow(delay=1.0)
    storage = hx.MemoryStorage()
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf], storage=storage, clock=clock(), telemetry=recorder, max_restarts=3
    ) as engine:
        victim = await engine.start(wf, "victim", {"n": 7})
        break_runner(monkeypatch, victim, 1, when=split_done)
        get_failures = break_get(monkeypatch, storage, victim, 1)
        siblings = await start_siblings(engine, wf, 5)
        final = await engine.wait(victim)
        await check_siblings(engine, siblings)
    assert len(get_failures) == 1
    assert final.status is hx.Status.COMPLETED
    assert final.results == fan_expected(7)
    assert recorder.count("runner.crash", victim) == 1
    [error] = recorder.named("storage.error", victim)
    assert error.metadata["operation"] == "get"
    assert error.metadata["error"] == "InjectedFaultError"


async def test_step_that_keeps_raising_is_a_step_failure_not_a_runner_crash(
    autojump_clock: Any,
) -> None:
    calls: list[int] = []

    async def broken(ctx: hx.StepContext) -> hx.StepResult:
        calls.append(ctx.attempt)
        raise RuntimeError(f"bug in step code, attempt {ctx.attempt}")

    bad = single_step_workflow(
        broken, name="bad", key="bad", retry=hx.Retry(max_attempts=4, initial=0.5)
    )
    good = fan_workflow(delay=1.0)
    recorder = Recorder()
    # With no restart budget at all, any runner crash would leave an instance stuck.
    async with hx.open_engine(
        workflows=[bad, good], clock=clock(), telemetry=recorder, max_restarts=0
    ) as engine:
        bad_ids = [await engine.start(bad, f"b{i}") for i in range(10)]
        siblings = await start_siblings(engine, good, 10)
        for iid in bad_ids:
            final = await engine.wait(iid)
            assert final.status is hx.Status.FAILED
            assert final.error is not None
            assert final.error.step == "work"
            assert final.error.type == "RuntimeError"
            assert final.error.attempts == 4
            assert "attempt 4" in final.error.message
        await check_siblings(engine, siblings)
    assert sorted(calls) == sorted([1, 2, 3, 4] * 10)
    assert recorder.count("runner.crash") == 0
    assert recorder.count("runner.restart") == 0
    assert recorder.count("workflow.exception") == 10


async def test_step_exception_with_empty_message_is_reported(autojump_clock: Any) -> None:
    class WeirdError(Exception):
        def __str__(self) -> str:
            return ""

    async def weird(ctx: hx.StepContext) -> hx.StepResult:
        raise WeirdError

    wf = single_step_workflow(weird)
    async with hx.open_engine(workflows=[wf], clock=clock(), max_restarts=0) as engine:
        final = await engine.wait(await engine.start(wf, "a"))
    assert final.status is hx.Status.FAILED
    assert final.error is not None
    assert final.error.type == "WeirdError"
    assert final.error.message  # never empty: says at least what was raised


async def test_failing_transition_is_a_runner_crash_of_that_instance_only(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hephaestus._runtime import _runner

    wf = fan_workflow(delay=1.0)
    real_apply = _runner.apply  # type: ignore[attr-defined]
    broken: list[str] = []

    def apply(workflow: hx.Workflow, instance: hx.Instance, event: Any, now: float) -> Any:
        if instance.id == "fan::victim" and "split" in instance.completed and len(broken) < 2:
            broken.append(type(event).__name__)
            raise RuntimeError("bug in a transition")
        return real_apply(workflow, instance, event, now)

    monkeypatch.setattr(_runner, "apply", apply)
    recorder = Recorder()
    async with hx.open_engine(
        workflows=[wf],
        storage=hx.MemoryStorage(),
        clock=clock(),
        telemetry=recorder,
        max_restarts=3,
    ) as engine:
        victim = await engine.start(wf, "victim", {"n": 7})
        siblings = await start_siblings(engine, wf, 5)
        final = await engine.wait(victim)
        await check_siblings(engine, siblings)
    assert len(broken) == 2
    assert final.status is hx.Status.COMPLETED
    assert final.results == fan_expected(7)
    crashes = recorder.named("runner.crash")
    assert [c.instance_id for c in crashes] == [victim, victim]
    assert crashes[0].metadata["message"] == "bug in a transition"
