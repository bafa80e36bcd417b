"""The pure core stays pure: no trio, no I/O modules, no clock or randomness.

Two independent checks: the AST of every file under ``src/hephaestus/_core``
(direct imports and calls), and a real import of every ``_core`` module in a
subprocess where trio and the I/O modules are blocked (``sys.modules[name] =
None`` makes any import of them fail).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "src" / "hephaestus" / "_core"

# Modules the core must never import (top-level package names).
FORBIDDEN_MODULES = frozenset(
    {
        "trio",
        "trio_util",
        "anyio",
        "asyncio",
        "os",
        "io",
        "sys",
        "socket",
        "pathlib",
        "subprocess",
        "time",
        "datetime",
        "random",
        "secrets",
        "shutil",
        "tempfile",
        "select",
        "selectors",
        "threading",
        "multiprocessing",
        "concurrent",
        "sqlite3",
        "urllib",
        "http",
        "logging",
        "signal",
        "mmap",
        "glob",
        "fcntl",
        "importlib",
        "ctypes",
        "builtins",
    }
)
# Builtins that do I/O or load code at run time.
FORBIDDEN_CALLS = frozenset(
    {
        "open",
        "print",
        "input",
        "breakpoint",
        "exec",
        "eval",
        "compile",
        "__import__",
    }
)
# uuid is imported to parse business values; these would read the host or randomness.
FORBIDDEN_ATTRIBUTES = frozenset(
    {
        ("uuid", "uuid1"),
        ("uuid", "uuid4"),
        ("uuid", "getnode"),
    }
)
# Modules blocked in the import check: everything above that the interpreter itself,
# msgspec and the stdlib modules the core legitimately uses can live without.
BLOCKED_AT_IMPORT = (
    "trio",
    "trio_util",
    "anyio",
    "asyncio",
    "socket",
    "subprocess",
    "pathlib",
    "random",
    "secrets",
    "shutil",
    "tempfile",
    "select",
    "selectors",
    "multiprocessing",
    "sqlite3",
    "urllib",
    "http",
    "logging",
    "signal",
    "mmap",
    "glob",
    "fcntl",
    "hephaestus._runtime",
    "hephaestus.storage",
    "hephaestus.testing",
    "hephaestus.cli",
    "hephaestus._telemetry",
)


def impurities(source: str, filename: str) -> list[str]:
    """Return a description of every impure import or call in ``source``."""
    found: list[str] = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in FORBIDDEN_MODULES:
                    found.append(f"{where}: import {alias.name}")
                if top == "hephaestus" and not alias.name.startswith("hephaestus._core"):
                    found.append(f"{where}: import {alias.name} (outside _core)")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level >= 2:
                found.append(f"{where}: from {'.' * node.level}{module} import (outside _core)")
            elif node.level == 0:
                top = module.split(".")[0]
                if top in FORBIDDEN_MODULES:
                    found.append(f"{where}: from {module} import")
                if top == "hephaestus" and not module.startswith("hephaestus._core"):
                    found.append(f"{where}: from {module} import (outside _core)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in FORBIDDEN_CALLS:
                found.append(f"{where}: call to {node.func.id}()")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and (node.value.id, node.attr) in FORBIDDEN_ATTRIBUTES
        ):
            found.append(f"{where}: {node.value.id}.{node.attr}")
    return found


def core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_core_files_exist() -> None:
    names = {path.name for path in core_files()}
    assert {"_engine.py", "_steps.py", "_workflow.py", "_model.py", "_codec.py"} <= names


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_core_file_is_pure(path: Path) -> None:
    assert impurities(path.read_text(encoding="utf-8"), path.name) == []


@pytest.mark.parametrize(
    "source",
    [
        "import trio",
        "import trio.lowlevel as tl",
        "from trio import sleep",
        "import os.path",
        "from time import time",
        "import random",
        "from pathlib import Path",
        "import socket, json",
        "from .. import storage",
        "from .._runtime import _engine",
        "from hephaestus.storage import MemoryStorage",
        "def f():\n    import subprocess",
        "open('x')",
        "print('x')",
        "import uuid\nx = uuid.uuid4()",
    ],
)
def test_checker_catches(source: str) -> None:
    assert impurities(source, "sample.py") != []


@pytest.mark.parametrize(
    "source",
    ["import re", "import msgspec", "from ._steps import Step", "import uuid\nuuid.UUID('x')"],
)
def test_checker_allows(source: str) -> None:
    assert impurities(source, "sample.py") == []


IMPORT_SCRIPT = """
import importlib, sys, types
for name in {blocked!r}:
    sys.modules[name] = None
# Import the subpackage without running hephaestus/__init__.py, which pulls in the runtime.
package = types.ModuleType("hephaestus")
package.__path__ = [{package!r}]
sys.modules["hephaestus"] = package
for name in {modules!r}:
    importlib.import_module("hephaestus._core." + name)
assert sys.modules["trio"] is None
print("imported", len({modules!r}))
"""


def test_core_imports_with_trio_and_io_blocked() -> None:
    modules = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")
    script = IMPORT_SCRIPT.format(
        blocked=BLOCKED_AT_IMPORT, package=str(CORE.parent), modules=modules
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f"imported {len(modules)}" in result.stdout


def test_import_check_can_fail() -> None:
    """The subprocess check really blocks trio: importing it there fails."""
    script = (
        IMPORT_SCRIPT.format(blocked=BLOCKED_AT_IMPORT, package=str(CORE.parent), modules=[])
        + "\nimport trio\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "trio" in result.stderr
