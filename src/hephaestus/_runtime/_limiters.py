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

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Final, final

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

    __slots__ = ("_limiter", "borrower", "taken")

    def __init__(self, limiter: trio.CapacityLimiter, borrower: object) -> None:
        self._limiter = limiter
        self.borrower = borrower
        self.taken = False

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        await trio.to_thread.current_default_thread_limiter().acquire_on_behalf_of(borrower)
        self.taken = True

    def release_on_behalf_of(self, borrower: object) -> None:
        trio.to_thread.current_default_thread_limiter().release_on_behalf_of(borrower)
        self._limiter.release_on_behalf_of(self.borrower)


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

    def hold(self, step: Step) -> AbstractAsyncContextManager[ThreadToken | None]:
        """Return an async context that holds a token of ``step``'s limiter while it runs.

        It yields the token to pass to a worker thread (``run_attempt``); for a
        step without a limiter it waits for nothing and yields None. Entering
        waits for a token, first come first served; a cancellation meanwhile
        propagates and takes no token. Leaving gives the token back, unless a
        worker thread took it: then the thread's end does.
        """
        if step.limiter is None:
            return _UNLIMITED
        return _Hold(self._limiters[step.limiter])


@final
class _Unlimited:
    """The context of a step without a limiter: no wait, no token (one shared instance)."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        return None


_UNLIMITED: Final = _Unlimited()


@final
class _Hold:
    """Holds one token of ``limiter`` between entering and leaving (see :meth:`Limiters.hold`)."""

    __slots__ = ("_limiter", "_token")

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self._limiter = limiter
        self._token: ThreadToken | None = None

    async def __aenter__(self) -> ThreadToken:
        borrower = object()
        await self._limiter.acquire_on_behalf_of(borrower)
        self._token = ThreadToken(self._limiter, borrower)
        return self._token

    async def __aexit__(self, *exc_info: object) -> None:
        token = self._token
        assert token is not None
        if not token.taken:
            self._limiter.release_on_behalf_of(token.borrower)


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
