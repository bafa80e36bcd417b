"""Property: durable timers fire exactly once, never early, across a crash and recovery.

Each example draws a set of timers (``Wait``, ``WaitForEvent(timeout=...)`` and
``engine.schedule_resume`` on a suspended step, each in its own instance, started at
a drawn virtual time), a crash time and a downtime. It runs them in one
``trio.run`` under ``MockClock(autojump_threshold=0)``: the first engine is left
(its ``async with`` exited) at the crash time, virtual time moves on by the
downtime, and a second engine on the same ``MemoryStorage`` recovers the rest;
timers drawn to start after the crash are started there. Then, for every timer:

- it fired in effect exactly once over both engines (one ``timer.fire`` event,
  one ``"timeout"`` history entry);
- never before its deadline: not in trio's virtual time, and not by the engine's
  own clock (the history stamp is at or after the persisted epoch deadline);
- and on time: at its deadline when an engine was up then, else at recovery.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio
import trio.testing
from hypothesis import example, given
from hypothesis import strategies as st

import hephaestus as hx

KINDS = ("wait", "wait_for_event", "resume")
EPS = 1e-6  # epoch seconds near 1.8e9 have a resolution of 2.4e-7 s


@dataclass(frozen=True)
class TimerSpec:
    kind: str
    start_at: float  # virtual seconds after the run began
    delay: float


times = st.one_of(
    st.integers(0, 120).map(float),  # whole seconds: many ties with each other and the crash
    st.floats(0, 120, allow_nan=False, allow_infinity=False),
)
timer_specs = st.builds(TimerSpec, kind=st.sampled_from(KINDS), start_at=times, delay=times)


@hx.step(events=("never", "timeout"), key="pause")
async def parked(ctx: hx.StepContext) -> hx.StepResult:
    return hx.Suspend()  # only a schedule_resume timer ends it


def workflow_for(index: int, spec: TimerSpec) -> hx.Workflow:
    if spec.kind == "wait":
        pause = hx.Wait(spec.delay, key="pause")
    elif spec.kind == "wait_for_event":
        pause = hx.WaitForEvent("never", key="pause", timeout=spec.delay)
    else:
        pause = parked
    return hx.Workflow(
        f"w{index}", start=pause, transitions={(pause, e): hx.Done for e in pause.events},
        unique=hx.Unique("p"),
    )


@dataclass
class Outcome:
    started: dict[str, float]  # instance id -> virtual time its timer was set
    fired: dict[str, list[float]]  # instance id -> virtual times of timer.fire
    finals: dict[str, hx.Instance]
    crash_at: float
    reopened_at: float
    epoch: float


async def scenario(specs: list[TimerSpec], crash_at: float, downtime: float) -> Outcome:
    clock = hx.testing.VirtualClock()
    store = hx.MemoryStorage()
    workflows = [workflow_for(i, spec) for i, spec in enumerate(specs)]
    ids = [f"p::i{i}" for i in range(len(specs))]
    started: dict[str, float] = {}
    fired: dict[str, list[float]] = {iid: [] for iid in ids}

    def observe(event: hx.TelemetryEvent) -> None:
        if event.name == "timer.fire":
            assert event.instance_id is not None
            fired[event.instance_id].append(trio.current_time())

    async def launch(engine: hx.Engine, index: int) -> None:
        spec = specs[index]
        iid = await engine.start(workflows[index], f"i{index}")
        if spec.kind == "resume":
            await trio.testing.wait_all_tasks_blocked()  # the step suspends; no time passes
            assert "pause" in (await engine.get(iid)).waiting
            await engine.schedule_resume(iid, "pause", spec.delay)
        started[iid] = trio.current_time()

    t0 = trio.current_time()
    order = sorted(range(len(specs)), key=lambda i: specs[i].start_at)
    before = [i for i in order if specs[i].start_at < crash_at]
    after = [i for i in order if specs[i].start_at >= crash_at]
    async with hx.open_engine(workflows=workflows, storage=store, clock=clock,
                              telemetry=observe) as engine:
        for index in before:
            await trio.sleep_until(t0 + specs[index].start_at)
            await launch(engine, index)
        await trio.sleep_until(t0 + crash_at)
    await trio.sleep(downtime)
    finals: dict[str, hx.Instance] = {}
    async with hx.open_engine(workflows=workflows, storage=store, clock=clock,
                              telemetry=observe) as engine:
        reopened_at = trio.current_time()
        for index in after:
            await trio.sleep_until(max(reopened_at, t0 + specs[index].start_at))
            await launch(engine, index)
        with trio.fail_after(1000):  # virtual: a timer that is lost fails fast
            for iid in ids:
                finals[iid] = await engine.wait(iid)
    return Outcome(
        started={k: v - t0 for k, v in started.items()},
        fired={k: [v - t0 for v in vs] for k, vs in fired.items()},
        finals=finals, crash_at=crash_at, reopened_at=reopened_at - t0, epoch=clock.start + t0,
    )


@given(
    specs=st.lists(timer_specs, min_size=1, max_size=8),
    crash_at=times,
    downtime=times,
)
@example(  # a timer due exactly at the crash, another due during the downtime
    specs=[TimerSpec("wait", 0.0, 10.0), TimerSpec("resume", 5.0, 10.0),
           TimerSpec("wait_for_event", 12.0, 0.0)],
    crash_at=15.0, downtime=30.0,
)
def test_every_timer_fires_exactly_once_never_early_across_a_crash(
    specs: list[TimerSpec], crash_at: float, downtime: float
) -> None:
    out = trio.run(scenario, specs, crash_at, downtime,
                   clock=trio.testing.MockClock(autojump_threshold=0))
    for index, spec in enumerate(specs):
        iid = f"p::i{index}"
        set_at = out.started[iid]
        due = set_at + spec.delay
        final = out.finals[iid]
        # exactly once, in effect
        assert len(out.fired[iid]) == 1, (spec, out.fired[iid])
        assert final.status is hx.Status.COMPLETED
        assert [(h.step, h.event, h.attempt) for h in final.history] == [
            ("pause", "timeout", 1)
        ]
        assert final.timers == ()
        (fired_at,) = out.fired[iid]
        # never early: in virtual time, and by the engine's clock against the persisted
        # epoch deadline (computed exactly as the engine computed it)
        assert fired_at >= due - EPS, (spec, fired_at, due)
        assert final.history[0].at >= (out.epoch + set_at) + spec.delay, (spec, final.history)
        # and on time
        if set_at >= out.crash_at or due < out.crash_at:
            # an engine was up at the deadline (or it was set after the recovery)
            expected = {max(due, out.reopened_at) if set_at >= out.crash_at else due}
        elif due > out.crash_at:
            expected = {max(due, out.reopened_at)}  # due during downtime: fires on recovery
        else:  # due at the very moment of the crash: either engine may have fired it
            expected = {due, out.reopened_at}
        assert any(abs(fired_at - e) <= EPS for e in expected), (spec, fired_at, expected, out)
