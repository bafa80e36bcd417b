"""Schedules, the pure part: which ticks to start at a look, tick values, the stored record.

A schedule keeps one number: ``through``, the moment (epoch seconds of the
engine's clock) up to which every tick has been dealt with, started or
skipped. Each time it looks, at a moment ``now``, the ticks in
``(through, now]`` are due:

- the tick it was waiting for (``waited``, the first tick after the previous
  look) is on time and always started;
- every other due tick was missed, while no engine ran the schedule (or its
  host was suspended): ``catch_up`` says which of them start, ``"all"``
  every one, ``"latest"`` only the most recent, ``"skip"`` none.

Then ``through`` becomes ``now`` (or, when ``"all"`` has more missed ticks
than one plan starts, the last tick it started: the schedule looks again at
once). A schedule seen for the first time has no ``through`` yet: it starts
at the moment it is seen, so its first tick is the first one after that
moment.

``through`` is stored as an instance-like record, so every ``Storage`` keeps
it, third-party adapters included (they store only instances): id
``_schedule::<name>`` (no workflow's id starts with ``_``), workflow
``hephaestus.schedule``, status COMPLETED (recovery leaves it alone),
``through`` in its metadata. ``prune`` never deletes it.
"""

from __future__ import annotations

import math
from typing import Final, Literal, Protocol, TypeAlias, final

import msgspec

from ._ids import Unique
from ._model import Instance, Status
from ._seconds import seconds_problem

CatchUp: TypeAlias = Literal["latest", "all", "skip"]
CATCH_UP: Final = ("latest", "all", "skip")
RECORD_WORKFLOW: Final = "hephaestus.schedule"
"""The ``workflow`` of a schedule's record; no engine runs a workflow of that name."""
RECORD_PREFIX: Final = "_schedule::"


class Ticks(Protocol):
    """A cron expression's ticks, in epoch seconds (whole seconds)."""

    def after(self, moment: float) -> float | None:
        """The first tick strictly after ``moment``, or None if there is none."""
        ...

    def latest(self, moment: float) -> float | None:
        """The last tick at or before ``moment``, or None if there is none."""
        ...


