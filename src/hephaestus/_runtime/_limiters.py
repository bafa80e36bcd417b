"""Concurrency limiters: at most ``n`` attempts of the steps that name one run at once.

``open_engine(limiters={"api": 4})`` gives the engine one
:class:`trio.CapacityLimiter` per name; an attempt of a step declared with
``@hx.step(..., limiter="api")`` holds one of its tokens from before its code
starts until its code has ended. It waits for that token first, first come
first served, and its timeout clock starts only once it holds it.
Cancelling an attempt while it waits (the instance cancelled, a sibling
failed, the engine closing) simply stops the wait.

A plain-function step runs in a worker thread that trio abandons when the
attempt is cancelled; the thread's code may still be running then, so its
token is given back only when the thread ends (the token is handed to
:func:`trio.to_thread.run_sync` as its ``limiter``). "At most n at once"
therefore counts step code really running, not attempts the engine awaits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import final

import trio

from .._core._steps import Step
from .._core._workflow import Workflow


@final
class ThreadToken:
    """A token already held, lent to ``trio.to_thread.run_sync(..., limiter=...)``.

    Trio calls ``acquire_on_behalf_of`` before it starts the worker thread
    (this also takes a token of trio's default thread limiter, so the global
    cap on worker threads still holds) and ``release_on_behalf_of`` once the
    thread has ended, abandoned or not; that gives the held token back.
    ``taken`` says whether trio took charge of it.
    """

    __slots__ = ("_borrower", "_limiter", "taken")

    def __init__(self, limiter: trio.CapacityLimiter, borrower: object) -> None:
        self._limiter = limiter
        self._borrower = borrower
        self.taken = False

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        await trio.to_thread.current_default_thread_limiter().acquire_on_behalf_of(borrower)
        self.taken = True

    def release_on_behalf_of(self, borrower: object) -> None:
        trio.to_thread.current_default_thread_limiter().release_on_behalf_of(borrower)
        self._limiter.release_on_behalf_of(self._borrower)


@final
class Limiters:
    """The engine's limiters by name; each step attempt runs inside :meth:`hold`."""

    __slots__ = ("_limiters",)

    def __init__(self, limits: Mapping[str, int]) -> None:
        self._limiters = {name: trio.CapacityLimiter(n) for name, n in limits.items()}

    def get(self, name: str) -> trio.CapacityLimiter:
        """The limiter called ``name``.

        Raises:
            KeyError: no limiter has that name.
        """
        return self._limiters[name]

    @asynccontextmanager
    async def hold(self, step: Step) -> AsyncIterator[ThreadToken | None]:
        """Hold a token of ``step``'s limiter for the block (no wait for a step without one).

        Yields the token to pass to a worker thread (``run_attempt``), or None
        without a limiter. Entering waits for a token, first come first served;
        a cancellation meanwhile propagates and takes no token. Leaving gives
        the token back, unless a worker thread took it: then the thread's end
        does.
        """
        if step.limiter is None:
            yield None
            return
        limiter = self._limiters[step.limiter]
        borrower = object()
        await limiter.acquire_on_behalf_of(borrower)
        token = ThreadToken(limiter, borrower)
        try:
            yield token
        finally:
            if not token.taken:
                limiter.release_on_behalf_of(borrower)


def unlimited(workflow: Workflow) -> dict[str, int]:
    """Return limits under which one instance of ``workflow`` never waits for a limiter.

    Each limiter its steps name gets as many tokens as steps name it: what
    ``hx.testing.run_workflow``, which runs one instance alone, gives its engine.
    """
    limits: dict[str, int] = {}
    for step in workflow.steps.values():
        if step.limiter is not None:
            limits[step.limiter] = limits.get(step.limiter, 0) + 1
    return limits
