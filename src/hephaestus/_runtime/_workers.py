"""Runner tasks that outlive their instance: a finished runner's task takes the next one.

Spawning a Trio task and opening the cancel scope that lets finishing an
instance reach the code of its inline steps cost about as much as the rest of
a short instance's runner. So the task that ran an instance's supervisor
(:func:`~._supervisor.supervise`) does not end with it: it parks, idle, and the
next instance to run gets it (:meth:`Workers.run`), with the scope it already
holds. A new task is spawned only when no idle one fits.

What a step sees does not change:

- Its task's context variables: an idle task is handed an instance only if
  its context holds exactly what the caller's does (a new task would get a
  copy of the caller's); a task whose steps changed a context variable, or
  one idle when a caller with other values comes, ends instead.
- Cancellation: the task keeps its scope only until the scope is cancelled
  (an instance finished while its inline step ran); then the task ends once
  that instance's supervisor returns, and a new one takes its place.

At most :data:`KEEP` tasks wait idle; a task finding that many ends.

Only an engine that passivates (``passivate_after`` not None) keeps tasks:
there an instance waiting for an event lets its runner go (at once, or after
the delay), so the scope goes on to serve others. With ``passivate_after=None``
every waiting instance keeps its runner task, and a scope held across
instances would be held by each of them (about 1 KiB): there every runner
gets a task of its own, whose inline steps open their scope while they run.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, final

import trio

from .._core._engine import Command
from ._registry import Entry

if TYPE_CHECKING:
    from ._engine import Engine

KEEP: Final = 64
"""The most runner tasks kept idle for the next instance."""

IDLE: Final = f"{__name__}.idle"
"""The name of a runner task while it waits for an instance (it is no instance's runner)."""

_Job = tuple[Entry, Sequence[Command], bool]
Supervise = Callable[["Engine", Entry, Sequence[Command], bool, "Lent | None"], Awaitable[None]]


_MISSING: Final = object()


def _same(context: contextvars.Context, other: contextvars.Context) -> bool:
    """Whether both contexts hold the same variables with the very same values."""
    if len(context) != len(other):
        return False
    # By identity: a new task's copy holds these very objects (and most contexts are empty).
    return not context or all(other.get(var, _MISSING) is value for var, value in context.items())


@final
class Lent:
    """The cancel scope a runner task holds open, lent to each chain of inline steps it runs.

    A chain enters this instead of a scope of its own (``with lent:``) while
    the scope is not cancelled. Only finishing the instance
    cancels it while a chain runs (the chain's :attr:`Runner.scope
    <._runner.Runner.scope>`), so a ``Cancelled`` raised once it is cancelled is
    the chain's: leaving the block absorbs it, as the chain's own scope would,
    and the chain ends. The task leaves the spent scope before its next
    checkpoint: what follows the chain of a finished instance (its
    supervisor's bookkeeping) does not await.
    """

    __slots__ = ("scope",)

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope

    def __enter__(self) -> trio.CancelScope:
        return self.scope

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if exc is None or not self.scope.cancel_called:
            return False
        if isinstance(exc, BaseExceptionGroup):  # absorbed only if all of it is Cancelled
            return exc.split(trio.Cancelled)[1] is None
        return isinstance(exc, trio.Cancelled)


@final
class _Task:
    """One runner task of the pool: what it is handed while idle, and how it is woken."""

    __slots__ = ("context", "idle", "job", "task")

    def __init__(self, task: trio.lowlevel.Task, idle: list[_Task]) -> None:
        self.task = task
        self.idle = idle
        self.context = contextvars.Context()
        """Its context as it parked: what the next instance's steps would see."""
        self.job: _Job | None = None

    def abort(self, _: object) -> trio.lowlevel.Abort:
        """Stop waiting idle (the engine is closing): leave the pool."""
        if self in self.idle:
            self.idle.remove(self)
        return trio.lowlevel.Abort.SUCCEEDED


@final
class Workers:
    """The engine's runner tasks that wait, idle, for the next instance to run."""

    __slots__ = ("_engine", "_idle", "_name", "_nursery", "_supervise")

    def __init__(self, engine: Engine, nursery: trio.Nursery, supervise: Supervise) -> None:
        self._engine = engine
        self._nursery = nursery
        self._supervise = supervise
        self._name = f"{supervise.__module__}.{supervise.__qualname__}"
        """A runner task's name while it serves an instance (the one trio gives ``supervise``)."""
        self._idle: list[_Task] = []

    def run(self, entry: Entry, commands: Sequence[Command], announce: bool = True) -> None:
        """Run ``supervise(engine, entry, commands, announce)`` in a task of the engine nursery.

        An idle runner task takes it when one fits (the most recently parked,
        whose context equals the caller's); otherwise a new task does (always,
        in an engine that does not passivate). Never blocks; the supervisor
        starts at the next schedule point either way.
        """
        if self._engine.passivate_after is None:
            self._nursery.start_soon(
                self._supervise, self._engine, entry, commands, announce, None, name=self._name
            )
            return
        idle = self._idle
        if idle:
            last = idle.pop()
            task = last.task
            if _same(last.context, contextvars.copy_context()):
                last.job = (entry, commands, announce)
                task.name = self._name
                trio.lowlevel.reschedule(task)
                return
            trio.lowlevel.reschedule(task)  # no job: it ends
        self._nursery.start_soon(self._serve, entry, commands, announce, name=self._name)

    async def _serve(self, entry: Entry, commands: Sequence[Command], announce: bool) -> None:
        """Supervise instances one after another in this task, while its scope is not cancelled."""
        engine = self._engine
        supervise = self._supervise
        idle = self._idle
        me = _Task(trio.lowlevel.current_task(), idle)
        job: _Job | None = (entry, commands, announce)
        del entry, commands  # an idle task holds on to no instance
        try:
            with trio.CancelScope() as scope:
                lent = Lent(scope)
                while job is not None:
                    await supervise(engine, *job, lent)
                    job = None
                    if scope.cancel_called or len(idle) >= KEEP:
                        return  # the scope is spent (a step was cancelled), or enough wait
                    # Park until an instance is handed over; no job: end instead. The
                    # engine closing cancels the wait (me.abort).
                    me.job = None
                    me.context = contextvars.copy_context()
                    me.task.name = IDLE
                    idle.append(me)
                    await trio.lowlevel.wait_task_rescheduled(me.abort)
                    job = me.job
        finally:
            me.task.name = self._name  # ended: named for what it ran
