"""The admission part of the SharedStorage contract (``put_limited``, ``admit_pending``,
``claim(runs=...)``), on every shared store of test_shared_contract.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from hephaestus import Instance, RevisionConflict, Status
from hephaestus.storage import LeaseLost
from hephaestus.storage._shared import AdmissionFull, Lease, Runnable, Unrunnable

from ._fs_samples import make_instance
from .test_shared_contract import SHARED_KINDS, SharedCase, claimed_ids, drain, open_case

N = 2


@pytest.fixture(params=SHARED_KINDS)
async def case(request: pytest.FixtureRequest) -> AsyncIterator[SharedCase]:
    async with open_case(request.param, request) as opened:
        yield opened


def job(
    iid: str, status: Status, revision: int = 1, created: float = 0.0, **fields: Any
) -> Instance:
    return make_instance(
        f"job::{iid}",
        workflow="job",
        status=status,
        revision=revision,
        created_at=created,
        **fields,
    )


async def put(
    case: SharedCase, lease: Lease, instance: Instance, expected: int, **options: Any
) -> None:
    await case.store.put_limited(
        lease, instance, expected_revision=expected, max_active=N, **options
    )


async def queue(case: SharedCase, lease: Lease, *names: str) -> None:
    """Store each as a new PENDING instance, released, created in the order given."""
    for n, name in enumerate(names):
        await put(case, lease, job(name, Status.PENDING, created=100.0 + n), 0, release=True)


async def status(case: SharedCase, name: str) -> tuple[Status, int]:
    got = await case.store.get(f"job::{name}")
    assert got is not None
    return got.status, got.revision


async def test_at_most_max_active_are_admitted_and_a_full_write_stores_nothing(
    case: SharedCase,
) -> None:
    lease = await case.store.register("a")
    await put(case, lease, job("a", Status.RUNNING), 0)
    await put(case, lease, job("b", Status.WAITING), 0)
    with pytest.raises(AdmissionFull, match="max_active=2"):
        await put(case, lease, job("c", Status.RUNNING), 0)
    assert await case.store.get("job::c") is None
    # writes of admitted instances keep their slot, whatever status they move between
    await put(case, lease, job("a", Status.WAITING, revision=2), 1)
    await put(case, lease, job("a", Status.RUNNING, revision=3), 2)
    assert await status(case, "a") == (Status.RUNNING, 3)


async def test_a_finishing_write_hands_its_slot_to_the_first_queued_in_the_same_step(
    case: SharedCase,
) -> None:
    lease = await case.store.register("a")
    other = await case.store.register("b")
    await put(case, lease, job("a", Status.RUNNING), 0)
    await put(case, lease, job("b", Status.RUNNING), 0)
    await queue(case, lease, "q2", "q1", "q3")  # created in this order
    assert claimed_ids(await case.store.claim(other, limit=10)) == []  # queued: no work
    async with case.store.listen("b") as channel:
        await drain(case, channel)
        await put(case, lease, job("a", Status.COMPLETED, revision=2), 1, release=True)
        assert Runnable() in await drain(case, channel)
    # the slot went to q2, first created; whoever claims it starts it
    assert claimed_ids(await case.store.claim(other, limit=10)) == ["job::q2"]
    # q1 is next; it cannot take a slot out of turn
    await put(case, other, job("q2", Status.CANCELLED, revision=2), 1, release=True)
    assert claimed_ids(await case.store.claim(other, limit=10)) == ["job::q1"]
    with pytest.raises(AdmissionFull):
        await put(case, lease, job("new", Status.RUNNING), 0)


async def test_a_queued_instance_takes_a_slot_only_in_its_turn(case: SharedCase) -> None:
    lease = await case.store.register("a")
    await put(case, lease, job("a", Status.RUNNING), 0)
    await put(case, lease, job("b", Status.RUNNING), 0)
    await queue(case, lease, "q1", "q2")
    one = await case.store.claim_instance(lease, "job::q2")
    assert one.claimed is not None
    with pytest.raises(AdmissionFull):  # full, and q1 queues before it
        await put(case, lease, job("q2", Status.RUNNING, revision=2), 1)
    assert await status(case, "q2") == (Status.PENDING, 1)
    # a PENDING rewrite (an early event, a timer) keeps its place and stores no slot
    await put(case, lease, job("q2", Status.PENDING, revision=2, created=101.0), 1, release=True)
    await put(case, lease, job("a", Status.FAILED, revision=2), 1, release=True)
    assert claimed_ids(await case.store.claim(lease, limit=10)) == ["job::q1"]


async def test_retry_of_a_terminal_instance_needs_a_free_slot(case: SharedCase) -> None:
    lease = await case.store.register("a")
    await put(case, lease, job("f", Status.RUNNING), 0)
    await put(case, lease, job("f", Status.FAILED, revision=2), 1)
    await put(case, lease, job("a", Status.RUNNING), 0)
    await put(case, lease, job("b", Status.RUNNING), 0)
    with pytest.raises(AdmissionFull):
        await put(case, lease, job("f", Status.RUNNING, revision=3), 2)
    assert await status(case, "f") == (Status.FAILED, 2)
    await put(case, lease, job("b", Status.COMPLETED, revision=2), 1)
    await put(case, lease, job("f", Status.RUNNING, revision=3), 2)  # free now
    assert await status(case, "f") == (Status.RUNNING, 3)


async def test_put_limited_is_fenced_like_put_owned(case: SharedCase) -> None:
    lease = await case.store.register("a")
    other = await case.store.register("b")
    await put(case, lease, job("a", Status.RUNNING), 0)
    with pytest.raises(LeaseLost):
        await put(case, other, job("a", Status.COMPLETED, revision=2), 1)
    with pytest.raises(RevisionConflict):
        await put(case, lease, job("a", Status.COMPLETED, revision=3), 2)
    with pytest.raises(RevisionConflict):
        await put(case, lease, job("a", Status.RUNNING), 0)
    with pytest.raises(LeaseLost):
        await put(case, lease, job("gone", Status.RUNNING, revision=2), 1)
    assert await status(case, "a") == (Status.RUNNING, 1)


async def test_admit_pending_hands_on_slots_a_plain_write_freed(case: SharedCase) -> None:
    lease = await case.store.register("a")
    await put(case, lease, job("a", Status.RUNNING), 0)
    await put(case, lease, job("b", Status.RUNNING), 0)
    await queue(case, lease, "q1", "q2", "q3")
    await case.store.put(job("a", Status.CANCELLED, revision=2), expected_revision=1)
    await case.store.put(job("b", Status.CANCELLED, revision=2), expected_revision=1)
    assert claimed_ids(await case.store.claim(lease, limit=10)) == []
    assert await case.store.admit_pending("job", max_active=N) == 2
    assert await case.store.admit_pending("job", max_active=N) == 0
    assert claimed_ids(await case.store.claim(lease, limit=10)) == ["job::q1", "job::q2"]
    assert await case.store.admit_pending("job", max_active=N + 1) == 1  # a limit raised


async def test_an_instance_stored_running_before_its_workflow_had_a_limit_keeps_going(
    case: SharedCase,
) -> None:
    lease = await case.store.register("a")
    for name in ("a", "b", "c"):
        await case.store.put_owned(lease, job(name, Status.RUNNING), expected_revision=0)
    await put(case, lease, job("c", Status.WAITING, revision=2), 1)  # over the limit: kept
    await put(case, lease, job("c", Status.COMPLETED, revision=3), 2)
    assert await status(case, "c") == (Status.COMPLETED, 3)


async def test_claim_with_runs_leaves_and_reports_what_the_engine_cannot_run(
    case: SharedCase,
) -> None:
    lease = await case.store.register("a")
    await case.store.put(make_instance("k::mine", status=Status.RUNNING))
    await case.store.put(make_instance("k::ghost", workflow="ghost", status=Status.RUNNING))
    await case.store.put(
        Instance(id="k::v2", workflow="order", version=2, status=Status.RUNNING, revision=1)
    )
    batch = await case.store.claim(lease, limit=10, runs=[("order", 1)])
    assert claimed_ids(batch) == ["k::mine"]
    assert batch.unrunnable == (
        Unrunnable(instance_id="k::ghost", workflow="ghost", version=1),
        Unrunnable(instance_id="k::v2", workflow="order", version=2),
    )
    assert case.store.owner_of is not None
    assert await case.store.owner_of("k::ghost") is None
    again = await case.store.claim(lease, limit=10, runs=[("order", 1), ("ghost", 1)])
    assert claimed_ids(again) == ["k::ghost"]
    assert again.unrunnable == (Unrunnable(instance_id="k::v2", workflow="order", version=2),)


async def test_admission_limit_is_the_limit_of_the_last_change_of_slots(case: SharedCase) -> None:
    lease = await case.store.register("a")
    assert await case.store.admission_limit("job") is None  # never written limited
    await put(case, lease, job("a", Status.RUNNING), 0)
    assert await case.store.admission_limit("job") == N
    with pytest.raises(AdmissionFull):  # a refused write records nothing
        await case.store.put_limited(
            lease, job("b", Status.RUNNING), expected_revision=0, max_active=1
        )
    assert await case.store.admission_limit("job") == N
    await case.store.admit_pending("job", max_active=N + 3)  # a limit raised
    assert await case.store.admission_limit("job") == N + 3
    assert await case.store.admission_limit("other") is None
