"""The blocking file operations of FileStorage. Each runs in a worker thread.

The write protocol (PostgreSQL's ``durable_rename`` order)::

    open(".<name>.<16hex>.tmp", O_CREAT|O_EXCL) -> write all -> fsync -> close
    -> rename over "<name>" -> (later, shared) fsync of the directory

With ``sync=False`` the fsync is skipped: the rename still makes a process
crash unable to tear a snapshot, but a power loss may lose recent writes.
Any failure removes the temp file and re-raises; the previous snapshot under
``<name>`` is untouched unless the rename itself has happened. A failed fsync
is never retried: the temp file it was for is thrown away.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from typing import Final

from .._core._codec import decode_instance
from .._core._errors import CorruptSnapshot
from .._core._model import Instance
from ._frame import decode_frame
from ._names import is_snapshot_name, is_temp_name, snapshot_name, temp_name

_log: Final = logging.getLogger("hephaestus.storage")
QUARANTINE_DIR: Final = "quarantine"


def write_snapshot(directory: str, name: str, data: bytes, *, sync: bool) -> None:
    """Atomically replace ``directory/name`` with ``data`` (no directory fsync).

    Raises:
        OSError: from any step; the temp file is removed and, unless the rename
            happened, the previous file is untouched.
    """
    tmp = os.path.join(directory, temp_name(name, secrets.token_hex(8)))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        raise  # not ours to remove (a 64-bit random name: practically impossible)
    except BaseException:
        remove_temp(tmp)  # a failing open may still have created the file
        raise
    try:
        try:
            _write_all(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        remove_temp(tmp)
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def remove_temp(path: str) -> None:
    """Remove the temp file ``path`` if it exists; log (never raise) if that fails."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        _log.warning(
            "could not remove temp file %s (%s); it is removed when the store is next opened",
            path,
            exc,
        )


def fsync_dir(directory: str) -> None:
    """Flush ``directory``'s entries (renames, creations, removals) to disk.

    Raises:
        OSError: when the directory cannot be opened or the fsync fails.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_snapshot(directory: str, name: str) -> bool:
    """Remove ``directory/name``; return False if it did not exist.

    Raises:
        OSError: for any failure other than the file being absent.
    """
    try:
        os.unlink(os.path.join(directory, name))
    except FileNotFoundError:
        return False
    return True


def read_snapshot(directory: str, name: str, instance_id: str | None) -> Instance | None:
    """Return the snapshot stored in ``directory/name``, or None if there is none.

    With ``instance_id``, the snapshot must hold that instance.

    Raises:
        CorruptSnapshot: with the reason, when the file is not a whole, valid
            snapshot of this release's formats (or holds another instance).
        OSError: when the file exists but cannot be read.
    """
    try:
        with open(os.path.join(directory, name), "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None
    instance = decode_instance(decode_frame(data))
    expected = instance_id if instance_id is not None else instance.id
    if instance.id != expected or snapshot_name(instance.id) != name:
        raise CorruptSnapshot(f"file name does not match the instance id {instance.id!r}")
    return instance


def quarantine(directory: str, name: str, reason: str) -> str:
    """Move ``directory/name`` into ``directory/quarantine/`` next to a ``.reason`` file.

    The moved file keeps its name plus a nanosecond timestamp, so nothing
    quarantined earlier is overwritten. Returns the new path.

    Raises:
        OSError: when the move fails (the reason file is best effort).
    """
    qdir = os.path.join(directory, QUARANTINE_DIR)
    os.makedirs(qdir, exist_ok=True)
    target = os.path.join(qdir, f"{name}.{time.time_ns()}")
    os.replace(os.path.join(directory, name), target)
    try:
        with open(target + ".reason", "w", encoding="utf-8") as file:
            file.write(reason + "\n")
    except OSError as exc:
        _log.warning("could not write %s.reason: %s", target, exc)
    return target


class ScanResult:
    """What an open-time scan found: good snapshots, bad ones, removed temp files."""

    __slots__ = ("bad", "instances", "temps_removed")

    def __init__(self) -> None:
        self.instances: list[Instance] = []
        self.bad: list[tuple[str, str]] = []
        """(path, reason) of each snapshot that failed; moved if the scan was writable."""
        self.temps_removed: list[str] = []


def scan(directory: str, *, writable: bool) -> ScanResult:
    """Read every snapshot in ``directory``.

    Files whose names are not snapshot or temp names (the lock file, the
    quarantine directory, anything foreign) are ignored. With ``writable``,
    leftover temp files are removed and bad snapshots are quarantined (their
    reason then says where they went, or why they could not be moved);
    otherwise both are left alone. Bad snapshots are never in ``instances``.

    Raises:
        OSError: when the directory cannot be listed or a snapshot cannot be
            read: an unreadable snapshot is not known to be bad, so it is
            not skipped.
    """
    result = ScanResult()
    with os.scandir(directory) as entries:
        names = sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
    for name in names:
        if is_temp_name(name):
            if writable:
                remove_temp(os.path.join(directory, name))
                result.temps_removed.append(name)
            continue
        if not is_snapshot_name(name):
            continue
        try:
            instance = read_snapshot(directory, name, None)
        except CorruptSnapshot as exc:
            path = os.path.join(directory, name)
            reason = str(exc)
            if writable:
                try:
                    moved = quarantine(directory, name, reason)
                except OSError as exc:  # left in place: tried again at the next open
                    reason = f"{reason}; could not move it to quarantine: {exc}"
                else:
                    reason = f"{reason}; moved to {moved}"
            else:
                reason = f"{reason} (read-only: left in place)"
            result.bad.append((path, reason))
            continue
        if instance is not None:
            result.instances.append(instance)
    return result
