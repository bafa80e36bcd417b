"""A limited instance claimed back by its own engine while ``start`` still waits for its write.

On shared storage a new instance of a ``max_active`` workflow is stored
PENDING and released; the store gives it a slot in that write when one is
free. Its ``Runnable`` notification wakes the claimers, and on PostgreSQL the
write's reply comes back from a thread: this engine's claimer may claim the
instance before ``start`` has taken in that reply. The claim makes this engine
the owner in the store, so ``start`` must not then forget the instance as
"queued, owned by nobody": nobody else would ever claim it (found by
tests/storage/test_postgres_admission.py hanging about one run in 30).
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import hephaestus as hx
from hephaestus.storage._shared import ClaimBatch, Lease
from hephaestus.storage._shared_memory import MemorySharedStorage
from hephaestus.testing import VirtualClock

from .shared_cluster import TTL, spawn


class SlowReplyStore(MemorySharedStorage):  # type: ignore[misc]  # final: a test-only subclass
    """A store whose PENDING writes reply only after a claim has taken the written row."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.claimed: dict[str, trio.Event] = {}
        self.slow: set[str] = set()
        """Ids whose PENDING write is to reply only once a claim returned them."""

    async def put_limited(self, lease: Lease, instance: hx.Instance, **options: Any) -> None:
        await super().put_limited(lease, instance, **options)
        if instance.id in self.slow and instance.status is hx.Status.PENDING:
            self.slow.discard(instance.id)
            await self.claimed.setdefault(instance.id, trio.Event()).wait()

    async def claim(self, lease: Lease, **options: Any) -> ClaimBatch:
        batch: ClaimBatch = await super().claim(lease, **options)
        for claimed in batch.claimed:
            self.claimed.setdefault(claimed.instance.id, trio.Event()).set()
        return batch


@hx.step(events=("done",))
async def work(ctx: hx.StepContext) -> hx.StepResult:
    await trio.sleep(1)
    return "done"


limited = hx.Workflow(
    "limited",
    start=work,
    transitions={(work, "done"): hx.Done},
    unique=hx.Unique("limited"),
    max_active=2,
)


async def test_an_instance_claimed_back_during_its_pending_write_still_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = VirtualClock()
    store = SlowReplyStore(clock=clock, lease_ttl=TTL)
    async with trio.open_nursery() as nursery:
        node = await spawn(nursery, store, [limited], clock)
        store.slow.add("limited::a")
        instance_id = await node.engine.start(limited, "a")
        owner = store.owner(instance_id)
        assert owner is not None
        assert owner.engine_id == node.engine_id  # the claim took it during the write
        with trio.fail_after(10 * TTL):  # far longer than it takes; forever with the bug
            done = await node.engine.wait(instance_id)
        nursery.cancel_scope.cancel()
    assert done.status is hx.Status.COMPLETED
    assert store.slots("limited") == []
