"""Property tests of the pure engine: random DAG workflows, random outcome sequences.

A random workflow (1-8 steps, random events, transitions only to steps later in
a random topological order or to hx.Done, fan-outs, Targets, Routes, retry
policies, steps that suspend with timeouts) is driven by a random environment:
for every RunStep it succeeds with a declared (or sometimes an undeclared)
event, fails, or suspends; it delivers events, fires timers, schedules and
cancels resume timers, cancels, and crashes and recovers at random points.
Then it resolves everything that is left and the instance must be terminal.

Every transition is checked against the invariants in DESIGN.md, using an
independent model of liveness rather than the engine's own ``live_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hephaestus as hx
from hephaestus._core._codec import decode_instance, encode_instance
from hephaestus._core._engine import (
    DEDUPE_WINDOW,
    MAX_INBOX,
    ArmTimer,
    Cancel,
    CancelStep,
    CancelTimer,
    Command,
    Deliver,
    DisarmTimer,
    Finished,
    Input,
    Recover,
    RunStep,
    ScheduleResume,
    Start,
    StepFailed,
    StepSucceeded,
    StepSuspended,
    TimerFired,
    Transition,
    apply,
    derive_status,
    live_steps,
    new_instance,
    retry_delay,
)
from hephaestus._core._notes import Delivery, EventDropped

PROPERTY_SETTINGS = settings(
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
    deadline=None,
)

EVENT_POOL = ("ok", "alt", "go")
NAME_POOL = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
ROUTE_OUTSIDE, ROUTE_RAISE, ROUTE_ALL = -1, -2, -3


def never_called(ctx: hx.StepContext) -> hx.StepResult:
    raise AssertionError("the pure engine must never run step code")


# --- random workflows --------------------------------------------------------------------------


@dataclass
class Spec:
    """A generated workflow plus the plain data the checks use (independent of the engine)."""

    workflow: hx.Workflow
    keys: list[str]  # in a topological order
    events: dict[str, tuple[str, ...]]
    successors: dict[str, set[str]]
    predecessors: dict[str, set[str]] = field(default_factory=dict)
    max_attempts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.predecessors = {k: set() for k in self.keys}
        for source, targets in self.successors.items():
            for target in targets:
                self.predecessors[target].add(source)
        self.descendants = {k: set[str]() for k in self.keys}
        for key in reversed(self.keys):  # later steps first: their descendants are known
            for nxt in self.successors[key]:
                self.descendants[key] |= {nxt} | self.descendants[nxt]


@st.composite
def workflows(draw: st.DrawFn) -> Spec:
    n = draw(st.integers(1, 8))
    keys = draw(st.permutations(NAME_POOL))[:n]
    events: dict[str, tuple[str, ...]] = {}
    retries: dict[str, hx.Retry | None] = {}
    for key in keys:
        chosen = draw(st.lists(st.sampled_from(EVENT_POOL), min_size=1, max_size=3, unique=True))
        if draw(st.booleans()):  # can suspend with a timeout, or be resumed by a timer
            chosen.append("timeout")
        events[key] = tuple(chosen)
        retries[key] = draw(
            st.none()
            | st.builds(
                hx.Retry,
                max_attempts=st.integers(1, 3),
                backoff=st.sampled_from(["exponential", "linear", "constant"]),
                initial=st.sampled_from([0.0, 0.5, 2.0]),
                max_backoff=st.sampled_from([1.0, 30.0]),
                jitter=st.booleans(),
            )
        )

    # Abstract targets: ("done",) | ("step", j, config) | ("fan", [j..]) | ("route", [j..])
    edges: dict[tuple[int, str], tuple[Any, ...]] = {}
    for i, key in enumerate(keys):
        later = list(range(i + 1, n))
        for event in events[key]:
            kinds = ["done"] + (["step", "step", "fan", "route"] if later else [])
            kind = draw(st.sampled_from(kinds))
            if kind == "done":
                edges[(i, event)] = ("done",)
            elif kind == "step":
                config = draw(st.none() | st.fixed_dictionaries({"c": st.integers(0, 9)}))
                edges[(i, event)] = ("step", draw(st.sampled_from(later)), config)
            else:
                picked = draw(st.lists(st.sampled_from(later), min_size=1, max_size=3, unique=True))
                edges[(i, event)] = (kind, picked)

    def targets_of(edge: tuple[Any, ...]) -> list[int]:
        if edge[0] == "done":
            return []
        if edge[0] == "step":
            return [edge[1]]
        return list(edge[1])

    # Make every step reachable: attach an unreachable one to a random reachable earlier one.
    reachable = {0}
    for j in range(1, n):
        for (i, _), edge in edges.items():
            if i in reachable and j in targets_of(edge):
                reachable.add(j)
        if j in reachable:
            continue
        i = draw(st.sampled_from(sorted(r for r in reachable if r < j)))
        event = draw(st.sampled_from(events[keys[i]]))
        old = edges[(i, event)]
        if old[0] == "done":
            edges[(i, event)] = ("step", j, None)
        elif old[0] == "step":
            edges[(i, event)] = ("fan", [old[1], j])
        else:
            edges[(i, event)] = (old[0], [*old[1], j])
        reachable.add(j)

    steps = {
        key: hx.step(never_called, key=key, events=events[key], retry=retries[key]) for key in keys
    }
    outsider = hx.step(never_called, key="outsider", events=("ok",))

    def make_choose(allowed: list[str]) -> Any:
        def choose(ctx: hx.StepContext) -> Any:
            pick = ctx.results.get(ctx.step, {}).get("route", 0)
            if pick == ROUTE_OUTSIDE:
                return outsider
            if pick == ROUTE_RAISE:
                raise RuntimeError("choose failed")
            if pick == ROUTE_ALL:
                return [steps[k] for k in allowed]
            return steps[allowed[pick % len(allowed)]]

        return choose

    transitions: list[tuple[tuple[hx.Step, str], object]] = []
    successors: dict[str, set[str]] = {key: set() for key in keys}
    for (i, event), edge in edges.items():
        source = steps[keys[i]]
        target_keys = [keys[j] for j in targets_of(edge)]
        successors[keys[i]].update(target_keys)
        target: object
        if edge[0] == "done":
            target = hx.Done
        elif edge[0] == "step":
            step = steps[keys[edge[1]]]
            target = step if edge[2] is None else hx.Target(step, edge[2])
        elif edge[0] == "fan":
            target = [steps[k] for k in target_keys]
        else:
            target = hx.Route(make_choose(target_keys), [steps[k] for k in target_keys])
        transitions.append(((source, event), target))

    wf = hx.Workflow(
        "random", start=steps[keys[0]], transitions=transitions, unique=hx.Unique("prop")
    )
    return Spec(
        workflow=wf,
        keys=list(keys),
        events=events,
        successors=successors,
        max_attempts={k: (r.max_attempts if r else 1) for k, r in retries.items()},
    )


# --- an independent model and the invariants ---------------------------------------------------


def may_still_run(spec: Spec, instance: hx.Instance) -> set[str]:
    """Steps not completed that a running, due, suspended or backing-off step can still reach."""
    completed = set(instance.completed)
    seeds = set(instance.active) | set(instance.waiting)
    seeds |= {t.step for t in instance.timers if t.kind == "retry"}
    seeds |= {k for k in instance.fired if k not in completed}
    if not instance.attempts and not instance.status.is_terminal:
        seeds.add(spec.keys[0])
    found = set(seeds)
    for seed in seeds:
        found |= spec.descendants[seed] - completed
    return found


def takable(spec: Spec, instance: hx.Instance, queued: hx.InboxEvent) -> bool:
    """Whether a step that can still run (the named one, if any) declares the queued event."""
    if instance.status is hx.Status.CANCELLED:
        return False
    candidates = may_still_run(spec, instance) - set(instance.completed)
    if queued.step is not None:
        candidates &= {queued.step}
    return any(queued.event in spec.events[key] for key in candidates)


class Checker:
    """Applies inputs and checks every transition; models the runtime's tasks and timers."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.wf = spec.workflow
        self.now = 1_000_000.0
        self.instance = new_instance(
            self.wf, "prop::x", initial={"n": 1}, metadata=None, now=self.now
        )
        self.running: dict[str, int] = {}  # step -> attempt the runtime is running
        self.stale: list[tuple[str, int]] = []  # attempts that were cancelled or lost
        self.armed: dict[str, hx.Timer] = {}  # timers the runtime sleeps on
        self.highest_attempt: dict[str, int] = {}
        self.inputs = 0
        self.recoveries = 0
        self.finished = False

    # -- one input, every check --------------------------------------------------------------

    def feed(self, event: Input) -> Transition | None:
        """Apply ``event``; return None if it was rejected (after checking nothing changed)."""
        before = self.instance
        encoded = encode_instance(before)
        self.inputs += 1
        try:
            t = apply(self.wf, before, event, self.now)
        except hx.EventRejected:
            assert encode_instance(before) == encoded, "a rejection changed the instance"
            assert isinstance(event, Deliver | ScheduleResume | Cancel), event
            return None
        assert encode_instance(before) == encoded, "apply mutated its input"
        after = t.instance
        self.check(before, after, t, event)
        self.instance = after
        self.carry_out(t.commands)
        return t

    def check(self, before: hx.Instance, after: hx.Instance, t: Transition, event: Input) -> None:
        spec = self.spec
        # revision: +1 on change, same object otherwise
        if t.changed:
            assert after.revision == before.revision + 1
            assert after.updated_at == self.now
        else:
            assert after is before
        # nothing happens to a terminal instance
        if before.status.is_terminal:
            assert not t.changed, event
            assert t.commands == (), (event, t.commands)
        # status is derived, and agrees with the sets
        assert after.status is derive_status(after)
        status = after.status
        if status is hx.Status.RUNNING:
            assert after.active
        if status is hx.Status.WAITING:
            assert not after.active
            assert after.waiting or after.timers
        if status.is_terminal:
            assert not after.active
            assert not after.waiting
            assert not after.timers
        if status is hx.Status.FAILED:
            assert after.error is not None
            assert after.error.attempts >= 1
            assert after.error.step in spec.keys
        if status is hx.Status.COMPLETED:
            # every step whose edge fired did run: no join was forgotten
            assert set(after.fired) <= set(after.completed), (after.fired, after.completed)
            assert may_still_run(spec, after) == set()
        # history is append-only; finished attempts only
        assert after.history[: len(before.history)] == before.history
        for entry in after.history[len(before.history) :]:
            assert entry.at == self.now
            assert (entry.event is None) != (entry.error is None)
            if entry.event is not None:
                assert entry.event in spec.events[entry.step]
        # completed steps: once each, each with one successful history entry
        assert len(set(after.completed)) == len(after.completed)
        assert after.completed[: len(before.completed)] == before.completed
        successes = [h.step for h in after.history if h.event is not None]
        assert sorted(successes) == sorted(after.completed)
        # every completed step has an entry in results ({} when it stored none)
        assert set(after.results) == set(after.completed)
        # sets are disjoint and consistent
        assert not set(after.active) & set(after.completed)
        assert not set(after.waiting) & set(after.completed)
        assert not set(after.active) & set(after.waiting)
        for key, accepted in after.waiting.items():
            assert accepted == spec.events[key]
        assert len({tm.id for tm in after.timers}) == len(after.timers)
        retrying = [tm.step for tm in after.timers if tm.kind == "retry"]
        assert len(set(retrying)) == len(retrying)
        assert not set(retrying) & (set(after.active) | set(after.waiting) | set(after.completed))
        # the inbox is bounded and holds only events a step that can still run takes;
        # every event dropped from it is noted
        assert len(after.inbox) <= MAX_INBOX
        if t.changed:
            assert all(takable(spec, after, q) for q in after.inbox), after.inbox
        kept = {id(q) for q in after.inbox}
        taken = [q for q in before.inbox if id(q) not in kept]
        dropped = [n for n in t.notes if isinstance(n, EventDropped)]
        assert len(dropped) <= len(taken)
        for note in dropped:
            assert any(
                (q.event, q.step, q.dedupe_key) == (note.event, note.step, note.dedupe_key)
                for q in taken
            )
        assert len(after.dedupe_keys) <= DEDUPE_WINDOW
        # the snapshot survives storage
        assert decode_instance(encode_instance(after)) == after
        self.check_effect(before, after, t, event)
        self.check_commands(before, after, t, event)

    def check_effect(
        self, before: hx.Instance, after: hx.Instance, t: Transition, event: Input
    ) -> None:
        """The input did what it says: a due timer fires, a delivered event ends its step."""
        if before.status.is_terminal:
            return
        new_entries = after.history[len(before.history) :]
        if isinstance(event, TimerFired):
            timer = next((tm for tm in before.timers if tm.id == event.timer_id), None)
            if timer is None:
                assert not t.changed
            elif timer.kind == "retry":
                assert (
                    RunStep(
                        step=timer.step,
                        attempt=before.attempts[timer.step] + 1,
                        config=before.configs.get(timer.step),
                    )
                    in t.commands
                )
            elif timer.step in before.waiting:  # its "timeout" ends the suspended step
                assert timer.step not in after.waiting
                assert new_entries[0].step == timer.step
                assert new_entries[0].event in ("timeout", None)
        if isinstance(event, Deliver) and t.reply is Delivery.DELIVERED:
            assert new_entries
            assert new_entries[0].event in (event.event, None)
            assert new_entries[0].step in before.waiting
            assert new_entries[0].step not in after.waiting
        if isinstance(event, Deliver) and t.reply is Delivery.QUEUED:
            assert after.inbox[-1].event == event.event
            assert after.inbox[:-1] == before.inbox
            assert new_entries == ()
        if (
            isinstance(event, Deliver)
            and event.dedupe_key
            and t.reply in (Delivery.DELIVERED, Delivery.QUEUED)
        ):
            assert event.dedupe_key in after.dedupe_keys
        if isinstance(event, StepSuspended) and t.changed:
            events = self.spec.events[event.step]
            if event.timeout is not None and "timeout" not in events:
                assert new_entries[0].error == "UndeclaredEvent"
            else:
                # the first queued event this step accepts is delivered at once (FIFO)
                first = next(
                    (q for q in before.inbox if q.event in events and q.step in (None, event.step)),
                    None,
                )
                if first is None:
                    assert after.waiting[event.step] == events
                    assert new_entries == ()
                    assert after.inbox == before.inbox
                else:
                    rest = list(before.inbox)
                    rest.remove(first)
                    # what no step can take any more once this one ended is dropped
                    assert after.inbox == tuple(q for q in rest if takable(self.spec, after, q))
                    assert new_entries[0].step == event.step
                    assert new_entries[0].event in (first.event, None)
                    if new_entries[0].event is not None and first.payload is not None:
                        assert after.results[event.step] == first.payload
        if isinstance(event, StepFailed) and t.changed:
            entry = new_entries[0]
            assert (entry.step, entry.error, entry.attempt) == (
                event.step,
                event.error_type,
                event.attempt,
            )
            limit = self.spec.max_attempts[event.step]
            # Retries count failed attempts; an attempt cut short by a crash does not count.
            if before.failures.get(event.step, 0) + 1 < limit:
                assert after.error is None
                assert event.step in after.retrying
            else:
                assert after.error == hx.ErrorInfo(
                    step=event.step,
                    type=event.error_type,
                    message=event.message,
                    attempts=event.attempt,
                )

    def check_commands(
        self, before: hx.Instance, after: hx.Instance, t: Transition, event: Input
    ) -> None:
        spec = self.spec
        commands = t.commands
        finished = [c for c in commands if isinstance(c, Finished)]
        if not before.status.is_terminal and after.status.is_terminal:
            assert finished == [Finished(status=after.status)]
            assert commands[-1] == finished[0]
        else:
            assert finished == []
        if self.finished:
            assert commands == ()
        # timers: every new one is armed, every dropped one disarmed (the fired one excepted)
        old_ids = {tm.id for tm in before.timers}
        new_ids = {tm.id for tm in after.timers}
        armed = {c.timer.id for c in commands if isinstance(c, ArmTimer)}
        disarmed = {c.timer_id for c in commands if isinstance(c, DisarmTimer)}
        assert new_ids - old_ids <= armed
        gone = old_ids - new_ids
        if isinstance(event, TimerFired):
            gone.discard(event.timer_id)
        assert gone == disarmed
        if isinstance(event, Recover):
            assert armed == old_ids
        else:
            assert armed == new_ids - old_ids
        for c in commands:
            if isinstance(c, ArmTimer):
                assert c.timer in after.timers
        # only running steps are cancelled
        for c in commands:
            if isinstance(c, CancelStep):
                assert c.step in before.active
                assert c.step not in after.active
        # RunStep: never a completed step, the attempt always grows, joins wait
        runs = [c for c in commands if isinstance(c, RunStep)]
        assert len({r.step for r in runs}) == len(runs)
        live_after = may_still_run(spec, after)
        for run in runs:
            assert run.step not in before.completed
            assert run.step in after.active
            assert run.attempt == after.attempts[run.step]
            assert run.attempt > self.highest_attempt.get(run.step, 0), (run, self.highest_attempt)
            if run.attempt == 1:
                assert run.step not in self.highest_attempt
            else:  # a retry (after a failure) or a re-run after a crash
                assert isinstance(event, TimerFired | Recover), event
            assert run.attempt <= spec.max_attempts[run.step] + self.recoveries
            self.highest_attempt[run.step] = run.attempt
            assert run.config == after.configs.get(run.step)
            if run.step != spec.keys[0] and run.attempt == 1:
                # a join never starts while a predecessor may still reach it
                assert not (spec.predecessors[run.step] & live_after), (
                    run.step,
                    spec.predecessors[run.step] & live_after,
                )
                assert after.fired.get(run.step), "a step started without an edge to it"
        # the engine's own liveness agrees with the independent model
        if not after.status.is_terminal:
            assert live_steps(self.wf, after) == live_after

    def carry_out(self, commands: tuple[Command, ...]) -> None:
        for c in commands:
            match c:
                case RunStep(step=step, attempt=attempt):
                    if step in self.running:
                        self.stale.append((step, self.running[step]))
                    self.running[step] = attempt
                case CancelStep(step=step):
                    self.stale.append((step, self.running.pop(step)))
                case ArmTimer(timer=timer):
                    self.armed[timer.id] = timer
                case DisarmTimer(timer_id=timer_id):
                    self.armed.pop(timer_id, None)
                case Finished():
                    self.finished = True
        # the runtime's view matches the instance: every active step has a task, every timer
        # a sleeper
        assert set(self.running) == set(self.instance.active), (self.running, self.instance)
        for step, attempt in self.running.items():
            assert self.instance.attempts[step] == attempt
        assert set(self.armed) == {tm.id for tm in self.instance.timers}

    # -- the environment's moves ------------------------------------------------------------

    def report(self, outcome: StepSucceeded | StepFailed | StepSuspended) -> Transition | None:
        """The running attempt ``outcome`` names ended: its task is gone."""
        assert self.running.pop(outcome.step) == outcome.attempt
        t = self.feed(outcome)
        assert t is not None
        assert t.changed
        return t

    def crash_and_recover(self) -> None:
        self.stale.extend(self.running.items())
        self.running.clear()
        self.armed.clear()
        self.recoveries += 1
        t = self.feed(Recover())
        assert t is not None
        if self.instance.status.is_terminal:
            assert t.commands == ()

    def fire(self, timer_id: str) -> None:
        timer = self.armed.pop(timer_id, None)
        if timer is not None:
            self.now = max(self.now, timer.deadline)
        self.feed(TimerFired(timer_id=timer_id))

    def resolve(self, limit: int) -> None:
        """Finish the run: succeed running steps, resume suspended ones, fire timers."""
        for _ in range(limit):
            if self.instance.status.is_terminal:
                return
            if self.running:
                step, attempt = sorted(self.running.items())[0]
                self.report(
                    StepSucceeded(step=step, attempt=attempt, event=self.spec.events[step][0])
                )
            elif self.instance.waiting:
                step = sorted(self.instance.waiting)[0]
                t = self.feed(Deliver(event=self.spec.events[step][0], payload=None, step=step))
                assert t is not None
                assert t.changed
            elif self.armed:
                self.fire(min(self.armed.values(), key=lambda tm: (tm.deadline, tm.id)).id)
            else:
                raise AssertionError(f"stuck: {self.instance}")
        raise AssertionError(f"not terminal after {limit} resolving inputs: {self.instance}")


