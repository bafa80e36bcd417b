"""Storage adapters: the Storage protocol, MemoryStorage, FileStorage and SQLiteStorage."""

from ._file import FileStorage as FileStorage
from ._memory import MemoryStorage as MemoryStorage
from ._protocol import Storage as Storage
from ._sqlite import SQLiteStorage as SQLiteStorage

__all__ = ["FileStorage", "MemoryStorage", "SQLiteStorage", "Storage"]
