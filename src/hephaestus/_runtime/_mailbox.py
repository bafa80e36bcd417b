"""Messages to a runner, and the one-shot reply a caller waits on."""

from __future__ import annotations

from collections import deque
from typing import Any, final

import trio

from .._core._engine import Input


@final
class Reply:
    """A one-shot answer from a runner to the task that sent it a message."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any) -> None:
        if not self._done.is_set():
            self._value = value
            self._done.set()

    def fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()

    async def wait(self) -> Any:
        """Return the runner's answer, or raise the error it reported."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


@final
class Message:
    """An input for the pure engine, with the reply slot of whoever is waiting for it.

    A message with a ``fault`` is not applied: the runner that takes it raises
    the fault (a caller that met a replaced snapshot or a bug hands it on so).
    """

    __slots__ = ("fault", "input", "reply")

    def __init__(
        self, input: Input, reply: Reply | None = None, *, fault: Exception | None = None
    ) -> None:
        self.input = input
        self.reply = reply
        self.fault = fault


@final
class Mailbox:
    """A runner's unbounded inbox of messages: many senders, one receiving task.

    A trio memory channel does the same job but costs about 1.8 KB per
    instance; this one costs a few dozen bytes while empty, which is what most
    parked instances are.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Message] | None = None
        self._waiter: trio.lowlevel.Task | None = None

    def put(self, message: Message) -> None:
        """Queue ``message`` and wake the receiver; never blocks."""
        if self._items is None:
            self._items = deque()
        self._items.append(message)
        if self._waiter is not None:
            task, self._waiter = self._waiter, None
            trio.lowlevel.reschedule(task)

    def empty(self) -> bool:
        """Whether no message is queued."""
        return not self._items

    def take_nowait(self) -> Message | None:
        """Return the oldest queued message, or None when the mailbox is empty."""
        items = self._items
        if not items:
            return None
        message = items.popleft()
        if not items:
            self._items = None
        return message

    async def take(self) -> Message:
        """Return the oldest message, waiting for one if needed. Only one task may call this.

        Cancellation loses nothing: like trio's channels this checks for
        cancellation before it removes a message and only then yields, shielded,
        so a cancelled ``take`` leaves every message queued.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        message = self.take_nowait()
        if message is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return message
        self._waiter = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        message = self.take_nowait()
        assert message is not None
        return message

    def put_back(self, messages: list[Message]) -> None:
        """Queue ``messages`` ahead of everything queued, in their order; never blocks."""
        if not messages:
            return
        if self._items is None:
            self._items = deque()
        self._items.extendleft(reversed(messages))
        if self._waiter is not None:
            task, self._waiter = self._waiter, None
            trio.lowlevel.reschedule(task)
