"""Growth: a bounded inbox, dropped dead inbox events, a bounded window of dedupe keys."""

from __future__ import annotations

import msgspec
import pytest

import hephaestus as hx
from hephaestus._core._codec import encode_instance
from hephaestus._core._engine import (
    DEDUPE_WINDOW,
    MAX_INBOX,
    Deliver,
    Start,
    StepSucceeded,
    StepSuspended,
    apply,
)
from hephaestus._core._notes import Delivery, EventDropped, EventQueued

from .helpers import Driver, mk, workflow


def _running() -> Driver:
    work = mk("work", "ping")
    run = Driver(workflow(work, {(work, "ping"): hx.Done}))
    run(Start())
    assert run.instance.active == ("work",)
    return run


def test_ten_thousand_resumes_into_a_running_step_keep_the_snapshot_bounded() -> None:
    run = _running()
    instance = run.instance
    sizes: dict[int, int] = {}
    rejected = 0
    messages: set[str] = set()
    for n in range(1, 10_001):
        try:
            t = apply(
                run.wf,
                instance,
                Deliver(event="ping", payload={"n": n}, step=None, dedupe_key=f"key-{n:05d}"),
                1000.0,
            )
        except hx.EventRejected as exc:
            rejected += 1
            messages.add(str(exc))
        else:
            assert t.reply == Delivery.QUEUED
            instance = t.instance
        if n % 1000 == 0:
            sizes[n] = len(encode_instance(instance))
    assert rejected == 10_000 - MAX_INBOX
    assert len(messages) == 1
    assert f"inbox already holds {MAX_INBOX} events" in messages.pop()
    assert len(instance.inbox) == MAX_INBOX
    assert len(instance.dedupe_keys) <= DEDUPE_WINDOW
    assert set(sizes.values()) == {sizes[1000]}  # no growth after the inbox is full
    assert sizes[10_000] < 100_000
    # The queued events are still delivered, first in first out.
    t = apply(run.wf, instance, StepSuspended(step="work", attempt=1, timeout=None), 1000.0)
    assert t.instance.results["work"] == {"n": 1}


def test_the_dedupe_window_keeps_the_most_recent_keys() -> None:
    a = mk("a", "go", "more")
    run = Driver(workflow(a, {(a, "go"): hx.Done, (a, "more"): hx.Done}))
    run(Start())
    run(StepSuspended(step="a", attempt=1, timeout=None))
    old = tuple(f"old-{i}" for i in range(5 * DEDUPE_WINDOW))  # an older release kept them all
    run.instance = msgspec.structs.replace(run.instance, dedupe_keys=old)
    assert (
        apply(
            run.wf,
            run.instance,
            Deliver(event="go", payload=None, step=None, dedupe_key=old[-1]),
            1.0,
        ).reply
        == Delivery.IGNORED
    )
    t = run(Deliver(event="go", payload=None, step=None, dedupe_key="new"))
    assert t.reply == Delivery.DELIVERED
    assert len(run.instance.dedupe_keys) == DEDUPE_WINDOW
    assert run.instance.dedupe_keys[-1] == "new"
    assert run.instance.dedupe_keys[0] == old[-(DEDUPE_WINDOW - 1)]
    # Within the window a key is a duplicate, whatever the status.
    assert (
        apply(
            run.wf,
            run.instance,
            Deliver(event="go", payload=None, step=None, dedupe_key="new"),
            1.0,
        ).reply
        == Delivery.IGNORED
    )
    assert (
        apply(
            run.wf,
            run.instance,
            Deliver(event="go", payload=None, step=None, dedupe_key=old[-2]),
            1.0,
        ).reply
        == Delivery.IGNORED
    )


def test_inbox_events_no_live_step_can_take_are_dropped_with_a_note() -> None:
    split, left, right = mk("split", "l", "r"), mk("left", "go"), mk("right", "ok")
    wf = workflow(
        split,
        {(split, "l"): left, (split, "r"): right, (left, "go"): hx.Done, (right, "ok"): hx.Done},
    )
    run = Driver(wf)
    run(Start())
    queued = run(Deliver(event="go", payload={"early": True}, step=None, dedupe_key="k1"))
    assert queued.reply == Delivery.QUEUED
    assert queued.notes == (EventQueued(event="go", step=None),)
    t = run(
        StepSucceeded(step="split", attempt=1, event="r")
    )  # "left" can no longer run: nobody takes "go"
    assert run.instance.inbox == ()
    dropped = [n for n in t.notes if isinstance(n, EventDropped)]
    assert dropped == [EventDropped(event="go", step=None, dedupe_key="k1")]
    assert run.instance.active == ("right",)
    with pytest.raises(hx.EventRejected, match="cannot be accepted"):
        run(Deliver(event="go"))
