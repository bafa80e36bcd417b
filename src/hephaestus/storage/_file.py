"""FileStorage: one durable, checksummed snapshot file per instance (work in progress)."""

from __future__ import annotations

import os
from typing import final

from ._protocol import StorageBase


@final
class FileStorage(StorageBase):
    """One msgspec-encoded snapshot per instance under ``path``, written atomically."""

    def __init__(
        self, path: str | os.PathLike[str], *, durable: bool = True, read_only: bool = False
    ) -> None:
        self.path = os.fspath(path)
        self.durable = durable
        self.read_only = read_only
        raise NotImplementedError("FileStorage is being built")
