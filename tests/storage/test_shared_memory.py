"""MemorySharedStorage's own behaviour: its arguments and the connection controls tests use."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

import hephaestus as hx
from hephaestus.storage._shared_memory import ConnectionKilled

from ._fs_samples import make_instance


@pytest.mark.parametrize("ttl", [0, -1.0, math.nan])
def test_a_lease_ttl_must_be_positive(ttl: float) -> None:
    with pytest.raises(ValueError, match="lease_ttl"):
        hx.MemorySharedStorage(lease_ttl=ttl)


async def test_a_paused_connection_holds_calls_until_resumed(autojump_clock: object) -> None:
    async with hx.MemorySharedStorage(clock=hx.testing.VirtualClock()) as store:
        conn = store.connect()
        await conn.put(make_instance("k::1"))
        conn.pause()
        got: list[object] = []

        async def read() -> None:
            got.append(await conn.get("k::1"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.sleep(100)
            assert got == []
            assert await store.get("k::1") is not None  # other connections are not held
            conn.resume()
        assert got == [make_instance("k::1")]
        assert conn.calls["get"] == 1


async def test_a_killed_connection_refuses_everything_and_kill_after_lets_one_commit() -> None:
    async with hx.MemorySharedStorage() as store:
        conn = store.connect()
        conn.kill_after("put")
        with pytest.raises(ConnectionKilled, match="after put committed"):
            await conn.put(make_instance("k::1"))
        assert conn.killed
        assert await store.get("k::1") == make_instance("k::1")  # it did commit
        with pytest.raises(ConnectionKilled):
            await conn.get("k::1")
        other = store.connect()
        other.kill_after("put")
        other.kill_after(None)  # taken back
        await other.put(make_instance("k::2"))
        assert not other.killed
        await other.aclose()  # the store stays open for the other connections
        assert store.is_open