MOVES = (
    "report",
    "report",
    "report",
    "report",
    "deliver",
    "deliver",
    "deliver",
    "fire",
    "fire",
    "stale",
    "schedule",
    "cancel_timer",
    "recover",
    "cancel",
    "start",
)


def random_run(spec: Spec, data: st.DataObject, max_moves: int) -> Checker:
    env = Checker(spec)
    begin: list[Input] = [Start(), Recover()]
    env.feed(data.draw(st.sampled_from(begin), label="begin"))
    all_events = sorted({e for evs in spec.events.values() for e in evs} | {"bogus"})
    for _ in range(max_moves):
        if env.instance.status.is_terminal and data.draw(st.booleans(), label="stop"):
            break
        env.now += data.draw(st.sampled_from([0.0, 0.5, 3.0]), label="tick")
        move = data.draw(st.sampled_from(MOVES), label="move")
        if move == "report" and env.running:
            step = data.draw(st.sampled_from(sorted(env.running)), label="step")
            attempt = env.running[step]
            outcome = data.draw(
                st.sampled_from(["succeed", "succeed", "fail", "suspend", "suspend", "undeclared"]),
                label="outcome",
            )
            if outcome == "succeed":
                event = data.draw(st.sampled_from(spec.events[step]), label="event")
                results = data.draw(
                    st.none()
                    | st.fixed_dictionaries(
                        {"route": st.sampled_from([0, 1, 2, ROUTE_OUTSIDE, ROUTE_RAISE, ROUTE_ALL])}
                    ),
                    label="results",
                )
                metadata = data.draw(
                    st.none() | st.fixed_dictionaries({"m": st.integers(0, 3)}), label="metadata"
                )
                env.report(
                    StepSucceeded(
                        step=step, attempt=attempt, event=event, results=results, metadata=metadata
                    )
                )
            elif outcome == "fail":
                env.report(
                    StepFailed(step=step, attempt=attempt, error_type="Boom", message="it broke")
                )
            elif outcome == "suspend":
                timeout = data.draw(st.none() | st.sampled_from([0.0, 1.0, 10.0]), label="timeout")
                env.report(StepSuspended(step=step, attempt=attempt, timeout=timeout))
            else:
                env.report(StepSucceeded(step=step, attempt=attempt, event="bogus"))
        elif move == "deliver":
            waiting = sorted(env.instance.waiting)
            running = sorted(env.running)
            # mostly events a running step declares: they queue up in the inbox
            pool = sorted({e for k in running for e in spec.events[k]}) or all_events
            event = data.draw(
                st.sampled_from(pool) | st.sampled_from(all_events), label="deliver event"
            )
            target = data.draw(st.none() | st.sampled_from(waiting or spec.keys), label="to")
            payload = data.draw(
                st.fixed_dictionaries({}, optional={"route": st.sampled_from([0, 1, ROUTE_ALL])}),
                label="payload",
            )
            payload["serial"] = env.inputs  # tells apart events that are otherwise equal
            dedupe = data.draw(st.none() | st.sampled_from(["d1", "d2"]), label="dedupe")
            seen = dedupe is not None and dedupe in env.instance.dedupe_keys
            t = env.feed(Deliver(event=event, payload=payload, step=target, dedupe_key=dedupe))
            if seen and t is not None:
                assert t.reply is Delivery.IGNORED
                assert not t.changed
        elif move == "fire" and env.armed:
            env.fire(data.draw(st.sampled_from(sorted(env.armed)), label="timer"))
        elif move == "stale":
            # a lost attempt reporting late, or a timer that is no longer armed
            if env.stale:
                step, attempt = data.draw(st.sampled_from(env.stale), label="stale")
                late: list[Input] = [
                    StepSucceeded(step=step, attempt=attempt, event=spec.events[step][0]),
                    StepFailed(step=step, attempt=attempt, error_type="Late", message="late"),
                    StepSuspended(step=step, attempt=attempt, timeout=None),
                ]
                t = env.feed(data.draw(st.sampled_from(late), label="stale outcome"))
                assert t is not None
                assert not t.changed
                assert t.commands == ()
            else:
                t = env.feed(TimerFired(timer_id="t9999"))
                assert t is not None
                assert not t.changed
        elif move == "schedule":
            step = data.draw(st.sampled_from(spec.keys), label="resume step")
            t = env.feed(ScheduleResume(step=step, delay=data.draw(st.sampled_from([0.0, 2.0]))))
            if t is not None:
                assert isinstance(t.reply, str)
                assert t.reply in env.armed
        elif move == "cancel_timer":
            ids = sorted({tm.id for tm in env.instance.timers} | {"t9999"})
            timer_id = data.draw(st.sampled_from(ids), label="cancel timer")
            was = next((tm for tm in env.instance.timers if tm.id == timer_id), None)
            t = env.feed(CancelTimer(timer_id=timer_id))
            assert t is not None
            # Only schedule_resume's timers are the caller's to drop.
            assert t.reply is (was is not None and was.kind == "resume")
        elif move == "recover":
            env.crash_and_recover()
        elif move == "cancel" and data.draw(st.integers(0, 3), label="really cancel") == 0:
            status_was = env.instance.status
            t = env.feed(Cancel(reason="prop"))
            if status_was in (hx.Status.COMPLETED, hx.Status.FAILED):
                assert t is None
            else:
                assert t is not None
                assert env.instance.status is hx.Status.CANCELLED
        elif move == "start":
            t = env.feed(Start())
            assert t is not None
            assert not t.changed
    return env


