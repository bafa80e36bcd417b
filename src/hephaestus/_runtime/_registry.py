"""The registry's records: one :class:`Entry` per instance this engine knows, and its token.

This module says what the engine knows about each instance and who may change
it; it runs nothing. An :class:`Entry` holds the instance's latest snapshot,
its :class:`State` (who serves it: a runner, nobody because it is passivated,
stuck, orphaned, finished or gone), its mailbox and its write token. A
passivated entry is an index record only (see :class:`Entry`).

The write token: whoever applies a transition holds the instance's token: the
runner when a step returns or a timer fires, a caller's request otherwise.
Holding it, they read the current snapshot, apply the pure transition, persist
it, carry out the commands and release; step code never runs while it is held.
A token is created when first needed and costs a few dozen bytes while free;
a passivated entry forgets its token once nobody holds or waits for it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, final

import trio

from .._core._model import Instance, Status
from .._core._workflow import Workflow
from ._mailbox import Mailbox

if TYPE_CHECKING:
    from ._runner import Runner


@final
class State(enum.Enum):
    """Who serves an instance of the registry, if anyone."""

    LIVE = "live"
    """A runner (or its supervisor, between two runners) serves it."""
    STUCK = "stuck"
    """Its runner crashed past the restart budget; left as stored until the next open_engine."""
    ORPHAN = "orphan"
    """This engine does not run it (workflow not registered, or definition changed)."""
    FINISHED = "finished"
    """Its runner let go of it for good."""
    PASSIVE = "passive"
    """Waiting with no step running or due: no runner; its timers stay in the timer service."""
    GONE = "gone"
    """The snapshot was deleted from storage while this engine ran the instance."""
    DELETING = "deleting"
    """Its snapshot is being removed by delete or prune."""
    DROPPED = "dropped"
    """Shared storage: this engine lost its lease on it; another engine holds it now."""


@final
class Entry:
    """The registry's record of one instance known to this engine.

    A resident entry holds the instance's latest snapshot. A passivated one
    (``PASSIVE``) holds only the index record: the instance's id, status,
    revision and workflow (its next deadlines are in the timer service); its
    snapshot stays in storage, and whoever applies a change to it loads it
    under the token. The token and the mailbox are created when needed.
    """

    __slots__ = (
        "_revision",
        "_status",
        "_token",
        "backoff",
        "finished",
        "id",
        "mailbox",
        "runner",
        "snapshot",
        "state",
        "workflow",
    )

    def __init__(self, workflow: Workflow | None, instance: Instance, state: State) -> None:
        self.workflow = workflow
        self.id = instance.id
        self.snapshot: Instance | None = instance
        """The latest snapshot; None while passivated (it is in storage)."""
        self._status = instance.status
        self._revision = instance.revision
        self.state = state
        self.finished: trio.Event | None = None
        self.mailbox: Mailbox | None = Mailbox() if state is State.LIVE else None
        self._token: Token | None = None
        self.runner: Runner | None = None
        """The runner taking callers' requests directly (under the token); None: by mail."""
        self.backoff = False
        """True while the runner retries a write it must store: requests go through the mailbox."""
        if state is State.PASSIVE:
            self.passivate()

    @property
    def instance(self) -> Instance:
        """The snapshot of a resident entry.

        Raises:
            RuntimeError: the entry is passivated, so its snapshot is in storage
                only (a bug in the engine: it must load it under the token).
        """
        snapshot = self.snapshot
        if snapshot is None:
            raise RuntimeError(f"instance {self.id!r} is passivated: its snapshot is in storage")
        return snapshot

    @instance.setter
    def instance(self, instance: Instance) -> None:
        self.snapshot = instance

    @property
    def status(self) -> Status:
        """The instance's status: its snapshot's, or the index record's while passivated."""
        snapshot = self.snapshot
        return self._status if snapshot is None else snapshot.status

    @property
    def revision(self) -> int:
        """The instance's stored revision: its snapshot's, or the index record's."""
        snapshot = self.snapshot
        return self._revision if snapshot is None else snapshot.revision

    @property
    def token(self) -> Token:
        """The instance's write token, created on first use."""
        token = self._token
        if token is None:
            token = self._token = Token()
        return token

    def passivate(self) -> None:
        """Keep only the index record: drop the snapshot, the mailbox and an idle token.

        The caller makes sure nothing needs them any more: no runner, no
        queued message, and only the token's holder (if any) goes on using it.
        """
        snapshot = self.snapshot
        if snapshot is not None:
            self._status = snapshot.status
            self._revision = snapshot.revision
            self.snapshot = None
        self.mailbox = None
        self.drop_idle_token()

    def drop_idle_token(self) -> None:
        """Forget the token of a passivated entry if nobody holds or waits for it."""
        token = self._token
        if token is not None and self.snapshot is None and token.idle():
            self._token = None

    def mark_done(self, state: State) -> None:
        """Record that no runner serves this instance any more, and wake ``wait`` callers."""
        self.state = state
        if self.finished is not None:
            self.finished.set()


@final
class Token:
    """A per-instance lock that also tells waiters when the way to apply changes.

    Besides being released, the token is "poked" when its holder stops taking
    requests directly (a runner backing off from a failing storage, a runner
    that stops): waiters wake and look again at how to send their request.
    """

    __slots__ = ("_acquiring", "_changed", "held")

    def __init__(self) -> None:
        self.held = False
        self._changed: trio.Event | None = None
        self._acquiring = 0

    def idle(self) -> bool:
        """Whether nobody holds the token or waits for it."""
        return not self.held and self._changed is None and not self._acquiring

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
        if self.held:
            self._acquiring += 1
            try:
                while self.held:
                    await self.changed()
            finally:
                self._acquiring -= 1
        self.held = True

    def release(self) -> None:
        """Give the token back and wake whoever waits for it."""
        self.held = False
        changed = self._changed
        if changed is not None:  # poke(), written out: this runs for every transition
            self._changed = None
            changed.set()

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
