"""hephaestus: a durable workflow engine for Trio applications.

The public API is re-exported here, once; everything else lives in private
modules. ``_core`` is the pure engine (no trio, no I/O), ``storage`` holds the
snapshot stores, ``_runtime`` is the Trio shell that runs instances, and
``testing`` is the harness for users' own tests.
"""

from typing import TYPE_CHECKING, Any

from ._core._errors import AlreadyRunning as AlreadyRunning
from ._core._errors import CorruptSnapshot as CorruptSnapshot
from ._core._errors import DefinitionChanged as DefinitionChanged
from ._core._errors import EngineClosed as EngineClosed
from ._core._errors import EventRejected as EventRejected
from ._core._errors import HephaestusError as HephaestusError
from ._core._errors import InstanceNotFound as InstanceNotFound
from ._core._errors import InvalidBusinessKey as InvalidBusinessKey
from ._core._errors import InvalidResult as InvalidResult
from ._core._errors import RevisionConflict as RevisionConflict
from ._core._errors import RunnerFailed as RunnerFailed
from ._core._errors import StepTimeout as StepTimeout
from ._core._errors import StorageLocked as StorageLocked
from ._core._errors import UndeclaredEvent as UndeclaredEvent
from ._core._errors import UnknownWorkflow as UnknownWorkflow
from ._core._errors import WorkflowDefinitionError as WorkflowDefinitionError
from ._core._ids import Unique as Unique
from ._core._model import ErrorInfo as ErrorInfo
from ._core._model import HistoryEntry as HistoryEntry
from ._core._model import InboxEvent as InboxEvent
from ._core._model import Instance as Instance
from ._core._model import Status as Status
from ._core._model import Timer as Timer
from ._core._steps import Done as Done
from ._core._steps import Emit as Emit
from ._core._steps import Retry as Retry
from ._core._steps import Route as Route
from ._core._steps import Step as Step
from ._core._steps import StepContext as StepContext
from ._core._steps import StepResult as StepResult
from ._core._steps import Suspend as Suspend
from ._core._steps import Target as Target
from ._core._steps import Wait as Wait
from ._core._steps import WaitForEvent as WaitForEvent
from ._core._steps import step as step
from ._core._subworkflow import SubWorkflow as SubWorkflow
from ._core._workflow import Workflow as Workflow
from ._runtime._engine import Engine as Engine
from ._runtime._open import open_engine as open_engine
from ._runtime._schedules import Schedule as Schedule
from ._telemetry import LogHandler as LogHandler
from ._telemetry import TelemetryEvent as TelemetryEvent
from .storage import AdmissionFull as AdmissionFull
from .storage import FileStorage as FileStorage
from .storage import LeaseLost as LeaseLost
from .storage import MemorySharedStorage as MemorySharedStorage
from .storage import MemoryStorage as MemoryStorage
from .storage import PostgresStorage as PostgresStorage
from .storage import SharedStorage as SharedStorage
from .storage import SQLiteStorage as SQLiteStorage
from .storage import Storage as Storage

__all__ = [
    # steps
    "step",
    "Step",
    "StepContext",
    "StepResult",
    "Emit",
    "Suspend",
    "Retry",
    "Wait",
    "WaitForEvent",
    "SubWorkflow",
    "Done",
    "Target",
    "Route",
    # workflows
    "Workflow",
    "Unique",
    # instances
    "Status",
    "Instance",
    "HistoryEntry",
    "ErrorInfo",
    "Timer",
    "InboxEvent",
    # the engine
    "open_engine",
    "Engine",
    "Schedule",
    # storage
    "Storage",
    "MemoryStorage",
    "FileStorage",
    "SQLiteStorage",
    "PostgresStorage",
    "SharedStorage",
    "MemorySharedStorage",
    # telemetry
    "TelemetryEvent",
    "LogHandler",
    # errors
    "HephaestusError",
    "WorkflowDefinitionError",
    "InvalidBusinessKey",
    "UnknownWorkflow",
    "AlreadyRunning",
    "InstanceNotFound",
    "EventRejected",
    "UndeclaredEvent",
    "DefinitionChanged",
    "StepTimeout",
    "InvalidResult",
    "RevisionConflict",
    "StorageLocked",
    "CorruptSnapshot",
    "RunnerFailed",
    "EngineClosed",
    "LeaseLost",
    "AdmissionFull",
    # helpers
    "testing",
]

if TYPE_CHECKING:
    from . import testing as testing


def __getattr__(name: str) -> Any:
    # hephaestus.testing pulls in trio.testing (and with it pytest): import it only
    # when asked for, so that `import hephaestus` stays cheap for the CLI and servers.
    if name == "testing":
        import importlib

        return importlib.import_module(f"{__name__}.testing")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
