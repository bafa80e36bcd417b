"""Messages to a runner, and the one-shot reply a caller waits on."""

from __future__ import annotations

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
    """An input for the pure engine, with the reply slot of whoever is waiting for it."""

    __slots__ = ("input", "reply")

    def __init__(self, input: Input, reply: Reply | None = None) -> None:
        self.input = input
        self.reply = reply
