"""Retries with durable backoff, and per-attempt step timeouts, under virtual time.

Backoff gaps are read from the instance's history: one entry per finished attempt,
stamped with the engine clock (``hx.testing.VirtualClock``), and the attempts here
fail or succeed at once, so the gap between two entries is the backoff delay.
"""

from __future__ import annotations

import itertools
import math

import pytest
import trio
import trio.testing

import hephaestus as hx

APPROX = 1e-6  # jittered deadlines are fractional epoch seconds: compare to a microsecond


async def finish(engine: hx.Engine, iid: str, within: float = 86_400.0) -> hx.Instance:
    """``engine.wait``, but a regression that never fires fails fast instead of hanging."""
    with trio.fail_after(within):  # virtual seconds: autojump gets here at once
        return await engine.wait(iid)


def one_step(start: hx.Step) -> hx.Workflow:
    return hx.Workflow(
        "retrying",
        start=start,
        transitions={(start, e): hx.Done for e in start.events},
        unique=hx.Unique("t"),
    )


class Flaky:
    """A step that fails its first ``failures`` attempts, recording (attempt, virtual time)."""

    def __init__(
        self,
        failures: float,
        retry: hx.Retry | None,
        timeout: float | None = None,
        hang: bool = False,
    ) -> None:
        self.failures = failures
        self.hang = hang
        self.calls: list[tuple[int, float]] = []
        self.finished_hanging = 0
        self.step = hx.step(self.run, key="flaky", events=("done",), retry=retry, timeout=timeout)

    async def run(self, ctx: hx.StepContext) -> hx.StepResult:
        self.calls.append((ctx.attempt, trio.current_time()))
        if ctx.attempt <= self.failures:
            if self.hang:
                await trio.sleep(3600)
                self.finished_hanging += 1
            raise ValueError(f"boom {ctx.attempt}")
        return "done"


def gaps(instance: hx.Instance) -> list[float]:
    stamps = [h.at for h in instance.history]
    return [b - a for a, b in itertools.pairwise(stamps)]


def outcomes(instance: hx.Instance) -> list[tuple[int, str | None, str | None]]:
    return [(h.attempt, h.event, h.error) for h in instance.history]


async def run_to_end(flaky: Flaky, value: str = "a") -> tuple[hx.Instance, float]:
    """Run one instance of ``flaky`` on a fresh engine; return it and its virtual start."""
    wf = one_step(flaky.step)
    async with hx.open_engine(workflows=[wf], clock=hx.testing.VirtualClock()) as engine:
        t0 = trio.current_time()
        final = await finish(engine, await engine.start(wf, value))
    return final, t0


# --- backoff ----------------------------------------------------------------------------------


async def test_fails_twice_then_succeeds_on_attempt_three_after_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(2, hx.Retry(max_attempts=3, backoff="exponential", initial=1.0))
    wf = one_step(flaky.step)
    clock = hx.testing.VirtualClock()
    seen: list[hx.TelemetryEvent] = []
    async with hx.open_engine(workflows=[wf], clock=clock, telemetry=seen.append) as engine:
        t0 = trio.current_time()
        final = await finish(engine, await engine.start(wf, "a"))
    assert final.status is hx.Status.COMPLETED
    assert final.error is None
    assert outcomes(final) == [(1, None, "ValueError"), (2, None, "ValueError"), (3, "done", None)]
    assert [h.at - clock.start for h in final.history] == [t0, t0 + 1, t0 + 3]
    assert flaky.calls == [(1, t0), (2, t0 + 1), (3, t0 + 3)]
    assert final.timers == ()
    retries = [e for e in seen if e.name == "step.retry"]
    assert [(e.step, e.metadata["attempt"], e.metadata["deadline"]) for e in retries] == [
        ("flaky", 2, clock.start + t0 + 1),
        ("flaky", 3, clock.start + t0 + 3),
    ]


