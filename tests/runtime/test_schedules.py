"""hx.Schedule: one instance per cron tick, exactly once per tick per store.

Across restarts, crashes and downtime, in virtual time.
"""

from __future__ import annotations

import errno
import sys
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

import hephaestus as hx
from hephaestus._core._schedule import RECORD_WORKFLOW, record_id, tick_value
from hephaestus.testing._clock import DEFAULT_EPOCH

from .helpers import Recorder, clock

HOUR = 3600.0
DAY = 24 * HOUR
HOURLY = "0 * * * *"


def report(scope: Any = "workflow", version: int = 1) -> hx.Workflow:
    """One step that records the tick's value and its initial data."""

    @hx.step(events=("ok",))
    async def run_report(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("ok", {"initial": dict(ctx.initial)})

    return hx.Workflow(
        "report",
        start=run_report,
        transitions={(run_report, "ok"): hx.Done},
        unique=hx.Unique("report", scope),
        version=version,
    )


def hour_ids(first: int, last: int, key: str = "report") -> list[str]:
    """The ids of the hourly ticks ``first``..``last`` hours after the virtual clock's start."""
    return [f"{key}::{tick_value(DEFAULT_EPOCH + h * HOUR)}" for h in range(first, last + 1)]


async def tick_ids(engine: hx.Engine, workflow: hx.Workflow) -> list[str]:
    return [i.id for i in await engine.list(workflow=workflow)]


class Killable:
    """A MemoryStorage whose process "dies" at its ``kill_at``-th write (counted from arming).

    The write that kills is lost, and so is every write after it, until
    :meth:`revive`; the test's cancel scope around the engine is cancelled, as
    the process would be gone.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.storage = hx.MemoryStorage()
        self.kill_at: int | None = None
        self.writes = 0
        self.dead = False
        self.scope: trio.CancelScope | None = None
        real = self.storage.put

        async def put(instance: hx.Instance, *, expected_revision: int | None = None) -> None:
            await trio.lowlevel.checkpoint()
            if not self.dead:
                self.writes += 1
                if self.writes == self.kill_at:
                    self.dead = True
                    assert self.scope is not None
                    self.scope.cancel()
            if self.dead:
                raise OSError(errno.EIO, "the process is gone")
            await real(instance, expected_revision=expected_revision)

        monkeypatch.setattr(self.storage, "put", put)

    def arm(self, kill_at: int | None, scope: trio.CancelScope) -> None:
        self.kill_at, self.writes, self.dead, self.scope = kill_at, 0, False, scope


# --- ticks -------------------------------------------------------------------------------------


async def test_a_month_of_hourly_ticks_starts_exactly_720_instances(autojump_clock: Any) -> None:
    wf = report()
    schedule = hx.Schedule(wf, cron=HOURLY, initial={"to": "ops"})
    async with hx.open_engine(workflows=[wf], clock=clock(), schedules=[schedule]) as engine:
        await trio.sleep(30 * DAY + HOUR / 2)
        instances = await engine.list(workflow=wf)
    # Seen first at 00:00 exactly: the first tick after that moment is 01:00.
    assert [i.id for i in instances] == hour_ids(1, 720)
    assert {i.status for i in instances} == {hx.Status.COMPLETED}
    assert all(i.initial == {"to": "ops"} for i in instances)
    assert instances[0].id == "report::20260101T010000Z"
    assert instances[-1].id == "report::20260131T000000Z"
    # Each started at its tick, by the engine's clock, and its metadata says which tick it is.
    assert [i.created_at for i in instances] == [DEFAULT_EPOCH + h * HOUR for h in range(1, 721)]
    assert [i.metadata for i in instances[:2]] == [
        {"schedule": "report", "tick": DEFAULT_EPOCH + h * HOUR} for h in (1, 2)
    ]


async def test_a_seconds_field_and_the_version_scope_build_one_id_per_tick(
    autojump_clock: Any,
) -> None:
    wf = report(scope="version", version=3)
    schedule = hx.Schedule(wf, cron="*/15 * * * * *")  # seconds first: every 15 s
    async with hx.open_engine(workflows=[wf], clock=clock(), schedules=[schedule]) as engine:
        await trio.sleep(61)
        ids = await tick_ids(engine, wf)
    assert ids == [
        "report::20260101T000015Z::v3",
        "report::20260101T000030Z::v3",
        "report::20260101T000045Z::v3",
        "report::20260101T000100Z::v3",
    ]


@pytest.mark.parametrize(
    ("catch_up", "caught_up"),
    [("latest", [15]), ("all", [11, 12, 13, 14, 15]), ("skip", [])],
)
async def test_after_five_hours_of_downtime_catch_up_decides_what_starts(
    autojump_clock: Any, catch_up: Any, caught_up: list[int]
) -> None:
    wf = report()
    schedule = hx.Schedule(wf, cron=HOURLY, catch_up=catch_up)
    storage = hx.MemoryStorage()
    async with storage:
        async with hx.open_engine(
            workflows=[wf], storage=storage, clock=clock(), schedules=[schedule]
        ) as engine:
            await trio.sleep(10.5 * HOUR)  # ticks 01:00 .. 10:00
            assert await tick_ids(engine, wf) == hour_ids(1, 10)
        await trio.sleep(5 * HOUR)  # down from 10:30 to 15:30: 11:00 .. 15:00 missed
        async with hx.open_engine(
            workflows=[wf], storage=storage, clock=clock(), schedules=[schedule]
        ) as engine:
            await trio.testing.wait_all_tasks_blocked()
            assert await tick_ids(engine, wf) == hour_ids(1, 10) + [
                f"report::{tick_value(DEFAULT_EPOCH + h * HOUR)}" for h in caught_up
            ]
            await trio.sleep(HOUR)  # 16:00 comes while the engine runs: always started
            after = await tick_ids(engine, wf)
    assert after[-1] == "report::20260101T160000Z"
    assert len(after) == 10 + len(caught_up) + 1


async def test_a_schedule_seen_for_the_first_time_starts_after_that_moment(
    autojump_clock: Any,
) -> None:
    wf = report()
    storage = hx.MemoryStorage()
    async with storage:
        async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
            await trio.sleep(5.5 * HOUR)  # no schedule yet: nothing to catch up later
        schedule = hx.Schedule(wf, cron=HOURLY, catch_up="all")
        async with hx.open_engine(
            workflows=[wf], storage=storage, clock=clock(), schedules=[schedule]
        ) as engine:
            await trio.testing.wait_all_tasks_blocked()
            assert await tick_ids(engine, wf) == []
            record = await engine.get(record_id("report"))
            assert record.workflow == RECORD_WORKFLOW
            assert record.metadata["through"] == DEFAULT_EPOCH + 5.5 * HOUR
            await trio.sleep(HOUR)
            assert await tick_ids(engine, wf) == hour_ids(6, 6)


async def test_restarting_at_many_moments_never_starts_a_tick_twice(autojump_clock: Any) -> None:
    """Sessions end at, just before and just after ticks, with and without downtime."""
    wf = report()
    recorder = Recorder()
    storage = hx.MemoryStorage()
    # (seconds the engine runs, seconds it is down after), ending near tick boundaries.
    sessions = [(0, 0), (HOUR, 0), (0.5, 0), (HOUR - 0.5, 0), (1e-3, 0), (0, HOUR), (HOUR, 1)]
    sessions += [(HOUR - 1e-6, 2 * HOUR), (2e-6, 0), (3 * HOUR, 0.25 * HOUR), (0.75 * HOUR, 0)]
    sessions += [(1.5 * HOUR, 2.5 * HOUR), (0, 0), (HOUR, 0)]
    async with storage:
        for ran, down in sessions:
            schedule = hx.Schedule(wf, cron=HOURLY, catch_up="all")
            async with hx.open_engine(
                workflows=[wf],
                storage=storage,
                clock=clock(),
                schedules=[schedule],
                telemetry=recorder,
            ):
                await trio.sleep(ran)
            await trio.sleep(down)
        async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
            ids = await tick_ids(engine, wf)
    starts = Counter(str(e.instance_id) for e in recorder.named("workflow.start"))
    elapsed = sum(ran + down for ran, down in sessions)
    assert ids == hour_ids(1, int(elapsed // HOUR))
    assert sorted(starts) == ids
    assert set(starts.values()) == {1}


@pytest.mark.parametrize("kill_at", range(1, 11))  # a first session of 3.5 h writes 10 times
@pytest.mark.parametrize("catch_up", ["all", "latest"])
async def test_a_crash_at_any_write_never_starts_a_tick_twice(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch, kill_at: int, catch_up: Any
) -> None:
    wf = report()
    recorder = Recorder()
    killable = Killable(monkeypatch)
    schedule = hx.Schedule(wf, cron=HOURLY, catch_up=catch_up)
    async with killable.storage:
        with trio.CancelScope() as scope:
            killable.arm(kill_at, scope)
            async with hx.open_engine(
                workflows=[wf],
                storage=killable.storage,
                clock=clock(),
                schedules=[schedule],
                telemetry=recorder,
            ):
                await trio.sleep(3.5 * HOUR)
        crashed_at = trio.current_time()
        assert scope.cancelled_caught
        killable.arm(None, scope)
        async with hx.open_engine(
            workflows=[wf],
            storage=killable.storage,
            clock=clock(),
            schedules=[schedule],
            telemetry=recorder,
        ) as engine:
            await trio.sleep(6.5 * HOUR - crashed_at)  # until 06:30
            instances = await engine.list(workflow=wf)
    starts = Counter(str(e.instance_id) for e in recorder.named("workflow.start"))
    ids = [i.id for i in instances]
    assert set(starts.values()) == {1}
    assert sorted(starts) == ids
    assert {i.status for i in instances} == {hx.Status.COMPLETED}
    if catch_up == "all":
        assert ids == hour_ids(1, 6)
    else:  # whatever the crash lost, the latest missed tick and every later one start
        assert ids[-1] == hour_ids(6, 6)[0]
        assert set(ids) <= set(hour_ids(1, 6))


async def test_a_tick_whose_instance_exists_counts_as_started(autojump_clock: Any) -> None:
    wf = report()
    recorder = Recorder()
    schedule = hx.Schedule(wf, cron=HOURLY)
    async with hx.open_engine(
        workflows=[wf], clock=clock(), schedules=[schedule], telemetry=recorder
    ) as engine:
        early = await engine.wait(await engine.start(wf, "20260101T010000Z", {"by": "hand"}))
        await trio.sleep(1.5 * HOUR)
        again = await engine.get(early.id)
        assert await tick_ids(engine, wf) == hour_ids(1, 1)
    assert again.revision == early.revision  # not started a second time
    assert again.results["run_report"] == {"initial": {"by": "hand"}}
    (tick,) = recorder.named("schedule.tick")
    assert tick.metadata["started"] is False
    assert tick.metadata["tick"] == "20260101T010000Z"


async def test_pruning_keeps_the_record_so_a_pruned_tick_never_starts_again(
    autojump_clock: Any,
) -> None:
    wf = report()
    storage = hx.MemoryStorage()
    schedule = hx.Schedule(wf, cron=HOURLY, catch_up="all")
    async with storage:
        async with hx.open_engine(
            workflows=[wf], storage=storage, clock=clock(), schedules=[schedule]
        ) as engine:
            await trio.sleep(3.5 * HOUR)
            assert await engine.prune(older_than=0) == 3
            assert await tick_ids(engine, wf) == []
            assert (await engine.get(record_id("report"))).status is hx.Status.COMPLETED
        async with hx.open_engine(
            workflows=[wf], storage=storage, clock=clock(), schedules=[schedule]
        ) as engine:
            await trio.sleep(HOUR)
            assert await tick_ids(engine, wf) == hour_ids(4, 4)


async def test_a_storage_fault_while_starting_a_tick_is_retried(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = report()
    recorder = Recorder()
    killable = Killable(monkeypatch)
    failures = 0
    real_get = killable.storage.get

    async def get(instance_id: str) -> hx.Instance | None:
        nonlocal failures
        if instance_id.startswith("report::") and failures < 3:
            failures += 1
            raise OSError(errno.EIO, "I/O error")
        return await real_get(instance_id)

    monkeypatch.setattr(killable.storage, "get", get)
    schedule = hx.Schedule(wf, cron=HOURLY)
    async with hx.open_engine(
        workflows=[wf],
        storage=killable.storage,
        clock=clock(),
        schedules=[schedule],
        telemetry=recorder,
    ) as engine:
        await trio.sleep(1.5 * HOUR)
        assert await tick_ids(engine, wf) == hour_ids(1, 1)
    errors = recorder.named("storage.error")
    assert [e.metadata["failures"] for e in errors] == [1, 2, 3]
    assert {e.metadata["schedule"] for e in errors} == {"report"}


async def test_two_schedules_of_one_workflow_keep_their_own_progress(
    autojump_clock: Any,
) -> None:
    wf = report()
    morning = hx.Schedule(wf, cron="0 8 * * *", name="morning")
    evening = hx.Schedule(wf, cron="0 20 * * *", name="evening")
    async with hx.open_engine(
        workflows=[wf], clock=clock(), schedules=[morning, evening]
    ) as engine:
        await trio.sleep(DAY + HOUR)
        ids = await tick_ids(engine, wf)
        records = [await engine.get(record_id(n)) for n in ("morning", "evening")]
    assert ids == ["report::20260101T080000Z", "report::20260101T200000Z"]
    assert [r.metadata["schedule"] for r in records] == ["morning", "evening"]


# --- validation ----------------------------------------------------------------------------------


def test_scope_none_cannot_be_scheduled() -> None:
    with pytest.raises(hx.WorkflowDefinitionError, match="scope='none'") as info:
        hx.Schedule(report(scope="none"), cron=HOURLY)
    assert "scope 'workflow'" in info.value.problems[0]


@pytest.mark.parametrize("scope", ["workflow", "version", "global"])
def test_deterministic_scopes_can_be_scheduled(scope: Any) -> None:
    assert hx.Schedule(report(scope=scope), cron=HOURLY).name == "report"


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("61 * * * *", "Bad minute"),
        ("* * *", "Wrong number of fields"),
        ("every hour", "Wrong number of fields"),
        ("0 0 30 2 *", "Bad day-of-month"),
        (3600, "must be a str"),
    ],
)
def test_a_bad_cron_expression_says_what_to_write(cron: Any, expected: str) -> None:
    with pytest.raises(hx.WorkflowDefinitionError) as info:
        hx.Schedule(report(), cron=cron)
    (problem,) = info.value.problems
    assert expected in problem
    if isinstance(cron, str):
        assert "'0 * * * *' for every hour" in problem


def test_every_problem_of_a_schedule_is_listed() -> None:
    with pytest.raises(hx.WorkflowDefinitionError) as info:
        hx.Schedule(report(scope="none"), cron="nope", catch_up="some", name="")  # type: ignore[arg-type]
    assert len(info.value.problems) == 4
    assert any("catch_up must be 'latest'" in p for p in info.value.problems)
    with pytest.raises(hx.WorkflowDefinitionError, match=r"must be an hx\.Workflow") as info:
        hx.Schedule("report", cron=HOURLY)  # type: ignore[arg-type]
    assert len(info.value.problems) == 1


def test_initial_must_be_storable() -> None:
    with pytest.raises(hx.InvalidResult):
        hx.Schedule(report(), cron=HOURLY, initial={"when": object()})
    data = {"nested": {"n": 1}}
    schedule = hx.Schedule(report(), cron=HOURLY, initial=data)
    data["nested"]["n"] = 2
    assert schedule.initial == {"nested": {"n": 1}}  # copied at construction


async def test_open_engine_refuses_schedules_it_cannot_serve() -> None:
    wf, other = report(), report()
    storage = hx.MemoryStorage()
    with pytest.raises(hx.WorkflowDefinitionError) as info:
        async with hx.open_engine(
            workflows=[wf],
            storage=storage,
            schedules=[
                hx.Schedule(other, cron=HOURLY, name="other"),
                hx.Schedule(wf, cron=HOURLY),
                hx.Schedule(wf, cron="0 8 * * *"),
                "0 * * * *",  # type: ignore[list-item]
            ],
        ):
            raise AssertionError("open_engine must refuse")
    problems = info.value.problems
    assert len(problems) == 3
    assert "not in open_engine(workflows=[...])" in problems[0]
    assert "two schedules are called 'report'" in problems[1]
    assert "must hold hx.Schedule values" in problems[2]
    assert not storage.is_open
    with pytest.raises(hx.WorkflowDefinitionError, match=r"a list of hx\.Schedule"):
        async with hx.open_engine(workflows=[wf], schedules=hx.Schedule(wf, cron=HOURLY)):  # type: ignore[arg-type]
            raise AssertionError("open_engine must refuse")


def test_without_cronsim_a_schedule_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cronsim", None)
    with pytest.raises(ImportError, match=r"pip install 'hephaestus-trio\[cron\]'"):
        hx.Schedule(report(), cron=HOURLY)


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_a_durable_store_keeps_the_progress_across_engines(tmp_path: Any, kind: str) -> None:
    """The record and the tick ids go through FileStorage and SQLiteStorage like any instance.

    Their writes run in threads, so trio's clock jumps only after 5 ms of real idleness.
    """
    wf = report()
    schedule = hx.Schedule(wf, cron=HOURLY, catch_up="all")

    def store() -> hx.Storage:
        if kind == "file":
            return hx.FileStorage(tmp_path / "store", durable=False)
        return hx.SQLiteStorage(tmp_path / "store.sqlite", durable=False)

    async def main() -> tuple[list[str], float]:
        async with hx.open_engine(
            workflows=[wf], storage=store(), schedules=[schedule], clock=clock()
        ):
            await trio.sleep(2.5 * HOUR)
        await trio.sleep(2 * HOUR)  # 03:00 and 04:00 are missed
        async with hx.open_engine(
            workflows=[wf], storage=store(), schedules=[schedule], clock=clock()
        ) as engine:
            # Writes in threads may let trio's clock run ahead of them: look every minute.
            for _ in range(60):
                await trio.sleep(60)
                ids = await tick_ids(engine, wf)
                through = (await engine.get(record_id("report"))).metadata["through"]
                if len(ids) == 5 and through >= DEFAULT_EPOCH + 5 * HOUR:
                    break
            return ids, through

    ids, through = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.005))
    assert ids == hour_ids(1, 5)
    assert DEFAULT_EPOCH + 5 * HOUR <= through < DEFAULT_EPOCH + 6 * HOUR


async def test_all_catches_up_a_long_downtime_in_steps(autojump_clock: Any) -> None:
    """1,100 missed minutes, more than one plan holds (PLAN_LIMIT): each starts exactly once."""
    wf = report()
    recorder = Recorder()
    schedule = hx.Schedule(wf, cron="* * * * *", catch_up="all")
    storage = hx.MemoryStorage()
    async with storage:
        async with hx.open_engine(
            workflows=[wf], storage=storage, clock=clock(), schedules=[schedule]
        ):
            pass
        await trio.sleep(1_100 * 60 + 30)
        async with hx.open_engine(
            workflows=[wf], storage=storage, clock=clock(), schedules=[schedule], telemetry=recorder
        ) as engine:
            await trio.testing.wait_all_tasks_blocked()
            ids = await tick_ids(engine, wf)
            record = await engine.get(record_id("report"))
    expected = [f"report::{tick_value(DEFAULT_EPOCH + m * 60)}" for m in range(1, 1_101)]
    assert ids == expected
    assert Counter(str(e.instance_id) for e in recorder.named("workflow.start")) == Counter(ids)
    assert record.revision == 1 + 2  # first sight, then one write per plan of at most 1,000


class JumpingClock:
    """The virtual clock plus ``offset``: a wall clock that jumps (a host that was suspended)."""

    def __init__(self) -> None:
        self.virtual = clock()
        self.offset = 0.0

    def now(self) -> float:
        return self.virtual.now() + self.offset


@pytest.mark.parametrize(
    ("catch_up", "started"),
    [("latest", [1, 6, 7]), ("all", [1, 2, 3, 4, 5, 6, 7]), ("skip", [1, 7])],
)
async def test_ticks_that_passed_while_the_engine_slept_follow_catch_up(
    autojump_clock: Any, catch_up: Any, started: list[int]
) -> None:
    """The clock jumps five hours while the schedule sleeps for 01:00: 01:00 is on time, the
    ticks after it that also passed (02:00 to 06:00) were missed."""
    wf = report()
    jumping = JumpingClock()
    schedule = hx.Schedule(wf, cron=HOURLY, catch_up=catch_up)
    async with hx.open_engine(workflows=[wf], clock=jumping, schedules=[schedule]) as engine:
        await trio.sleep(HOUR / 2)
        jumping.offset = 5 * HOUR
        await trio.sleep(2 * HOUR)  # the schedule wakes at 06:00 by the clock, then at 07:00
        ids = await tick_ids(engine, wf)
    assert ids == [f"report::{tick_value(DEFAULT_EPOCH + h * HOUR)}" for h in started]


async def test_a_new_version_of_the_workflow_goes_on_from_the_schedules_progress(
    autojump_clock: Any,
) -> None:
    """The record is the schedule's (named after the workflow), not the version's: v2 takes
    over at the next tick, without starting the ticks v1 ran again under its own ids."""
    v1, v2 = report(scope="version", version=1), report(scope="version", version=2)
    storage = hx.MemoryStorage()
    async with storage:
        async with hx.open_engine(
            workflows=[v1],
            storage=storage,
            clock=clock(),
            schedules=[hx.Schedule(v1, cron=HOURLY, catch_up="all")],
        ):
            await trio.sleep(2.5 * HOUR)
        async with hx.open_engine(
            workflows=[v1, v2],
            storage=storage,
            clock=clock(),
            schedules=[hx.Schedule(v2, cron=HOURLY, catch_up="all")],
        ) as engine:
            await trio.sleep(HOUR)
            ids = await tick_ids(engine, v2)
    assert ids == [
        "report::20260101T010000Z::v1",
        "report::20260101T020000Z::v1",
        "report::20260101T030000Z::v2",
    ]
