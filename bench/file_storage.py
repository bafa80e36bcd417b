"""FileStorage snapshot writes/s against the raw write protocol of the same disk.

``measure(tmp_dir, n, concurrency)`` times, on fresh directories under
``tmp_dir``:

- ``FileStorage.put`` with ``durable=True`` and ``durable=False``, from
  ``c`` concurrent Trio tasks, each rewriting its own instance's snapshot
  (as a runner does), ``n`` puts in all, for each ``c`` in ``concurrency``;
- the raw protocol with the same payload size, from ``c`` threads: write a
  temp file, fsync it, rename it over, fsync the directory (durable), or
  write + rename only (non-durable). Every raw write pays its own directory
  fsync: this is the physical limit of the naive protocol, which FileStorage's
  group commit may beat at high concurrency.

Returns plain dicts (puts/s, and the ratio FileStorage / raw) so the bench
suite can put them in its report. Run it directly for a table::

    python bench/file_storage.py [--n 2000] [--tmp-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import trio

import hephaestus as hx
from hephaestus._core._codec import encode_instance
from hephaestus.storage._frame import encode_frame

CONCURRENCY = (1, 10, 100)


def sample_instance(iid: str, revision: int) -> hx.Instance:
    """Return a snapshot the size of a 3-step instance midway (about 700 bytes)."""
    return hx.Instance(
        id=iid,
        workflow="order",
        version=1,
        status=hx.Status.RUNNING,
        initial={"item_count": 3, "customer": "c-1234", "note": "x" * 200},
        results={"validate": {"checked": True}, "charge": {"amount": 1299, "currency": "EUR"}},
        active=("ship",),
        completed=("validate", "charge"),
        history=(
            hx.HistoryEntry(step="validate", event="valid", attempt=1, at=1.7e9),
            hx.HistoryEntry(step="charge", event="charged", attempt=1, at=1.7e9 + 1),
        ),
        created_at=1.7e9,
        updated_at=1.7e9 + 1,
        revision=revision,
    )


def _storage_rate(path: str, n: int, concurrency: int, *, durable: bool) -> float:
    per_task = max(1, n // concurrency)

    async def main() -> float:
        async with hx.FileStorage(path, durable=durable) as store:
            for t in range(concurrency):  # the first write of each id is not timed
                await store.put(sample_instance(f"orderid::bench-{t}", 0))

            async def worker(t: int) -> None:
                iid = f"orderid::bench-{t}"
                for revision in range(1, per_task + 1):
                    await store.put(sample_instance(iid, revision))

            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for t in range(concurrency):
                    nursery.start_soon(worker, t)
            return per_task * concurrency / (time.perf_counter() - started)

    return trio.run(main)


def _raw_rate(path: str, n: int, concurrency: int, payload: bytes, *, durable: bool) -> float:
    os.makedirs(path, exist_ok=True)
    per_thread = max(1, n // concurrency)

    def fsync_dir() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def worker(t: int) -> None:
        final = os.path.join(path, f"raw-{t}.snap")
        for i in range(per_thread):
            tmp = os.path.join(path, f".raw-{t}.{i}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                os.write(fd, payload)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            if durable:
                fsync_dir()

    started = time.perf_counter()
    if concurrency == 1:
        worker(0)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(worker, range(concurrency)))
    return per_thread * concurrency / (time.perf_counter() - started)


def measure(
    tmp_dir: str | None = None,
    n: int = 2000,
    concurrency: Sequence[int] = CONCURRENCY,
    repeats: int = 3,
) -> dict[str, Any]:
    """Measure puts/s of FileStorage and of the raw protocol; return them with their ratios.

    Each figure is the median of ``repeats`` runs; FileStorage and raw runs
    alternate, so a disk whose speed drifts (as virtual disks do) affects both
    alike, and ``ratio`` is the median of the per-pair ratios. The result maps
    ``"file_storage"``, ``"raw"`` and ``"ratio"`` to
    ``{"durable": {c: value}, "non_durable": {c: value}}`` and records ``n``,
    ``repeats``, ``payload_bytes`` and ``tmp_dir``. Durable runs use ``n // 4``
    writes (they are 10-100x slower).

    Raises:
        OSError: when the directory cannot be written.
    """
    base = tempfile.mkdtemp(prefix="hx-bench-fs-", dir=tmp_dir)
    payload = encode_frame(encode_instance(sample_instance("orderid::bench-0", 1)))
    result: dict[str, Any] = {
        "n": n,
        "repeats": repeats,
        "payload_bytes": len(payload),
        "tmp_dir": base,
        "file_storage": {"durable": {}, "non_durable": {}},
        "raw": {"durable": {}, "non_durable": {}},
        "ratio": {"durable": {}, "non_durable": {}},
    }
    try:
        run = 0
        for durable, key in ((True, "durable"), (False, "non_durable")):
            count = max(n // 4, 1) if durable else n
            for c in concurrency:
                raws: list[float] = []
                stored: list[float] = []
                for _ in range(repeats):
                    run += 1
                    raw_dir = os.path.join(base, f"raw-{run}")
                    raws.append(_raw_rate(raw_dir, count, c, payload, durable=durable))
                    fs_dir = os.path.join(base, f"fs-{run}")
                    stored.append(_storage_rate(fs_dir, count, c, durable=durable))
                result["raw"][key][c] = statistics.median(raws)
                result["file_storage"][key][c] = statistics.median(stored)
                result["ratio"][key][c] = statistics.median(
                    f / r for f, r in zip(stored, raws, strict=True)
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return result


def render(result: dict[str, Any]) -> str:
    """Return ``measure``'s result as a text table."""
    lines = [
        f"snapshot puts/s, payload {result['payload_bytes']} B, n={result['n']} "
        f"(durable runs n/4), median of {result['repeats']} alternating runs",
        f"{'mode':<12} {'tasks':>5} {'FileStorage':>12} {'raw':>10} {'ratio':>7}",
    ]
    for key in ("durable", "non_durable"):
        for c, stored in result["file_storage"][key].items():
            raw, ratio = result["raw"][key][c], result["ratio"][key][c]
            lines.append(f"{key:<12} {c:>5} {stored:>12,.0f} {raw:>10,.0f} {ratio:>7.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``measure`` and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="puts per non-durable run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per figure")
    parser.add_argument("--tmp-dir", default=None, help="where the stores go")
    args = parser.parse_args(argv)
    print(render(measure(args.tmp_dir, args.n, repeats=args.repeats)))


if __name__ == "__main__":
    main()
