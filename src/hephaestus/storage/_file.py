"""FileStorage: one durable, checksummed snapshot file per instance.

Where things live, under ``path``:

- ``<encoded id>.snap``: one snapshot per instance (``_names``: the id,
  percent-encoded; ``_frame``: magic, version, length, CRC32, msgpack payload);
- ``.<name>.<16hex>.tmp``: a write in progress (removed at open after a crash);
- ``hephaestus.lock``: the exclusive lock of the process that has the store open;
- ``quarantine/``: snapshots that failed their checks, each with a ``.reason``.

Blocking work runs in worker threads (``_diskio``; a durable put is one
thread call: write, fsync, rename, then the directory fsync it shares with
concurrent puts, ``_group_sync``). The event loop keeps the index (id ->
workflow, status, revision) and the per-id locks that make compare-and-set
atomic.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import os
from collections.abc import Callable, Collection, Iterator
from typing import Final, NamedTuple, ParamSpec, TypeVar, final

import trio

from .._core._codec import encode_instance
from .._core._errors import CorruptSnapshot, RevisionConflict
from .._core._model import Instance, Status
from . import _diskio
from ._frame import encode_frame
from ._group_sync import GroupSync
from ._keyed_lock import KeyedLock
from ._lock import StoreLock
from ._names import snapshot_name
from ._protocol import QuarantineHandler, StorageBase, report_quarantine, status_filter

_log: Final = logging.getLogger("hephaestus.storage")
_THREADS: Final = 32
"""Worker threads per store: enough for concurrent fsyncs to share journal commits."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _Entry(NamedTuple):
    workflow: str
    status: Status
    revision: int


