"""The public API: every name API.md promises is exported once, from the top level."""

import subprocess
import sys

import hephaestus as hx

API_NAMES = [
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
    "Workflow",
    "Unique",
    "open_engine",
    "Engine",
    "Schedule",
    "Status",
    "Instance",
    "HistoryEntry",
    "ErrorInfo",
    "Storage",
    "MemoryStorage",
    "FileStorage",
    "SQLiteStorage",
    "PostgresStorage",
    "TelemetryEvent",
    "LogHandler",
    "testing",
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
    "RevisionConflict",
    "StorageLocked",
    "CorruptSnapshot",
]


def test_every_api_name_is_exported() -> None:
    missing = [name for name in API_NAMES if not hasattr(hx, name)]
    assert missing == []
    assert set(API_NAMES) <= set(hx.__all__)


def test_all_lists_each_name_once_and_only_real_names() -> None:
    assert len(hx.__all__) == len(set(hx.__all__))
    assert [name for name in hx.__all__ if not hasattr(hx, name)] == []


def test_errors_share_one_base_and_keep_their_builtin_parents() -> None:
    errors = [
        hx.WorkflowDefinitionError,
        hx.InvalidBusinessKey,
        hx.UnknownWorkflow,
        hx.AlreadyRunning,
        hx.InstanceNotFound,
        hx.EventRejected,
        hx.UndeclaredEvent,
        hx.StepTimeout,
        hx.RevisionConflict,
        hx.StorageLocked,
        hx.CorruptSnapshot,
    ]
    assert all(issubclass(error, hx.HephaestusError) for error in errors)
    assert issubclass(hx.InvalidBusinessKey, ValueError)
    assert issubclass(hx.InstanceNotFound, LookupError)
    assert issubclass(hx.DefinitionChanged, hx.EventRejected)


def test_the_shared_storage_errors_a_caller_or_a_store_meets_are_exported() -> None:
    # A store implementing hx.SharedStorage raises them; a retry caller on a full
    # max_active meets AdmissionFull and can catch it as the EventRejected it is.
    assert hx.AdmissionFull is hx.storage.AdmissionFull
    assert issubclass(hx.AdmissionFull, hx.EventRejected)
    assert issubclass(hx.LeaseLost, hx.HephaestusError)


def test_only_the_documented_modules_are_public() -> None:
    import pkgutil

    public = {m.name for m in pkgutil.iter_modules(hx.__path__) if not m.name.startswith("_")}
    assert public == {"cli", "contrib", "storage", "testing"}


def test_importing_hephaestus_does_not_import_testing_tools() -> None:
    code = (
        "import sys, hephaestus\n"
        "heavy = [m for m in ('pytest', 'hypothesis', 'trio.testing', 'hephaestus.testing',"
        " 'opentelemetry') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