def resolving_bound(spec: Spec) -> int:
    """Inputs enough to finish any run: each step runs, suspends, backs off a few times."""
    return sum(4 * (attempts + 1) for attempts in spec.max_attempts.values()) + 10


# --- the properties ----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(workflows(), st.data())
def test_random_runs_keep_every_invariant_and_terminate(spec: Spec, data: st.DataObject) -> None:
    env = random_run(spec, data, max_moves=40)
    env.resolve(resolving_bound(spec))
    assert env.instance.status.is_terminal
    assert env.finished
    # after Finished, every input yields no command or a rejection
    final = env.instance
    for event in (
        Start(),
        Recover(),
        TimerFired(timer_id="t1"),
        CancelTimer(timer_id="t1"),
        StepSucceeded(step=spec.keys[0], attempt=1, event=spec.events[spec.keys[0]][0]),
        StepFailed(step=spec.keys[0], attempt=1, error_type="E", message="m"),
        Deliver(event="ok"),
        ScheduleResume(step=spec.keys[0], delay=1.0),
        Cancel(),
    ):
        t = env.feed(event)
        assert t is None or t.commands == ()
    assert env.instance is final


@PROPERTY_SETTINGS
@given(workflows())
def test_happy_path_completes(spec: Spec) -> None:
    """Succeeding every step with its first event, resuming suspended ones, completes."""
    env = Checker(spec)
    env.feed(Start())
    env.resolve(resolving_bound(spec))
    assert env.instance.status is hx.Status.COMPLETED
    assert env.instance.error is None
    assert env.instance.completed[0] == spec.keys[0]
    assert env.inputs <= len(spec.keys) + 1