@final
class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What a schedule does when it looks: the ticks to start, in order, and those it skips.

    ``through`` is the moment up to which the plan deals with every tick: the
    moment of the look, or, when ``"all"`` has more missed ticks than one plan
    holds, its last tick (look again at once for the rest). ``skipped`` is the
    first and the last missed tick that ``catch_up`` leaves out (every tick
    between them is left out too), or None.
    """

    start: tuple[float, ...]
    through: float
    skipped: tuple[float, float] | None = None


PLAN_LIMIT: Final = 1_000
"""The most ticks one plan of ``"all"`` starts: a long downtime is caught up in such steps."""


def plan(
    ticks: Ticks,
    *,
    through: float,
    now: float,
    waited: float | None,
    catch_up: CatchUp,
    limit: int = PLAN_LIMIT,
) -> Plan:
    """Return the ticks to start at ``now``, all ticks up to ``through`` having been dealt with.

    ``waited`` is the tick the schedule slept for (None on its first look after
    an engine opened): started if it is due. Every other tick in ``(through,
    now]`` was missed and follows ``catch_up``. Nothing is due when ``now`` is
    not past ``through`` (a clock set back). With ``"all"`` at most ``limit``
    ticks (>= 1) start; when more are due, the plan's ``through`` stops at the
    last of them.
    """
    start: list[float] = []
    lower = through
    if waited is not None and through < waited <= now:
        start.append(waited)
        lower = waited
    if catch_up == "all":
        tick = ticks.after(lower)
        while tick is not None and tick <= now:
            if len(start) == limit:
                return Plan(start=tuple(start), through=start[-1])
            start.append(tick)
            tick = ticks.after(tick)
        return Plan(start=tuple(start), through=now)
    last = ticks.latest(now)
    if last is None or last <= lower:
        return Plan(start=tuple(start), through=now)
    first = ticks.after(lower)
    assert first is not None
    assert first <= last  # last itself is a tick after lower
    if catch_up == "skip":
        return Plan(start=tuple(start), through=now, skipped=(first, last))
    start.append(last)
    if first == last:
        return Plan(start=tuple(start), through=now)
    before_last = ticks.latest(math.nextafter(last, -math.inf))
    assert before_last is not None
    assert before_last >= first
    return Plan(start=tuple(start), through=now, skipped=(first, before_last))


def catch_up_problem(catch_up: object) -> str | None:
    """Why ``catch_up`` is no catch-up policy, or None if it is one."""
    if isinstance(catch_up, str) and catch_up in CATCH_UP:
        return None
    return (
        f"catch_up must be 'latest' (start the most recent missed tick), 'all' (every "
        f"missed tick) or 'skip' (none), got {catch_up!r}"
    )


def scope_problem(workflow: str, unique: Unique) -> str | None:
    """Why a schedule cannot start ``workflow`` once per tick under ``unique``, or None.

    A tick's instance id must be the same whoever computes it, so that the
    store holds at most one instance per tick: scope ``"none"`` appends a
    random suffix, so it cannot be scheduled. ``"workflow"``, ``"version"``
    (one instance per tick and version) and ``"global"`` (one per tick among
    the workflows sharing the key) can.
    """
    if unique.scope != "none":
        return None
    return (
        f"workflow {workflow!r} has hx.Unique({unique.key!r}, scope='none'), which gives every "
        "start a new random id, so a tick could start twice: give it scope 'workflow' "
        "(or 'version' or 'global') to schedule it"
    )


def tick_value(moment: float) -> str:
    """Return the business value of the tick at ``moment``: its UTC time, ``20261201T081500Z``.

    Fractions of a second are dropped (cron ticks are whole seconds).
    """
    seconds = math.floor(moment)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    year, month, day = _civil_from_days(days)
    return f"{year:04d}{month:02d}{day:02d}T{hours:02d}{minutes:02d}{secs:02d}Z"


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """The proleptic Gregorian (year, month, day) ``days`` after 1970-01-01 (H. Hinnant)."""
    z = days + 719_468
    era = (z if z >= 0 else z - 146_096) // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return year, month, day


def record_id(name: str) -> str:
    """The id of the record that keeps the progress of the schedule called ``name``."""
    return f"{RECORD_PREFIX}{name}"


def new_record(
    name: str, *, workflow: str, cron: str, through: float, now: float, previous_revision: int = 0
) -> Instance:
    """Return the record of schedule ``name``, dealt with up to ``through``, written at ``now``.

    ``previous_revision`` is the revision of the stored record it replaces (0 for none).
    """
    return Instance(
        id=record_id(name),
        workflow=RECORD_WORKFLOW,
        version=1,
        status=Status.COMPLETED,
        metadata={"schedule": name, "workflow": workflow, "cron": cron, "through": through},
        created_at=now,
        updated_at=now,
        revision=previous_revision + 1,
    )


def advanced(record: Instance, *, through: float, now: float) -> Instance:
    """Return ``record`` dealt with up to ``through`` (or more, if it was), written at ``now``."""
    stored = record_through(record)
    metadata = dict(record.metadata)
    metadata["through"] = through if stored is None else max(stored, through)
    return msgspec.structs.replace(
        record, metadata=metadata, updated_at=now, revision=record.revision + 1
    )


def record_through(record: Instance) -> float | None:
    """The moment up to which ``record`` says every tick was dealt with, or None if it does not.

    A record that is not a schedule's (wrong workflow, no finite ``through``)
    says nothing: its schedule starts again as if seen for the first time.
    """
    if record.workflow != RECORD_WORKFLOW:
        return None
    through: object = record.metadata.get("through")
    if seconds_problem(through, "through") is not None:  # an epoch moment: seconds since 1970
        return None
    assert isinstance(through, int | float)
    return float(through)


def is_record(instance: Instance) -> bool:
    """Whether ``instance`` is a schedule's record rather than a workflow's instance."""
    return instance.workflow == RECORD_WORKFLOW and instance.id.startswith(RECORD_PREFIX)
