"""The write token: who may apply the next transition to one instance.

Whoever applies a transition holds the instance's token: the runner when a
step returns or a timer fires, a caller's request otherwise. Holding it, they
read the current snapshot, apply the pure transition, persist it, carry out
the commands and release; step code never runs while it is held. A token is
created with its registry entry and costs a few dozen bytes while free.
"""

from __future__ import annotations

from typing import final

import trio


@final
class Token:
    """A per-instance lock that also tells waiters when the way to apply changes.

    Besides being released, the token is "poked" when its holder stops taking
    requests directly (a runner backing off from a failing storage, a runner
    that stops): waiters wake and look again at how to send their request.
    """

    __slots__ = ("_changed", "held")

    def __init__(self) -> None:
        self.held = False
        self._changed: trio.Event | None = None

    def try_acquire(self) -> bool:
        """Take the token if it is free; never blocks or checkpoints."""
        if self.held:
            return False
        self.held = True
        return True

    async def acquire(self) -> None:
        """Take the token, waiting for its holder to release it.

        Cancelled while waiting, the caller does not hold it. Checkpoints only
        when it has to wait.
        """
        while self.held:
            await self.changed()
        self.held = True

    def release(self) -> None:
        """Give the token back and wake whoever waits for it."""
        self.held = False
        self.poke()

    def poke(self) -> None:
        """Wake every task waiting in :meth:`changed`."""
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    async def changed(self) -> None:
        """Wait until the token is released or poked."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()
