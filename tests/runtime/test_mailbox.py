"""The runner's mailbox: a cancelled take loses no message (trio's channel order)."""

from __future__ import annotations

import trio
import trio.testing

from hephaestus._core._engine import Recover
from hephaestus._runtime._mailbox import Mailbox, Message


async def test_take_cancelled_with_a_message_queued_leaves_it_queued() -> None:
    mailbox = Mailbox()
    message = Message(Recover())
    mailbox.put(message)
    with trio.CancelScope() as scope:
        scope.cancel()
        await mailbox.take()
    assert scope.cancelled_caught
    assert mailbox.take_nowait() is message


async def test_put_back_queues_ahead_in_order_and_wakes_the_taker() -> None:
    mailbox = Mailbox()
    late, first, second = Message(Recover()), Message(Recover()), Message(Recover())
    got: list[Message] = []

    async def taker() -> None:
        for _ in range(3):
            got.append(await mailbox.take())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(taker)
        await trio.testing.wait_all_tasks_blocked()
        mailbox.put_back([first])
        await trio.testing.wait_all_tasks_blocked()
        mailbox.put(late)
        mailbox.put_back([second])
    assert got == [first, second, late]