@PROPERTY_SETTINGS
@given(workflows(), st.data())
def test_crash_anywhere_then_recover_ends_like_no_crash(spec: Spec, data: st.DataObject) -> None:
    """Recovering at any point and re-running lost attempts reaches the same completed steps."""
    plain = Checker(spec)
    plain.feed(Start())
    plain.resolve(resolving_bound(spec))
    crashing = Checker(spec)
    crashing.feed(Start())
    crashes = data.draw(st.lists(st.integers(0, 12), max_size=3), label="crash points")
    for _ in range(resolving_bound(spec)):
        if crashing.instance.status.is_terminal:
            break
        if crashes and crashes[0] <= crashing.inputs:
            crashes.pop(0)
            crashing.crash_and_recover()
        if crashing.running:
            step, attempt = sorted(crashing.running.items())[0]
            crashing.report(StepSucceeded(step=step, attempt=attempt, event=spec.events[step][0]))
        elif crashing.instance.waiting:
            step = sorted(crashing.instance.waiting)[0]
            crashing.feed(Deliver(event=spec.events[step][0], payload=None, step=step))
        elif crashing.armed:
            crashing.fire(min(crashing.armed.values(), key=lambda tm: (tm.deadline, tm.id)).id)
    assert crashing.instance.status is plain.instance.status is hx.Status.COMPLETED
    assert set(crashing.instance.completed) == set(plain.instance.completed)
    assert crashing.instance.results == plain.instance.results


