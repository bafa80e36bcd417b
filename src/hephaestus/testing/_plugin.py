"""pytest plugin (registered through the ``pytest11`` entry point): hephaestus fixtures.

pytest loads this module in every run of every project that has hephaestus
installed, so it imports nothing but pytest at module level; the fixtures
import what they need when a test asks for them.

Fixtures:

- ``hx_workflows``: the workflows the engines run. The default is empty:
  override it in a ``conftest.py`` or test module (``@pytest.fixture def
  hx_workflows(): return [order]``), or per test with
  ``@pytest.mark.parametrize("hx_workflows", [[order]])``.
- ``hx_engine``: an ``Engine`` on a fresh ``MemoryStorage`` with a
  ``VirtualClock``. Use it from a trio test that also requests
  ``autojump_clock``, so timers run in virtual time.
- ``hx_file_engine``: the same on a ``FileStorage`` in ``tmp_path``.
- ``hx_open_engine``: a factory, ``async with hx_open_engine(workflows=...)
  as engine``, opening engines on one shared ``MemoryStorage`` (the
  ``storage`` attribute) with a ``VirtualClock``: leave the block and open
  another to simulate a restart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from hephaestus import Engine, Storage, Workflow


class OpenEngine(Protocol):
    """The ``hx_open_engine`` factory: opens engines on one storage, with a VirtualClock."""

    storage: Storage

    def __call__(
        self, *, workflows: Iterable[Workflow] | None = None, **options: Any
    ) -> AbstractAsyncContextManager[Engine]: ...


@pytest.fixture
def hx_workflows() -> Sequence[Workflow]:
    """The workflows ``hx_engine`` and ``hx_file_engine`` run: override this fixture."""
    return []


@pytest.fixture
def hx_open_engine(hx_workflows: Sequence[Workflow]) -> OpenEngine:
    """Return a factory of engines on one shared ``MemoryStorage`` with a ``VirtualClock``."""
    from hephaestus import MemoryStorage

    return _factory(MemoryStorage(), hx_workflows)


@pytest.fixture
async def hx_engine(hx_open_engine: OpenEngine) -> AsyncIterator[Engine]:
    """Yield an engine on a fresh ``MemoryStorage``; request ``autojump_clock`` too."""
    async with hx_open_engine() as engine:
        yield engine


@pytest.fixture
async def hx_file_engine(hx_workflows: Sequence[Workflow], tmp_path: Path) -> AsyncIterator[Engine]:
    """Yield an engine on a ``FileStorage`` under ``tmp_path``; request ``autojump_clock`` too.

    Skips the test when this build has no working ``FileStorage``.
    """
    from hephaestus import FileStorage

    try:
        storage = FileStorage(tmp_path / "hx-store")
        await storage.aopen()
    except (NotImplementedError, ImportError) as exc:
        pytest.skip(f"hx_file_engine: FileStorage is not available in this build ({exc})")
    try:
        async with _factory(storage, hx_workflows)() as engine:
            yield engine
    finally:
        await storage.aclose()


def _factory(storage: Storage, default: Sequence[Workflow]) -> OpenEngine:
    from hephaestus import open_engine
    from hephaestus.testing import VirtualClock

    clock = VirtualClock()

    @asynccontextmanager
    async def open_one(
        *, workflows: Iterable[Workflow] | None = None, **options: Any
    ) -> AsyncIterator[Engine]:
        options.setdefault("clock", clock)
        chosen = list(default if workflows is None else workflows)
        async with open_engine(workflows=chosen, storage=storage, **options) as engine:
            yield engine

    open_one.storage = storage  # type: ignore[attr-defined]
    return open_one  # type: ignore[return-value]
