"""Power-loss model (ALICE-style, pure Python) of FileStorage's write protocol.

The os calls of a real put (or delete) are recorded; then, for a crash after
every prefix of them, every disk state a power loss may leave is built:

- directory operations not yet covered by a directory fsync (create, rename,
  unlink) each persist or not, in order;
- a file's data not yet covered by its fsync is any of: what was last
  synced, all of it, a cut at any 512-byte sector, zeros, or garbage.

Each state must hold the old or the new snapshot of the instance (or none, when
there was none or it was being deleted); once the put has returned, only the new
one. Removing the file fsync or the directory fsync makes this model find lost
or torn snapshots (tested below), and so does ``durable=False``, which is the
trade-off it documents.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from hephaestus import CorruptSnapshot, FileStorage, Instance
from hephaestus._core._codec import decode_instance, encode_instance
from hephaestus.storage._frame import decode_frame, encode_frame
from hephaestus.storage._names import snapshot_name

from ._fs_samples import make_instance
from ._syscalls import Syscalls, TraceEntry

IID = "orderid::abc-1"
SECTOR = 512
DIR = -1


@dataclass
class Disk:
    """The file system as the model sees it: names -> inodes, inodes -> bytes."""

    names: dict[str, int]
    durable_names: dict[str, int]
    data: dict[int, bytes]
    synced: dict[int, bytes]
    pending: list[tuple[str, ...]] = field(default_factory=list)
    fds: dict[int, int] = field(default_factory=dict)

    def apply(self, entry: TraceEntry, root: str) -> None:
        match entry:
            case ("open", path, fd):
                if path == root:
                    self.fds[fd] = DIR
                    return
                name = os.path.basename(path)
                if name not in self.names:
                    ino = max(self.data, default=0) + 1
                    self.names[name] = ino
                    self.data[ino] = self.synced[ino] = b""
                    self.pending.append(("link", name, str(ino)))
                self.fds[fd] = self.names[name]
            case ("write", fd, chunk):
                self.data[self.fds[fd]] += chunk
            case ("fsync", fd):
                if self.fds[fd] == DIR:
                    self.durable_names = dict(self.names)
                    self.pending.clear()
                else:
                    ino = self.fds[fd]
                    self.synced[ino] = self.data[ino]
            case ("close", fd):
                del self.fds[fd]
            case ("replace", src, dst):
                src, dst = os.path.basename(src), os.path.basename(dst)
                self.names[dst] = self.names.pop(src)
                self.pending.append(("rename", src, dst))
            case ("unlink", path):
                name = os.path.basename(path)
                del self.names[name]
                self.pending.append(("unlink", name))
            case _:
                raise AssertionError(f"unexpected trace entry {entry!r}")

    def crash_states(self, name: str) -> list[bytes | None]:
        """Every content ``name`` may have after a power loss now (None: no such file)."""
        outcomes: list[bytes | None] = []
        for keep in itertools.product((False, True), repeat=len(self.pending)):
            names = dict(self.durable_names)
            for kept, op in zip(keep, self.pending, strict=True):
                if not kept:
                    continue
                if op[0] == "link":
                    names[op[1]] = int(op[2])
                elif op[0] == "rename" and op[1] in names:
                    names[op[2]] = names.pop(op[1])
                elif op[0] == "unlink":
                    names.pop(op[1], None)
            if name not in names:
                outcomes.append(None)
                continue
            outcomes.extend(self._contents(names[name]))
        return outcomes

    def _contents(self, ino: int) -> list[bytes]:
        now, synced = self.data[ino], self.synced[ino]
        if now == synced:
            return [now]
        cuts = [now[:n] for n in range(0, len(now), SECTOR)]
        return [synced, now, *cuts, bytes(len(now)), bytes([0xA5]) * len(now)]


def read(content: bytes | None) -> Instance | str | None:
    if content is None:
        return None
    try:
        return decode_instance(decode_frame(content))
    except CorruptSnapshot as exc:
        return f"corrupt: {exc}"


Operation = Literal["create", "replace", "delete"]


async def violations(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    operation: Operation,
    *,
    durable: bool = True,
    skip_fsync: Literal["file", "dir"] | None = None,
) -> tuple[list[str], int]:
    """Run one operation, model every crash state after every prefix; return what broke."""
    store_path = tmp_path / "store"
    old = make_instance(IID, revision=1, metadata={"pad": "o" * 1500})
    new = make_instance(IID, revision=2, metadata={"pad": "n" * 1500})
    name = snapshot_name(IID)
    sys = Syscalls(monkeypatch, store_path)
    async with FileStorage(store_path, durable=durable) as store:
        if operation != "create":
            await store.put(old)
        sys.skip_fsync = skip_fsync
        sys.arm(None)
        if operation == "delete":
            await store.delete(IID)
        else:
            await store.put(new)
        trace = list(sys.trace)
    before: Instance | None = None if operation == "create" else old
    after: Instance | None = None if operation == "delete" else new
    initial = encode_frame(encode_instance(old))
    problems: list[str] = []
    states = 0
    for k in range(len(trace) + 1):
        disk = Disk(
            names={name: 0} if before else {},
            durable_names={name: 0} if before else {},
            data={0: initial},
            synced={0: initial},
        )
        for entry in trace[:k]:
            disk.apply(entry, str(store_path))
        acknowledged = k == len(trace)
        allowed = [after] if acknowledged else [before, after]
        for content in disk.crash_states(name):
            states += 1
            found = read(content)
            if found not in allowed:
                what = found if isinstance(found, str) or found is None else f"rev {found.revision}"
                problems.append(f"crash after {trace[:k][-1:]} (ack={acknowledged}): {what}")
    return problems, states


@pytest.mark.parametrize("operation", ["create", "replace", "delete"])
async def test_every_power_loss_state_holds_old_or_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: Operation
) -> None:
    problems, states = await violations(tmp_path, monkeypatch, operation)
    assert problems == []
    assert states > 5


@pytest.mark.parametrize("operation", ["create", "replace"])
async def test_without_the_file_fsync_the_model_finds_torn_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: Operation
) -> None:
    problems, _ = await violations(tmp_path, monkeypatch, operation, skip_fsync="file")
    assert any("corrupt" in p for p in problems)


@pytest.mark.parametrize("operation", ["create", "replace", "delete"])
async def test_without_the_directory_fsync_the_model_finds_lost_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: Operation
) -> None:
    problems, _ = await violations(tmp_path, monkeypatch, operation, skip_fsync="dir")
    assert any("ack=True" in p for p in problems)


async def test_durable_false_trades_power_loss_safety_for_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    problems, _ = await violations(tmp_path, monkeypatch, "replace", durable=False)
    assert any("ack=True" in p for p in problems)
    assert any("corrupt" in p for p in problems)
