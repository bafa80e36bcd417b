"""Storage adapters: the Storage and SharedStorage protocols and the stores."""

from ._file import FileStorage as FileStorage
from ._memory import MemoryStorage as MemoryStorage
from ._postgres import PostgresStorage as PostgresStorage
from ._protocol import Storage as Storage
from ._shared import AdmissionFull as AdmissionFull
from ._shared import LeaseLost as LeaseLost
from ._shared import SharedStorage as SharedStorage
from ._shared_memory import MemorySharedStorage as MemorySharedStorage
from ._sqlite import SQLiteStorage as SQLiteStorage

__all__ = [
    "AdmissionFull",
    "FileStorage",
    "LeaseLost",
    "MemorySharedStorage",
    "MemoryStorage",
    "PostgresStorage",
    "SQLiteStorage",
    "SharedStorage",
    "Storage",
]
