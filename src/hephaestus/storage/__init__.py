"""Storage adapters: the Storage protocol, MemoryStorage, FileStorage, SQLiteStorage,
PostgresStorage."""

from ._file import FileStorage as FileStorage
from ._memory import MemoryStorage as MemoryStorage
from ._postgres import PostgresStorage as PostgresStorage
from ._protocol import Storage as Storage
from ._sqlite import SQLiteStorage as SQLiteStorage

__all__ = ["FileStorage", "MemoryStorage", "PostgresStorage", "SQLiteStorage", "Storage"]
