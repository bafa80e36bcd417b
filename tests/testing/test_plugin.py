"""The pytest fixtures: hx_workflows, hx_engine, hx_file_engine, hx_open_engine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

import pytest
import trio
import trio.testing

import hephaestus as hx
from hephaestus.testing._plugin import OpenEngine

from .workflows import PROVIDER, order, warehouse

pytest_plugins = ["pytester"]


@pytest.fixture
def hx_workflows() -> Sequence[hx.Workflow]:
    return [order]


async def test_hx_engine_runs_the_overridden_workflows_in_virtual_time(
    hx_engine: hx.Engine, autojump_clock: trio.testing.MockClock
) -> None:
    PROVIDER.reset()
    iid = await hx_engine.start(order, "o1", {"amount": 30})
    await trio.sleep(30 * 60)
    await hx_engine.resume(iid, "paid", {"ref": "w"})
    final = await hx_engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.updated_at - final.created_at == pytest.approx(30 * 60, abs=1)
    assert isinstance(hx_engine.clock, hx.testing.VirtualClock)
    assert isinstance(hx_engine.storage, hx.MemoryStorage)


@pytest.mark.parametrize("hx_workflows", [[warehouse]])
async def test_parametrize_picks_workflows_per_test(
    hx_engine: hx.Engine, autojump_clock: trio.testing.MockClock
) -> None:
    assert [w.name for w in hx_engine.workflows] == ["warehouse"]
    final = await hx_engine.wait(await hx_engine.start(warehouse, "s1", {"items": 3}))
    assert final.results["send_small"] == {"by": "post"}


async def test_hx_file_engine_persists_to_tmp_path(
    hx_file_engine: hx.Engine, autojump_clock: trio.testing.MockClock, tmp_path: object
) -> None:
    iid = await hx_file_engine.start(order, "o2", {"amount": 30})
    final = await hx_file_engine.wait(iid)  # no webhook: the hour times out
    assert final.status is hx.Status.COMPLETED
    assert isinstance(hx_file_engine.storage, hx.FileStorage)
    assert (await hx_file_engine.storage.get(iid)) == final


async def test_hx_open_engine_simulates_a_restart(
    hx_open_engine: OpenEngine, autojump_clock: trio.testing.MockClock
) -> None:
    async with hx_open_engine() as engine:
        iid = await engine.start(order, "o3", {"amount": 30})
        await trio.sleep(60)
        assert (await engine.get(iid)).waiting == {"await_payment": ("paid", "timeout")}
    async with hx_open_engine(workflows=[order]) as engine:  # recovers from the storage
        await engine.resume(iid, "paid")
        final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert isinstance(hx_open_engine.storage, hx.MemoryStorage)


def test_the_plugin_imports_nothing_heavy() -> None:
    code = (
        "import sys, hephaestus.testing._plugin; "
        "print(sorted(m for m in ('hypothesis', 'pytest_trio') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"


def test_a_users_suite_gets_the_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        test_user="""
        import pytest
        import trio
        import hephaestus as hx

        @hx.step(events=("done",))
        async def work(ctx):
            return "done"

        nap = hx.Wait(3600, key="nap")
        flow = hx.Workflow("flow", start=work, transitions={(work, "done"): nap,
                           (nap, "timeout"): hx.Done}, unique=hx.Unique("flow"))

        @pytest.fixture
        def hx_workflows():
            return [flow]

        async def test_flow(hx_engine, autojump_clock):
            final = await hx_engine.wait(await hx_engine.start(flow, "x"))
            assert final.status is hx.Status.COMPLETED
            assert trio.current_time() >= 3600

        async def test_default_has_no_workflows(hx_open_engine, autojump_clock):
            async with hx_open_engine(workflows=[]) as engine:
                assert engine.workflows == []
    """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
