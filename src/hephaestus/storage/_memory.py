"""MemoryStorage: snapshots kept as encoded bytes in this process."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Collection
from typing import final

import trio

from .._core._codec import decode_instance, encode_instance
from .._core._errors import RevisionConflict
from .._core._model import Instance, Status
from ._protocol import StorageBase, status_filter


@final
class MemoryStorage(StorageBase):
    """Keeps encoded snapshots in a dict, so every read and write goes through the codec.

    The data outlives ``aclose()``: reopening the same object (or passing it to
    another ``open_engine``) sees everything stored before, which is how tests
    simulate a process restart.
    """

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._index: dict[str, tuple[str, Status, int]] = {}
        self._sorted: list[str] | None = None
        """The ids in order, kept until an id is added or removed (for paging)."""

    async def get(self, instance_id: str) -> Instance | None:
        """Return the stored instance, or None."""
        await trio.lowlevel.checkpoint()
        if not self._is_open:
            self._check_open()
        blob = self._blobs.get(instance_id)
        return None if blob is None else decode_instance(blob)

    async def put(self, instance: Instance, *, expected_revision: int | None = None) -> None:
        """Store ``instance``, replacing any earlier snapshot of its id.

        Raises:
            RevisionConflict: when ``expected_revision`` is given and differs
                from the stored revision (0 when nothing is stored).
        """
        await trio.lowlevel.checkpoint()
        if not self._is_open:
            self._check_open()
        instance_id = instance.id
        index = self._index
        stored = index.get(instance_id)
        if expected_revision is not None:
            current = 0 if stored is None else stored[2]
            if current != expected_revision:
                raise RevisionConflict(
                    f"instance {instance_id!r} is at revision {current}, "
                    f"not the expected {expected_revision}"
                )
        if stored is None:
            self._sorted = None
        self._blobs[instance_id] = encode_instance(instance)
        index[instance_id] = (instance.workflow, instance.status, instance.revision)

    async def delete(self, instance_id: str) -> None:
        """Remove the instance's snapshot; a missing id is not an error."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._blobs.pop(instance_id, None)
        if self._index.pop(instance_id, None) is not None:
            self._sorted = None

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: Status | Collection[Status] | None = None,
    ) -> list[Instance]:
        """Return the stored instances matching ``workflow`` and ``status``, ordered by id."""
        return await self.query_page(workflow=workflow, status=status)

    async def query_page(
        self,
        *,
        workflow: str | None = None,
        status: Status | Collection[Status] | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Instance]:
        """Return at most ``limit`` matching instances with ids greater than ``after``, by id.

        The ids are kept sorted between additions and removals, so a page costs
        a binary search plus the ids it walks; only the page is decoded.

        Raises:
            ValueError: for a ``status`` that is not a Status, or a negative ``limit``.
        """
        await trio.lowlevel.checkpoint()
        self._check_open()
        wanted = status_filter(status)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        if self._sorted is None:
            self._sorted = sorted(self._index)
        ids = self._sorted
        start = 0 if after is None else bisect.bisect_right(ids, after)
        page: list[Instance] = []
        for iid in itertools.islice(ids, start, None):
            if limit is not None and len(page) >= limit:
                break
            wf, st, _ = self._index[iid]
            if (workflow is None or wf == workflow) and (wanted is None or st in wanted):
                page.append(decode_instance(self._blobs[iid]))
        return page