@pytest.mark.parametrize(
    ("retry", "expected"),
    [
        (hx.Retry(max_attempts=4, backoff="exponential", initial=1.0), [1, 2, 4]),
        (hx.Retry(max_attempts=4, backoff="exponential", initial=0.5), [0.5, 1, 2]),
        (hx.Retry(max_attempts=4, backoff="linear", initial=2.0), [2, 4, 6]),
        (hx.Retry(max_attempts=4, backoff="constant", initial=3.0), [3, 3, 3]),
        (
            hx.Retry(max_attempts=6, backoff="exponential", initial=1.0, max_backoff=5.0),
            [1, 2, 4, 5, 5],
        ),
        (hx.Retry(max_attempts=5, backoff="linear", initial=4.0, max_backoff=10.0), [4, 8, 10, 10]),
        (hx.Retry(max_attempts=3, backoff="constant", initial=90.0, max_backoff=7.0), [7, 7]),
    ],
    ids=[
        "exp-1",
        "exp-0.5",
        "linear",
        "constant",
        "exp-capped",
        "linear-capped",
        "constant-capped",
    ],
)
async def test_backoff_gaps(
    autojump_clock: trio.testing.MockClock, retry: hx.Retry, expected: list[float]
) -> None:
    flaky = Flaky(retry.max_attempts - 1, retry)
    final, _ = await run_to_end(flaky)
    assert final.status is hx.Status.COMPLETED
    assert [a for a, *_ in outcomes(final)] == list(range(1, retry.max_attempts + 1))
    assert gaps(final) == expected
    assert [b - a for (_, a), (_, b) in itertools.pairwise(flaky.calls)] == expected


async def test_jitter_stays_within_half_to_full_delay_and_is_deterministic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    retry = hx.Retry(
        max_attempts=6, backoff="exponential", initial=8.0, max_backoff=1000.0, jitter=True
    )
    nominal = [8.0, 16.0, 32.0, 64.0, 128.0]
    first, _ = await run_to_end(Flaky(5, retry))
    again, _ = await run_to_end(Flaky(5, retry))  # same instance id, later virtual time
    other, _ = await run_to_end(Flaky(5, retry), value="b")
    jittered = gaps(first)
    for gap, delay in zip(jittered, nominal, strict=True):
        assert delay / 2 - APPROX <= gap <= delay + APPROX
    assert gaps(again) == pytest.approx(jittered, abs=APPROX)  # deterministic
    assert jittered != pytest.approx(nominal, abs=1e-3)  # jitter is really applied
    assert gaps(other) != pytest.approx(jittered, abs=1e-3)  # and differs between instances
    for gap, delay in zip(gaps(other), nominal, strict=True):
        assert delay / 2 - APPROX <= gap <= delay + APPROX


async def test_always_failing_step_fails_the_instance_after_max_attempts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(math.inf, hx.Retry(max_attempts=4, backoff="constant", initial=2.0))
    final, _ = await run_to_end(flaky)
    assert final.status is hx.Status.FAILED
    assert final.error == hx.ErrorInfo(
        step="flaky", type="ValueError", message="boom 4", attempts=4
    )
    assert outcomes(final) == [(n, None, "ValueError") for n in (1, 2, 3, 4)]
    assert gaps(final) == [2, 2, 2]
    assert final.timers == ()
    await trio.sleep(100)
    assert len(flaky.calls) == 4  # no fifth attempt


async def test_failing_step_without_policy_fails_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(math.inf, None)
    final, _ = await run_to_end(flaky)
    assert final.error == hx.ErrorInfo(
        step="flaky", type="ValueError", message="boom 1", attempts=1
    )
    assert len(flaky.calls) == 1


