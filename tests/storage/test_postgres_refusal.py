"""How PostgresStorage explains a fenced write it refused, read after the refusal.

The fence is one statement (owner, epoch and revision); the reason is read
after it, when the row may have moved on. A row back under the writer's own
lease at the expected revision was refused for its owner (revisions only grow,
and claims keep them): that is ``LeaseLost``, never a RevisionConflict naming
the expected revision as the stored one (a resume got that answer, final under
its dedupe key, in a kill run).
"""

from __future__ import annotations

import psycopg
import pytest

from hephaestus import PostgresStorage, RevisionConflict, Status
from hephaestus.storage import LeaseLost
from hephaestus.storage._postgres_shared import PutOwned
from hephaestus.storage._rows import instance_row

from ._fs_samples import make_instance


async def test_a_refusal_explained_by_a_row_claimed_back_since_is_a_lost_lease(
    pg_dsn: str,
) -> None:
    async with PostgresStorage(pg_dsn) as store:
        lease = await store.register("a")
        stored = make_instance("w::x", status=Status.WAITING, revision=1)
        await store.put_owned(lease, stored, expected_revision=0)
    later = make_instance("w::x", status=Status.WAITING, revision=2)
    # The write that was refused, explained now that the row is the writer's again.
    op = PutOwned(
        lease,
        instance_row(later, store="PostgreSQL"),
        expected=1,
        release=False,
        consumed=(),
        terminal=False,
    )
    with psycopg.connect(pg_dsn) as conn:
        refusal = op._refusal(conn)
    assert isinstance(refusal, LeaseLost)
    assert "claimed back since" in str(refusal)


async def test_a_refusal_by_revision_is_still_a_revision_conflict(pg_dsn: str) -> None:
    async with PostgresStorage(pg_dsn) as store:
        lease = await store.register("a")
        stored = make_instance("w::x", status=Status.WAITING, revision=1)
        await store.put_owned(lease, stored, expected_revision=0)
        with pytest.raises(RevisionConflict, match="at revision 1, not the expected 5"):
            await store.put_owned(
                lease, make_instance("w::x", status=Status.WAITING, revision=6), expected_revision=5
            )
