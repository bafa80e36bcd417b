"""``hephaestus cancel`` and ``retry`` on a shared store, beside running engines.

The command line registers as an engine of its own for the length of the
command (``cli-<host>-<pid>``) and then, for the instance asked about:

- nobody live holds it: claims it, applies the change itself (the core's
  ``apply_without_graph``, as on a single-engine store) with a fenced write
  that releases it again, so a running engine claims it if there is work
  (through ``put_limited`` for a workflow with ``max_active``, with the limit
  the store last counted: a retry needs a free slot, as on an engine);
- a live engine holds it: appends the request to the shared inbox (which
  wakes that engine) and waits for the owner's answer, as ``engine.cancel``
  on another engine would;

and finally releases its lease.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Final, Protocol

import trio

from ._core._engine import Cancel, Retry, Transition, apply_without_graph
from ._core._model import Instance
from .storage._protocol import Storage
from .storage._shared import (
    Accepted,
    Answer,
    Consumed,
    InboxRequest,
    Lease,
    LeaseLost,
    Refused,
    Replied,
    SharedStorage,
)

_POLL_S: Final = 0.2


class SharedStore(Storage, SharedStorage, Protocol):
    """A store that is both (what ``change`` needs)."""


_ATTEMPTS: Final = 5


class Outcome:
    """What a shared change did: applied here (``transition``) or answered by ``owner``."""

    def __init__(
        self,
        before: Instance,
        *,
        transition: Transition | None = None,
        owner: Lease | None = None,
        answer: Answer | None = None,
    ) -> None:
        self.before = before
        self.transition = transition
        self.owner = owner
        self.answer = answer


class NotFound(LookupError):
    """No instance of that id."""


class NoAnswer(TimeoutError):
    """The owner did not answer in time; the request stays in its inbox."""

    def __init__(self, owner: Lease, seconds: float) -> None:
        super().__init__(
            f"engine {owner.engine_id!r} holds the instance and has not answered within "
            f"{seconds:g} s; the request stays in its inbox and is applied when that engine "
            "(or the one that takes the instance over) next runs it"
        )


async def change(storage: SharedStore, instance_id: str, request: Cancel | Retry) -> Outcome:
    """Apply ``request`` to ``instance_id`` directly or through its owner (module doc).

    Raises:
        NotFound: no such instance.
        NoAnswer: a live owner did not answer within ``max(10, 3 * lease_ttl)`` s.
        RevisionConflict, LeaseLost: the instance changed under us five times over.
        OSError: the store failed.
    """
    lease = await storage.register(f"cli-{socket.gethostname()}-{os.getpid()}")
    sent: list[str] = []  # our inbox row, if an owner lapsed before answering it
    try:
        for _ in range(_ATTEMPTS):
            one = await storage.claim_instance(lease, instance_id)
            if one.claimed is not None:
                try:
                    return await _apply_here(storage, lease, one.claimed.instance, request, sent)
                except LeaseLost:
                    continue  # claimed away under us (our lease lapsed): look again
            if one.owner is None:
                raise NotFound(instance_id)
            outcome = await _through_inbox(storage, lease, instance_id, request, one.owner, sent)
            if outcome is not None:
                return outcome
        raise LeaseLost(f"instance {instance_id!r} changed hands {_ATTEMPTS} times; try again")
    finally:
        with trio.CancelScope(shield=True):
            await storage.release_engine(lease)


async def _apply_here(
    storage: SharedStore,
    lease: Lease,
    before: Instance,
    request: Cancel | Retry,
    sent: list[str],
) -> Outcome:
    """Apply ``request`` to the claimed ``before`` and release it; our inbox row is answered.

    Raises:
        EventRejected: the core refuses (the caller's lease release unowns it).
        AdmissionFull: a retry of an instance whose workflow's ``max_active``
            (as the store last counted it) is full; nothing is stored.
        LeaseLost, RevisionConflict: the fenced write failed.
    """
    transition = apply_without_graph(before, request, time.time())
    answered = [Consumed(request_id=rid, answer=Accepted()) for rid in sent]
    if transition.changed:
        # A workflow with max_active: its slots are counted as the engines count them.
        limit = await storage.admission_limit(before.workflow)
        if limit is None:
            await storage.put_owned(
                lease,
                transition.instance,
                expected_revision=before.revision,
                release=True,
                consumed=answered,
            )
        else:
            await storage.put_limited(
                lease,
                transition.instance,
                expected_revision=before.revision,
                max_active=limit,
                release=True,
                consumed=answered,
            )
    else:
        if answered:
            await storage.answer_requests(lease, before.id, answered)
        await storage.release_instances(lease, [before.id])
    return Outcome(before, transition=transition)


async def _through_inbox(
    storage: SharedStore,
    lease: Lease,
    instance_id: str,
    request: Cancel | Retry,
    owner: Lease,
    sent: list[str],
) -> Outcome | None:
    """Send ``request`` to the owner's inbox and wait for its answer (None: nobody owns it now)."""
    before = await storage.get(instance_id)
    if before is None:
        raise NotFound(instance_id)
    rid = f"cli:{uuid.uuid4()}"
    patience = max(10.0, 3 * storage.lease_ttl)
    async with storage.listen(lease.engine_id) as replies:
        appended = await storage.append_request(
            InboxRequest(
                instance_id=instance_id,
                request_id=rid,
                sender=lease.engine_id,
                request=request,
                at=time.time(),
            )
        )
        if appended.row.answer is not None and appended.row.consumed:
            if isinstance(appended.row.answer, Refused) and appended.row.seq == 0:
                raise NotFound(instance_id)
            return Outcome(before, owner=owner, answer=appended.row.answer)
        if appended.owner is None:
            sent.append(rid)  # the owner lapsed meanwhile: claim it and answer our row
            return None
        with trio.move_on_after(patience):
            while True:
                row = await storage.get_request(instance_id, rid)
                if row is not None and row.consumed and row.answer is not None:
                    return Outcome(before, owner=appended.owner, answer=row.answer)
                with trio.move_on_after(_POLL_S):
                    async for note in replies:
                        if isinstance(note, Replied) and note.request_id == rid:
                            break
    raise NoAnswer(appended.owner, patience)


def accepted(outcome: Outcome) -> bool:
    """True when the change was applied (here, or by the owner)."""
    return outcome.transition is not None or isinstance(outcome.answer, Accepted)
