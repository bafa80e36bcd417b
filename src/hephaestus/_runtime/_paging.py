"""One page of a store's instances, ordered by id: the storage's own paging, or a fallback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

from .._core._model import Instance, Status
from ..storage._protocol import Storage


def check_page_args(limit: object, after: object) -> None:
    """Check the ``limit`` and ``after`` arguments of ``list``.

    Raises:
        TypeError: ``limit`` is not an int (or None), or ``after`` is not a str (or None).
        ValueError: ``limit`` is negative.
    """
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int or None, got {limit!r}")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
    if after is not None and not isinstance(after, str):
        raise TypeError(f"after must be an instance id (a str) or None, got {after!r}")


async def query_page(
    storage: Storage,
    *,
    workflow: str | None = None,
    status: Status | Collection[Status] | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> list[Instance]:
    """Return up to ``limit`` instances with ids greater than ``after``, ordered by id.

    Uses ``storage.query_page`` when the adapter has it (an optional method of
    the Storage protocol, with this signature, that reads only the page); else
    it queries everything matching and sorts and slices here, which costs the
    whole store on every page.

    Raises:
        whatever the storage's query raises (``ValueError`` for a bad ``status``).
    """
    own: Any = getattr(storage, "query_page", None)
    if own is not None:
        page: list[Instance] = await own(workflow=workflow, status=status, after=after, limit=limit)
        return page
    found = sorted(await storage.query(workflow=workflow, status=status), key=_id)
    if after is not None:
        found = [i for i in found if i.id > after]
    return found if limit is None else found[:limit]


async def for_each_page(
    storage: Storage,
    handle: Callable[[list[Instance]], Awaitable[None]],
    *,
    workflow: str | None = None,
    status: Status | Collection[Status] | None = None,
    size: int = 500,
) -> None:
    """Call ``await handle(page)`` on the matching instances, ``size`` at a time, by id.

    With the storage's own ``query_page`` each page is read just before it is
    handled, so a large store is never in memory at once (deleting what a page
    holds is fine: the next page starts after its last id). Without it one
    query reads everything, handed over in pages.
    """
    if getattr(storage, "query_page", None) is None:
        found = sorted(await storage.query(workflow=workflow, status=status), key=_id)
        for start in range(0, len(found), size):
            await handle(found[start : start + size])
        return
    after: str | None = None
    while True:
        page = await query_page(storage, workflow=workflow, status=status, after=after, limit=size)
        if page:
            await handle(page)
        if len(page) < size:
            return
        after = page[-1].id


def _id(instance: Instance) -> str:
    return instance.id