@PROPERTY_SETTINGS
@given(
    st.integers(1, 20),
    st.text(min_size=1, max_size=30),
    st.floats(0.0, 100.0),
    st.sampled_from(["exponential", "linear", "constant"]),
)
def test_jitter_is_deterministic_and_bounded(
    failed: int, instance_id: str, initial: float, backoff: Any
) -> None:
    plain = hx.Retry(max_attempts=25, backoff=backoff, initial=initial, max_backoff=50.0)
    jittered = hx.Retry(
        max_attempts=25, backoff=backoff, initial=initial, max_backoff=50.0, jitter=True
    )
    a = hx.step(never_called, key="a", events=("ok",), retry=plain)
    b = hx.step(never_called, key="a", events=("ok",), retry=jittered)
    delay = retry_delay(a, instance_id, failed)
    spread = retry_delay(b, instance_id, failed)
    assert delay is not None
    assert spread is not None
    assert delay == plain.delay(failed) <= 50.0
    assert delay / 2 <= spread <= delay
    assert retry_delay(b, instance_id, failed) == spread


@PROPERTY_SETTINGS
@given(workflows(), st.data())
def test_a_back_edge_is_always_reported_as_a_cycle(spec: Spec, data: st.DataObject) -> None:
    """Validation: adding an edge from a step back to one of its ancestors is a cycle."""
    pairs = [
        (src, dst)
        for src in spec.keys
        for dst in spec.keys
        if src == dst or src in spec.descendants[dst]
    ]
    src, dst = data.draw(st.sampled_from(pairs), label="back edge")
    steps = spec.workflow.steps
    loop = hx.step(never_called, key=src, events=(*spec.events[src], "loop"))
    transitions: list[Any] = []
    for (key, event), edge in spec.workflow.edges.items():
        source = loop if key == src else steps[key]
        target: object = (
            hx.Done if edge.done else [(loop if k == src else steps[k]) for k in edge.target_keys]
        )
        transitions.append(((source, event), target))
    transitions.append(((loop, "loop"), loop if dst == src else steps[dst]))
    start = loop if spec.keys[0] == src else steps[spec.keys[0]]
    with pytest.raises(hx.WorkflowDefinitionError) as info:
        hx.Workflow("cyclic", start=start, transitions=transitions, unique=hx.Unique("p"))
    cycle = [p for p in info.value.problems if p.startswith("cycle: ")]
    assert len(cycle) == 1, info.value.problems
    assert repr(src) in cycle[0]
    assert repr(dst) in cycle[0]


