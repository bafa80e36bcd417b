"""run_workflow lets the engine finish what it can do at an instant before the next event."""

from __future__ import annotations

import hephaestus as hx
from hephaestus.testing import CANCEL, run_workflow

from .workflows import PROVIDER, order


def test_events_at_the_same_instant_as_step_work_always_see_it_done() -> None:
    # "paid" starts charge, which does not sleep; the cancel at the same instant comes
    # after it, whatever the order in which trio schedules the engine's tasks.
    outcomes = set()
    for _ in range(20):
        PROVIDER.reset()
        final = run_workflow(
            order,
            "o1",
            {"amount": 30},
            events=[(0, "paid", None), (0, CANCEL, None)],
            step_overrides={"request_payment": "approved"},
        )
        outcomes.add((final.status, "charge" in final.completed, PROVIDER.times_charged(final.id)))
    assert outcomes == {(hx.Status.COMPLETED, True, 1)}
