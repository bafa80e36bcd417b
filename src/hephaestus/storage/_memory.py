"""MemoryStorage: snapshots kept as encoded bytes in this process."""

from __future__ import annotations

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

    async def get(self, instance_id: str) -> Instance | None:
        """Return the stored instance, or None."""
        await trio.lowlevel.checkpoint()
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
        self._check_open()
        if expected_revision is not None:
            stored = self._index.get(instance.id)
            current = 0 if stored is None else stored[2]
            if current != expected_revision:
                raise RevisionConflict(
                    f"instance {instance.id!r} is at revision {current}, "
                    f"not the expected {expected_revision}"
                )
        self._blobs[instance.id] = encode_instance(instance)
        self._index[instance.id] = (instance.workflow, instance.status, instance.revision)

    async def delete(self, instance_id: str) -> None:
        """Remove the instance's snapshot; a missing id is not an error."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._blobs.pop(instance_id, None)
        self._index.pop(instance_id, None)

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: Status | Collection[Status] | None = None,
    ) -> list[Instance]:
        """Return the stored instances matching ``workflow`` and ``status``, ordered by id."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        wanted = status_filter(status)
        return [
            decode_instance(self._blobs[iid])
            for iid, (wf, st, _) in sorted(self._index.items())
            if (workflow is None or wf == workflow) and (wanted is None or st in wanted)
        ]