@PROPERTY_SETTINGS
@given(workflows(), st.data())
def test_early_events_wait_in_the_inbox_and_arrive_in_order(
    spec: Spec, data: st.DataObject
) -> None:
    """Every step suspends; events for steps that can still run are queued ahead of time."""
    env = Checker(spec)
    env.feed(Start())
    for _ in range(resolving_bound(spec) * 4):
        if env.instance.status.is_terminal:
            break
        live = may_still_run(spec, env.instance) - set(env.instance.waiting)
        pool = sorted({e for k in live for e in spec.events[k]})
        for _ in range(data.draw(st.integers(0, 3) if pool else st.just(0), label="queue")):
            event = data.draw(st.sampled_from(pool), label="early event")
            t = env.feed(Deliver(event=event, payload={"serial": env.inputs}))
            assert t is None or t.reply in (Delivery.QUEUED, Delivery.DELIVERED)
        if env.instance.status.is_terminal:  # a delivery finished it
            break
        if env.running:
            step, attempt = sorted(env.running.items())[0]
            env.report(
                StepSuspended(step=step, attempt=attempt, timeout=None)
            )  # may take a queued event
        elif env.instance.waiting:
            step = sorted(env.instance.waiting)[0]
            env.feed(Deliver(event=spec.events[step][0], payload=None, step=step))
        else:
            env.fire(sorted(env.armed)[0])
    assert env.instance.status.is_terminal
