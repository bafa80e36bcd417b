"""A storage adapter written from API.md alone works with open_engine.

API.md: get/put/delete/query, aopen/aclose and ``async with`` are all an adapter
must provide; ``is_open`` is optional. ``open_engine`` opens a storage that is
not open yet and closes it on exit; one the caller opened stays the caller's.
"""

from __future__ import annotations

from collections.abc import Collection
from types import TracebackType
from typing import Any

import msgspec
import trio

import hephaestus as hx

from .helpers import clock, event_workflow, fan_expected, fan_workflow


class DictStorage:
    """Only what API.md asks of an adapter: no base class, no is_open."""

    def __init__(self) -> None:
        self.rows: dict[str, bytes] = {}
        self.open = False
        self.opened = 0
        self.closed = 0

    async def aopen(self) -> None:
        self.open = True
        self.opened += 1

    async def aclose(self) -> None:
        self.open = False
        self.closed += 1

    async def __aenter__(self) -> DictStorage:
        await self.aopen()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _check(self) -> None:
        if not self.open:
            raise RuntimeError("DictStorage is not open")

    async def get(self, instance_id: str) -> hx.Instance | None:
        await trio.lowlevel.checkpoint()
        self._check()
        row = self.rows.get(instance_id)
        return None if row is None else msgspec.msgpack.decode(row, type=hx.Instance)

    async def put(self, instance: hx.Instance, *, expected_revision: int | None = None) -> None:
        await trio.lowlevel.checkpoint()
        self._check()
        if expected_revision is not None:
            row = self.rows.get(instance.id)
            current = 0 if row is None else msgspec.msgpack.decode(row, type=hx.Instance).revision
            if current != expected_revision:
                raise hx.RevisionConflict(f"{instance.id} is at {current}")
        self.rows[instance.id] = msgspec.msgpack.encode(instance)

    async def delete(self, instance_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self._check()
        self.rows.pop(instance_id, None)

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: hx.Status | Collection[hx.Status] | None = None,
    ) -> list[hx.Instance]:
        await trio.lowlevel.checkpoint()
        self._check()
        wanted = None if status is None else {status} if isinstance(status, str) else set(status)
        found = [msgspec.msgpack.decode(self.rows[k], type=hx.Instance) for k in sorted(self.rows)]
        return [
            i
            for i in found
            if workflow in (None, i.workflow) and (wanted is None or i.status in wanted)
        ]


class OpenableDictStorage(DictStorage):
    """The same adapter with the optional is_open property."""

    @property
    def is_open(self) -> bool:
        return self.open


async def test_adapter_without_is_open_is_opened_run_and_closed_by_open_engine(
    autojump_clock: Any,
) -> None:
    wf = fan_workflow()
    held = event_workflow()
    storage = DictStorage()
    async with hx.open_engine(workflows=[wf, held], storage=storage, clock=clock()) as engine:
        iid = await engine.start(wf, "a", {"n": 4})
        assert (await engine.wait(iid)).results == fan_expected(4)
        waiting = await engine.start(held, "b")
        await trio.sleep(1)  # prepare runs, approve suspends
        assert [i.id for i in await engine.list(status=hx.Status.WAITING)] == [waiting]
    assert (storage.opened, storage.closed, storage.open) == (1, 1, False)
    # A second engine on the same adapter recovers what the first left waiting.
    async with hx.open_engine(workflows=[wf, held], storage=storage, clock=clock()) as engine:
        await engine.resume(waiting, "go", {"by": "ops"})
        final = await engine.wait(waiting)
    assert final.status is hx.Status.COMPLETED
    assert final.results["finish"] == {"approved": "ops"}
    assert (storage.opened, storage.closed) == (2, 2)


async def test_adapter_the_caller_opened_stays_open_and_the_callers(autojump_clock: Any) -> None:
    wf = fan_workflow()
    async with OpenableDictStorage() as storage:
        async with hx.open_engine(workflows=[wf], storage=storage, clock=clock()) as engine:
            iid = await engine.start(wf, "a", {"n": 1})
            await engine.wait(iid)
        assert (storage.opened, storage.closed, storage.open) == (1, 0, True)
        stored = await storage.get(iid)
        assert stored is not None
        assert stored.status is hx.Status.COMPLETED
    assert storage.closed == 1