@final
class FileStorage(StorageBase):
    """One msgspec-encoded snapshot per instance under ``path``, written atomically.

    Args:
        path: the store's directory; created (with its parents) on open unless
            ``read_only``. Relative paths are resolved once, here.
        durable: fsync each snapshot before renaming it into place and fsync
            the directory after (shared between concurrent writes), so an
            acknowledged ``put`` survives a power loss. With ``durable=False``
            both fsyncs are skipped: writes are still atomic, so a crash of the
            process never tears a snapshot, but a power loss or kernel crash
            may lose the latest writes or leave snapshots that are then
            quarantined on the next open.
        read_only: take no lock and refuse writes (``RuntimeError``); for
            looking at a store another process has open. ``get`` reads the file
            afresh, ``query`` rescans the directory, and bad snapshots are
            reported but left in place.
        on_quarantine: called as ``on_quarantine(path, reason)`` for every bad
            snapshot found (``path`` is where the file was; ``reason`` says
            what is wrong and where it was moved). Also settable as an
            attribute. If it raises, the error is logged and ignored.

    Opening takes the store's exclusive lock (``StorageLocked`` if another
    process or FileStorage holds it), removes leftover temp files, and reads
    every snapshot once to build the index; bad ones are moved to
    ``quarantine/`` and logged to the ``hephaestus.storage`` logger. The store
    keeps serving every other instance. A snapshot found bad later by ``get``
    or ``query`` is quarantined the same way and treated as absent.

    Disk errors surface as ``OSError`` from ``put`` and ``delete``; the
    previous snapshot then stays in place (or, if only the directory fsync
    failed, the new one, whose durability is unknown). After a failed
    directory fsync the store refuses further writes until it is reopened.

    Raises:
        ValueError: for an empty ``path`` (here, in the constructor).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durable: bool = True,
        read_only: bool = False,
        on_quarantine: QuarantineHandler | None = None,
    ) -> None:
        if not os.fspath(path):
            raise ValueError("FileStorage needs the path of its directory, not ''")
        self.path = os.path.abspath(os.fspath(path))
        self.durable = durable
        self.read_only = read_only
        self.on_quarantine = on_quarantine
        self._index: dict[str, _Entry] = {}
        self._stale: set[str] = set()
        self._sorted: list[str] | None = None
        """The indexed ids in order, kept until an id is added or removed (for paging)."""
        self._scanned: dict[str, Instance] | None = None
        """The snapshots decoded by the open-time scan, until the first query.

        Recovery queries every active instance right after opening: this
        answers it without reading every file a second time. A put or delete
        drops its id from here."""
        self._locks = KeyedLock()
        self._store_lock: StoreLock | None = None
        self._limiter: trio.CapacityLimiter | None = None
        self._dir_sync: GroupSync | None = None
        self._operations = 0
        self._idle: trio.Event | None = None

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"FileStorage({self.path!r}, durable={self.durable}{mode})"

    # -- open / close -----------------------------------------------------------------

    async def _open(self) -> None:
        """Lock, clean up and index the store (read-only: check that it exists).

        Raises:
            StorageLocked: another process or FileStorage holds the store.
            FileNotFoundError: ``read_only`` and there is no directory at ``path``.
            OSError: the directory cannot be created, locked or read.
        """
        self._limiter = trio.CapacityLimiter(_THREADS)
        self._index.clear()
        self._stale.clear()
        self._sorted = None
        self._scanned = None
        self._operations = 0
        self._idle = trio.Event()
        self._idle.set()
        if self.read_only:
            if not await self._run(os.path.isdir, self.path):
                raise FileNotFoundError(f"no store at {self.path!r}: the directory does not exist")
            return
        self._store_lock = await self._run(self._lock_and_prepare)
        try:
            found = await self._run(_diskio.scan, self.path, writable=True)
        except BaseException:
            await self._release_lock()
            raise
        for instance in found.instances:
            self._index[instance.id] = _Entry(instance.workflow, instance.status, instance.revision)
        self._scanned = {instance.id: instance for instance in found.instances}
        for name in found.temps_removed:
            _log.info("removed leftover temp file %s", os.path.join(self.path, name))
        for path, reason in found.bad:
            report_quarantine(self.on_quarantine, path, reason)
        self._dir_sync = GroupSync(self._flush_dir)

    def _lock_and_prepare(self) -> StoreLock:
        """In a worker thread: create the directory (durably) and take the lock.

        Raises:
            StorageLocked: the lock is held elsewhere.
            OSError: the directory cannot be created or the lock file opened.
        """
        created = not os.path.isdir(self.path)
        os.makedirs(self.path, exist_ok=True)
        if created and self.durable:
            _diskio.fsync_dir(os.path.dirname(self.path))
        return StoreLock.acquire(self.path)

    def _flush_dir(self) -> None:
        """In a worker thread: fsync the store's directory (the group-commit flush)."""
        _diskio.fsync_dir(self.path)

    async def _close(self) -> None:
        """Wait for writes in progress, then release the lock (shielded from cancellation)."""
        with trio.CancelScope(shield=True):
            if self._idle is not None:
                await self._idle.wait()
            await self._release_lock()
        self._dir_sync = None
        self._scanned = None

    async def _release_lock(self) -> None:
        """Release the store lock if this object holds it."""
        lock, self._store_lock = self._store_lock, None
        if lock is not None:
            await self._run(lock.release)

    # -- the Storage protocol -----------------------------------------------------------

    async def get(self, instance_id: str) -> Instance | None:
        """Return the stored instance, or None.

        A snapshot that turns out to be corrupt is quarantined (read-only: only
        reported) and None is returned.

        Raises:
            OSError: when the snapshot exists but cannot be read.
        """
        await trio.lowlevel.checkpoint()
        self._check_open()
        if self.read_only:
            return await self._read_reporting(instance_id)
        with self._operation():
            if instance_id not in self._index and instance_id not in self._stale:
                return None
            async with self._locks.hold(instance_id):
                return await self._load(instance_id)

    async def put(self, instance: Instance, *, expected_revision: int | None = None) -> None:
        """Store ``instance``, replacing any earlier snapshot of its id.

        Returns once the snapshot is in place and, when ``durable``, on disk
        (its directory fsync is shared with concurrent puts). The disk work
        cannot be interrupted: a cancellation takes effect once it is done.

        Raises:
            RevisionConflict: when ``expected_revision`` is given and differs
                from the stored revision (0 when nothing is stored).
            OSError: when writing fails (ENOSPC, EIO, EFBIG, permissions...);
                the previous snapshot stays, no temp file is left behind.
            RuntimeError: when the store is read-only or not open.
            ValueError: for an empty instance id.
        """
        await trio.lowlevel.checkpoint()
        self._check_writable()
        if not instance.id:
            raise ValueError("an instance id must not be empty")
        data = encode_frame(encode_instance(instance))
        name = snapshot_name(instance.id)
        with self._operation():
            async with self._locks.hold(instance.id):
                current = await self._revision(instance.id)
                if expected_revision is not None and current != expected_revision:
                    raise RevisionConflict(
                        f"instance {instance.id!r} is at revision {current}, "
                        f"not the expected {expected_revision}"
                    )
                self._check_writable()
                if self._scanned is not None:
                    self._scanned.pop(instance.id, None)
                try:
                    await self._run(self._write, name, data, self._durability())
                except BaseException:
                    # The rename may or may not have happened: re-read the file next time.
                    self._stale.add(instance.id)
                    raise
                if instance.id not in self._index:
                    self._sorted = None
                self._index[instance.id] = _Entry(
                    instance.workflow, instance.status, instance.revision
                )

    async def delete(self, instance_id: str) -> None:
        """Remove the instance's snapshot; a missing id is not an error.

        Raises:
            OSError: when the file cannot be removed.
            RuntimeError: when the store is read-only or not open.
        """
        await trio.lowlevel.checkpoint()
        self._check_writable()
        with self._operation():
            async with self._locks.hold(instance_id):
                if self._scanned is not None:
                    self._scanned.pop(instance_id, None)
                try:
                    await self._run(self._remove, snapshot_name(instance_id), self._durability())
                except BaseException:
                    self._stale.add(instance_id)
                    raise
                if self._index.pop(instance_id, None) is not None:
                    self._sorted = None
                self._stale.discard(instance_id)

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: Status | Collection[Status] | None = None,
    ) -> list[Instance]:
        """Return the stored instances matching ``workflow`` and ``status``, ordered by id.

        Only the matching snapshots are read (the index answers the filter);
        the first query after opening reuses what the open-time scan decoded
        (recovery reads each file once). Read-only stores rescan the directory.

        Raises:
            ValueError: for a ``status`` that is not a Status.
            OSError: when a snapshot cannot be read.
        """
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

        The index picks the page's ids (a binary search in the sorted ids), so
        only the page's snapshots are read. Read-only stores rescan the
        directory and cut the page from the result.

        Raises:
            ValueError: for a ``status`` that is not a Status, or a negative ``limit``.
            OSError: when a snapshot cannot be read.
        """
        await trio.lowlevel.checkpoint()
        self._check_open()
        wanted = status_filter(status)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")

        def matches(wf: str, st: Status) -> bool:
            return (workflow is None or wf == workflow) and (wanted is None or st in wanted)

        if self.read_only:
            found = await self._run(_diskio.scan, self.path, writable=False)
            for path, reason in found.bad:
                report_quarantine(self.on_quarantine, path, reason)
            return sorted(
                (
                    i
                    for i in found.instances
                    if matches(i.workflow, i.status) and (after is None or i.id > after)
                ),
                key=lambda i: i.id,
            )[:limit]
        scanned, self._scanned = self._scanned, None
        with self._operation():
            for iid in sorted(self._stale):
                async with self._locks.hold(iid):
                    if iid in self._stale:
                        await self._load(iid)
            result: list[Instance] = []
            position = None if after is None else after
            while limit is None or len(result) < limit:
                ids = self._page_ids(
                    matches, position, None if limit is None else limit - len(result)
                )
                if not ids:
                    break
                position = ids[-1]
                cached = [None if scanned is None else scanned.get(iid) for iid in ids]
                missing = [iid for iid, c in zip(ids, cached, strict=True) if c is None]
                loaded = iter(await self._run(self._read_many, missing) if missing else ())
                for iid, instance in zip(ids, cached, strict=True):
                    if instance is None:
                        instance = next(loaded)
                    if instance is None:  # vanished, corrupt or unreadable: look closer, locked
                        async with self._locks.hold(iid):
                            instance = await self._load(iid)
                    if instance is not None and matches(instance.workflow, instance.status):
                        result.append(instance)
                if limit is None:
                    break
            return result

    def _page_ids(
        self, matches: Callable[[str, Status], bool], after: str | None, limit: int | None
    ) -> list[str]:
        """The ids of up to ``limit`` indexed instances after ``after`` that ``matches``."""
        if self._sorted is None:
            self._sorted = sorted(self._index)
        ids = self._sorted
        start = 0 if after is None else bisect.bisect_right(ids, after)
        picked: list[str] = []
        for iid in itertools.islice(ids, start, None):
            entry = self._index.get(iid)
            if entry is not None and matches(entry.workflow, entry.status):
                picked.append(iid)
                if limit is not None and len(picked) >= limit:
                    break
        return picked

    # -- helpers ------------------------------------------------------------------------

    def _read_many(self, ids: list[str]) -> list[Instance | None]:
        """In a worker thread: read these snapshots; None for any that is not plainly fine."""
        out: list[Instance | None] = []
        for iid in ids:
            try:
                out.append(_diskio.read_snapshot(self.path, snapshot_name(iid), iid))
            except (CorruptSnapshot, OSError):
                out.append(None)
        return out

    async def _load(self, instance_id: str) -> Instance | None:
        """Read one snapshot and bring the index in line (hold the id's lock).

        Raises:
            OSError: when the file exists but cannot be read (the id stays stale).
        """
        name = snapshot_name(instance_id)
        expected = instance_id in self._index and instance_id not in self._stale
        try:
            instance = await self._run(_diskio.read_snapshot, self.path, name, instance_id)
            if instance is None and expected:
                _log.warning(
                    "the snapshot of %r vanished from %s: something other than this store "
                    "removed it",
                    instance_id,
                    self.path,
                )
        except CorruptSnapshot as exc:
            path = os.path.join(self.path, name)
            reason = str(exc)
            try:
                moved = await self._run(_diskio.quarantine, self.path, name, reason)
            except OSError as move_error:
                reason = f"{reason}; could not move it to quarantine: {move_error}"
            else:
                reason = f"{reason}; moved to {moved}"
            instance = None
            report_quarantine(self.on_quarantine, path, reason)
        self._stale.discard(instance_id)
        if self._scanned is not None:
            self._scanned.pop(instance_id, None)
        if instance is None:
            if self._index.pop(instance_id, None) is not None:
                self._sorted = None
        else:
            if instance_id not in self._index:
                self._sorted = None
            self._index[instance_id] = _Entry(instance.workflow, instance.status, instance.revision)
        return instance

    async def _revision(self, instance_id: str) -> int:
        """Return the stored revision (0: none), re-reading a stale entry (hold the id's lock).

        Raises:
            OSError: when a stale entry's file cannot be read.
        """
        if instance_id in self._stale:
            await self._load(instance_id)
        entry = self._index.get(instance_id)
        return 0 if entry is None else entry.revision

    async def _read_reporting(self, instance_id: str) -> Instance | None:
        """Read-only ``get``: read the file; report (do not move) a bad one and return None."""
        name = snapshot_name(instance_id)
        try:
            return await self._run(_diskio.read_snapshot, self.path, name, instance_id)
        except CorruptSnapshot as exc:
            report_quarantine(
                self.on_quarantine,
                os.path.join(self.path, name),
                f"{exc} (read-only: left in place)",
            )
            return None

    def _write(self, name: str, data: bytes, dir_sync: GroupSync | None) -> None:
        """In a worker thread: replace snapshot ``name``, then wait for ``dir_sync``."""
        _diskio.write_snapshot(self.path, name, data, sync=dir_sync is not None)
        if dir_sync is not None:
            dir_sync.sync()

    def _remove(self, name: str, dir_sync: GroupSync | None) -> None:
        """In a worker thread: remove snapshot ``name``, then wait for ``dir_sync``."""
        if _diskio.remove_snapshot(self.path, name) and dir_sync is not None:
            dir_sync.sync()

    def _durability(self) -> GroupSync | None:
        """The group commit a write must wait for, or None when not ``durable``."""
        return self._dir_sync if self.durable else None

    def _check_writable(self) -> None:
        """Raise unless writes are allowed now.

        Raises:
            RuntimeError: the store is not open, or is read-only.
            OSError: an earlier directory fsync failed (reopen the store).
        """
        self._check_open()
        if self.read_only:
            raise RuntimeError(f"{self!r} is read-only: it refuses writes")
        failure = None if self._dir_sync is None else self._dir_sync.failure
        if failure is not None:
            raise OSError(
                failure.errno,
                f"{self!r} accepts no more writes: a directory fsync failed ({failure}), "
                "so recent writes are not known to be durable. Reopen the store",
            ) from failure

    @contextlib.contextmanager
    def _operation(self) -> Iterator[None]:
        """Count an operation in progress, so that ``aclose`` can wait for it."""
        assert self._idle is not None
        if self._operations == 0:
            self._idle = trio.Event()
        self._operations += 1
        try:
            yield
        finally:
            self._operations -= 1
            if self._operations == 0:
                self._idle.set()

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run blocking ``fn`` in one of this store's worker threads (not cancellable)."""
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)
