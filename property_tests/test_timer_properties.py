"""Property: durable timers fire exactly once, never early, across a crash and recovery.

Each example draws a set of timers, each in its own instance started at a drawn
virtual time: ``Wait``; ``WaitForEvent(timeout=...)``, possibly raced by its
event sent at a drawn time; ``engine.schedule_resume`` on a suspended step; and
a retry backoff (a step that fails once under ``Retry(initial=delay)``). It
also draws a crash time and a downtime. One ``trio.run`` under
``MockClock(autojump_threshold=0)`` runs it all: the first engine is left (its
``async with`` exited) at the crash time, virtual time moves on by the
downtime, and a second engine on the same ``MemoryStorage`` recovers the rest;
starts and events drawn for later happen there. Then, for every timer:

- it fired in effect exactly once over both engines (one ``timer.fire`` event,
  and the history shows its effect once), unless its event came first, in
  which case it never fired and the event is the step's outcome;
- never before its deadline: not in trio's virtual time, and not by the engine's
  own clock (the history stamp is at or after the persisted epoch deadline);
- on time: at its deadline when an engine was up then, else at recovery;
- an event that lost the race was rejected with ``EventRejected``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
import trio.testing
from hypothesis import example, given
from hypothesis import strategies as st

import hephaestus as hx

KINDS = ("wait", "wait_for_event", "resume", "retry")
EPS = 1e-6  # epoch seconds near 1.8e9 have a resolution of 2.4e-7 s


@dataclass(frozen=True)
class TimerSpec:
    kind: str
    start_at: float  # virtual seconds after the run began
    delay: float
    event_after: float | None = None  # wait_for_event only: send the event this much later


times = st.one_of(
    st.integers(0, 120).map(float),  # whole seconds: many ties with each other and the crash
    st.floats(0, 120, allow_nan=False, allow_infinity=False),
)


@st.composite
def timer_specs(draw: st.DrawFn) -> TimerSpec:
    kind = draw(st.sampled_from(KINDS))
    event_after = draw(st.none() | times) if kind == "wait_for_event" else None
    return TimerSpec(kind, draw(times), draw(times), event_after)


@hx.step(events=("go", "timeout"), key="pause")
async def parked(ctx: hx.StepContext) -> hx.StepResult:
    return hx.Suspend()  # only a schedule_resume timer ends it


async def fail_once(ctx: hx.StepContext) -> hx.StepResult:
    if ctx.attempt == 1:
        raise ValueError("first attempt fails")
    return "done"


def workflow_for(index: int, spec: TimerSpec) -> hx.Workflow:
    if spec.kind == "wait":
        pause = hx.Wait(spec.delay, key="pause")
    elif spec.kind == "wait_for_event":
        pause = hx.WaitForEvent("go", key="pause", timeout=spec.delay)
    elif spec.kind == "resume":
        pause = parked
    else:
        pause = hx.step(
            fail_once,
            key="pause",
            events=("done",),
            retry=hx.Retry(max_attempts=2, backoff="constant", initial=spec.delay, max_backoff=1e9),
        )
    return hx.Workflow(
        f"w{index}",
        start=pause,
        transitions={(pause, e): hx.Done for e in pause.events},
        # One key for every workflow, one value each: "global" is the scope that shares ids.
        unique=hx.Unique("p", scope="global"),
    )


@dataclass
class Outcome:
    set_at: dict[int, float] = field(default_factory=dict)  # when the timer was set
    fired: dict[int, list[float]] = field(default_factory=dict)  # timer.fire times
    event: dict[int, tuple[float, bool]] = field(default_factory=dict)  # sent at, accepted
    finals: dict[int, hx.Instance] = field(default_factory=dict)
    crash_at: float = 0.0
    reopened_at: float = 0.0
    epoch: float = 0.0  # the engine clock's reading at virtual time 0 of the run


async def scenario(specs: list[TimerSpec], crash_at: float, downtime: float) -> Outcome:
    clock = hx.testing.VirtualClock()
    store = hx.MemoryStorage()
    workflows = [workflow_for(i, spec) for i, spec in enumerate(specs)]
    out = Outcome(fired={i: [] for i in range(len(specs))}, crash_at=crash_at)
    t0 = trio.current_time()
    out.epoch = clock.start + t0

    def now() -> float:
        return trio.current_time() - t0

    def observe(event: hx.TelemetryEvent) -> None:
        if event.name == "timer.fire":
            assert event.instance_id is not None
            out.fired[int(event.instance_id.removeprefix("p::i"))].append(now())

    async def act(engine: hx.Engine, action: str, index: int) -> None:
        spec = specs[index]
        iid = f"p::i{index}"
        if action == "event":
            try:
                await engine.resume(iid, "go")
            except hx.EventRejected:
                out.event[index] = (now(), False)
            else:
                out.event[index] = (now(), True)
            return
        await engine.start(workflows[index], f"i{index}")
        if spec.kind == "resume":
            await trio.testing.wait_all_tasks_blocked()  # the step suspends; no time passes
            assert "pause" in (await engine.get(iid)).waiting
            await engine.schedule_resume(iid, "pause", spec.delay)
        out.set_at[index] = now()  # Wait/WaitForEvent suspend, retry fails: all at once

    actions = [(spec.start_at, 0, "start", i) for i, spec in enumerate(specs)]
    actions += [
        (spec.start_at + spec.event_after, 1, "event", i)
        for i, spec in enumerate(specs)
        if spec.event_after is not None
    ]
    actions.sort()
    async with hx.open_engine(
        workflows=workflows, storage=store, clock=clock, telemetry=observe
    ) as engine:
        for at, _, action, index in actions:
            if at >= crash_at:
                break
            await trio.sleep_until(t0 + at)
            await act(engine, action, index)
        await trio.sleep_until(t0 + crash_at)
    await trio.sleep(downtime)
    async with hx.open_engine(
        workflows=workflows, storage=store, clock=clock, telemetry=observe
    ) as engine:
        out.reopened_at = now()
        for at, _, action, index in actions:
            if at >= crash_at:
                await trio.sleep_until(t0 + max(at, out.reopened_at))
                await act(engine, action, index)
        with trio.fail_after(1000):  # virtual: a timer that is lost fails fast
            for index in range(len(specs)):
                out.finals[index] = await engine.wait(f"p::i{index}")
    return out


def expected_fire_times(out: Outcome, set_at: float, due: float) -> list[float]:
    """When the timer should fire, given when engines were up.

    The persisted deadline is epoch seconds, so a deadline within EPS of the crash
    (a delay of 1e-19 s rounds away entirely) counts as due at the crash.
    """
    if set_at >= out.crash_at:  # set by the second engine
        return [due]
    if due < out.crash_at - EPS:  # due while the first engine was up
        return [due]
    if due > out.crash_at + EPS:  # due while no engine ran, or later: on recovery at the earliest
        return [max(due, out.reopened_at)]
    return [due, out.reopened_at]  # due at the very moment of the crash: either engine


@given(
    specs=st.lists(timer_specs(), min_size=1, max_size=12),
    crash_at=times,
    downtime=times,
)
@example(  # timers due exactly at the crash and during the downtime; an event racing one
    specs=[
        TimerSpec("wait", 0.0, 10.0),
        TimerSpec("resume", 5.0, 10.0),
        TimerSpec("wait_for_event", 12.0, 0.0),
        TimerSpec("retry", 3.0, 20.0),
        TimerSpec("wait_for_event", 1.0, 30.0, 10.0),
        TimerSpec("wait_for_event", 2.0, 10.0, 25.0),
    ],
    crash_at=15.0,
    downtime=30.0,
)
@example(  # a delay far below the resolution of epoch seconds, a crash just after it
    specs=[TimerSpec("wait", 0.0, 9.711281137854427e-20)],
    crash_at=1.4440960579622853e-264,
    downtime=1.0,
)
def test_every_timer_fires_exactly_once_never_early_across_a_crash(
    specs: list[TimerSpec], crash_at: float, downtime: float
) -> None:
    out = trio.run(
        scenario, specs, crash_at, downtime, clock=trio.testing.MockClock(autojump_threshold=0)
    )
    for index, spec in enumerate(specs):
        context = (index, spec, out)
        set_at = out.set_at[index]
        due = set_at + spec.delay
        persisted_deadline = (out.epoch + set_at) + spec.delay  # as the engine computes it
        final = out.finals[index]
        fired = out.fired[index]
        history = [(h.step, h.event, h.attempt, h.error) for h in final.history]
        assert final.status is hx.Status.COMPLETED, context
        assert final.timers == (), context
        expected = expected_fire_times(out, set_at, due)
        sent = out.event.get(index)
        if sent is not None and sent[1]:
            # The event won the race: the timer never fired, and the event came in time.
            assert fired == [], context
            assert history == [("pause", "go", 1, None)], context
            assert sent[0] <= max(expected) + EPS, context
            continue
        # exactly once, in effect
        assert len(fired) == 1, context
        if spec.kind == "retry":
            assert history == [("pause", None, 1, "ValueError"), ("pause", "done", 2, None)]
        else:
            assert history == [("pause", "timeout", 1, None)], context
        effect = final.history[-1].at
        # never early, in virtual time and by the engine's clock
        assert fired[0] >= due - EPS, context
        assert effect >= persisted_deadline, context
        # on time
        assert any(abs(fired[0] - e) <= EPS for e in expected), context
        if sent is not None:  # the event lost the race: it was rejected, and it was late
            assert sent[0] >= fired[0] - EPS, context