@pytest.mark.parametrize(("down_until", "retried_at"), [(20, 30), (50, 50)])
async def test_crash_during_backoff_retries_at_the_persisted_time(
    autojump_clock: trio.testing.MockClock, down_until: float, retried_at: float
) -> None:
    flaky = Flaky(1, hx.Retry(max_attempts=3, backoff="constant", initial=30.0))
    wf = one_step(flaky.step)
    clock = hx.testing.VirtualClock()
    store = hx.MemoryStorage()
    async with hx.open_engine(workflows=[wf], storage=store, clock=clock) as engine:
        t0 = trio.current_time()
        iid = await engine.start(wf, "a")
        await trio.sleep(10)
        backing_off = await engine.get(iid)
        assert backing_off.status is hx.Status.WAITING
        assert backing_off.timers == (
            hx.Timer(
                id=backing_off.timers[0].id,
                kind="retry",
                step="flaky",
                deadline=clock.start + t0 + 30,
            ),
        )
    await trio.sleep_until(t0 + down_until)
    async with hx.open_engine(workflows=[wf], storage=store, clock=clock) as engine:
        final = await finish(engine, iid)
    assert flaky.calls == [(1, t0), (2, t0 + retried_at)]
    assert final.status is hx.Status.COMPLETED
    assert outcomes(final) == [(1, None, "ValueError"), (2, "done", None)]
    assert [h.at - clock.start for h in final.history] == [t0, t0 + retried_at]


async def test_cancelling_during_backoff_cancels_the_pending_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(math.inf, hx.Retry(max_attempts=5, backoff="constant", initial=30.0))
    wf = one_step(flaky.step)
    store = hx.MemoryStorage()
    clock = hx.testing.VirtualClock()
    async with hx.open_engine(workflows=[wf], storage=store, clock=clock) as engine:
        iid = await engine.start(wf, "a")
        await trio.sleep(10)
        assert [t.kind for t in (await engine.get(iid)).timers] == ["retry"]
        await engine.cancel(iid, reason="operator said so")
        cancelled = await engine.get(iid)
        assert cancelled.status is hx.Status.CANCELLED
        assert cancelled.timers == ()
        await trio.testing.wait_all_tasks_blocked()
        assert trio.lowlevel.current_statistics().seconds_to_next_deadline == math.inf
        await trio.sleep(1000)
    async with hx.open_engine(workflows=[wf], storage=store, clock=clock) as engine:
        await trio.sleep(1000)
        final = await engine.get(iid)
    assert len(flaky.calls) == 1  # the step never ran again
    assert final.revision == cancelled.revision
    assert outcomes(final) == [(1, None, "ValueError")]


# --- step timeout -----------------------------------------------------------------------------


async def test_step_timeout_fails_the_attempt_with_step_timeout_and_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(
        2, hx.Retry(max_attempts=3, backoff="constant", initial=2.0), timeout=5, hang=True
    )
    final, t0 = await run_to_end(flaky)
    assert final.status is hx.Status.COMPLETED
    assert outcomes(final) == [
        (1, None, "StepTimeout"),
        (2, None, "StepTimeout"),
        (3, "done", None),
    ]
    # attempt 1 times out at +5, backs off 2 s, attempt 2 times out 5 s later, ...
    assert flaky.calls == [(1, t0), (2, t0 + 7), (3, t0 + 14)]
    epoch = hx.testing.VirtualClock().start
    assert [h.at - epoch for h in final.history] == [t0 + 5, t0 + 12, t0 + 14]
    assert flaky.finished_hanging == 0  # the timed-out attempts were really cancelled


async def test_step_timeout_exhausting_attempts_fails_with_step_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(
        math.inf, hx.Retry(max_attempts=2, backoff="constant", initial=1.0), timeout=5, hang=True
    )
    final, _ = await run_to_end(flaky)
    assert final.status is hx.Status.FAILED
    assert final.error is not None
    assert (final.error.step, final.error.type, final.error.attempts) == ("flaky", "StepTimeout", 2)
    assert "exceeded its timeout of 5.0 s" in final.error.message
    assert outcomes(final) == [(1, None, "StepTimeout"), (2, None, "StepTimeout")]
    assert issubclass(hx.StepTimeout, hx.HephaestusError)


async def test_step_within_its_timeout_is_not_affected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @hx.step(events=("done",), key="quick", timeout=5)
    async def quick(ctx: hx.StepContext) -> hx.StepResult:
        await trio.sleep(4.5)
        return "done"

    wf = one_step(quick)
    clock = hx.testing.VirtualClock()
    async with hx.open_engine(workflows=[wf], clock=clock) as engine:
        t0 = trio.current_time()
        final = await finish(engine, await engine.start(wf, "a"))
    assert outcomes(final) == [(1, "done", None)]
    assert final.history[0].at - clock.start == t0 + 4.5
