"""The Storage protocol every adapter implements, and the shared open/close plumbing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Final, Protocol, Self, runtime_checkable

from .._core._model import Instance, Status

_log: Final = logging.getLogger("hephaestus.storage")

QuarantineHandler = Callable[[str, str], object]
"""Called as ``handler(where, reason)`` for every snapshot a store quarantines."""


@runtime_checkable
class Storage(Protocol):
    """Where instance snapshots live. All methods are async.

    ``put`` with ``expected_revision`` is a compare-and-set: it raises
    :class:`RevisionConflict` unless the stored revision (0 when nothing is
    stored) equals it, and then stores nothing.

    This is all an adapter must provide. Anything more is optional and used
    when present: an ``is_open`` property tells ``open_engine`` whether the
    caller opened the storage already (without it, ``open_engine`` opens it
    on entry and closes it on exit), ``on_quarantine`` receives unreadable
    snapshots. ``get`` and ``query`` should return instances the adapter does
    not keep itself (ours decode stored bytes on every read): the engine hands
    them to its callers, who may mutate them.
    """

    async def aopen(self) -> None: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def get(self, instance_id: str) -> Instance | None: ...

    async def put(self, instance: Instance, *, expected_revision: int | None = None) -> None: ...

    async def delete(self, instance_id: str) -> None: ...

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: Status | Collection[Status] | None = None,
    ) -> list[Instance]: ...


def status_filter(status: Status | Collection[Status] | None) -> frozenset[Status] | None:
    """Normalise a ``status`` argument of ``query``/``list`` to a set, or None for all.

    Raises:
        ValueError: for a value that is not a Status (or its string value).
    """
    if status is None:
        return None
    items = [status] if isinstance(status, Status | str) else list(status)
    try:
        return frozenset(Status(s) for s in items)
    except ValueError:
        names = ", ".join(s.value for s in Status)
        raise ValueError(f"status must be one of {names}; got {status!r}") from None


def report_quarantine(handler: QuarantineHandler | None, where: str, reason: str) -> None:
    """Log a quarantined snapshot and tell ``handler``; never raises because of the handler."""
    _log.warning("quarantined snapshot %s: %s", where, reason)
    if handler is not None:
        try:
            handler(where, reason)
        except Exception:
            _log.exception("on_quarantine handler %r raised; ignored", handler)


class StorageBase:
    """Open/close bookkeeping and the async context manager, shared by the adapters."""

    _is_open: bool = False

    @property
    def is_open(self) -> bool:
        """True between ``aopen()`` and ``aclose()``."""
        return self._is_open

    async def aopen(self) -> None:
        """Open the store. Subclasses extend ``_open``."""
        if not self._is_open:
            await self._open()
            self._is_open = True

    async def aclose(self) -> None:
        """Close the store; closing twice is harmless."""
        if self._is_open:
            self._is_open = False
            await self._close()

    async def _open(self) -> None:
        return None

    async def _close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        await self.aopen()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if not self._is_open:
            raise RuntimeError(
                f"{type(self).__name__} is not open: use 'async with storage:' or pass it "
                "to open_engine, which opens it"
            )
