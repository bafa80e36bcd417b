"""Telemetry events, their dispatch to user handlers, and the stdlib-logging handler.

The runtime owns one :class:`Telemetry` and calls ``emit`` at every point
worth observing (docs/telemetry.md lists them). Handlers are plain, synchronous
callables; they run inline in the instance's runner, so they must be quick and
must not block. A handler that raises is logged once and never disturbs an
instance.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias, final

import msgspec

_log = logging.getLogger("hephaestus.telemetry")


class TelemetryEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One thing the engine did, as handed to telemetry handlers.

    ``name`` is one of ``workflow.start|stop|exception|cancel``,
    ``step.start|stop|exception|suspend|resume|retry``, ``workflow.transition``,
    ``runner.init|crash|restart|skip``, ``timer.fire``, ``storage.error|quarantine``;
    with shared storage ``engine.claim|takeover|lease`` and ``runner.drop``.
    ``measurements`` holds numbers (durations in seconds as float, from
    ``trio.current_time()``); ``metadata`` holds the rest (version, event,
    targets, attempt, error, ...).
    """

    name: str
    instance_id: str | None = None
    workflow: str | None = None
    step: str | None = None
    measurements: Mapping[str, float] = {}
    metadata: Mapping[str, Any] = {}


TelemetryHandler: TypeAlias = Callable[[TelemetryEvent], object]


def _is_async(handler: object) -> bool:
    call = getattr(type(handler), "__call__", None)  # noqa: B004 - we want the type's method
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


@final
class Telemetry:
    """Sends events to handlers; a handler that raises is logged once and skipped.

    Check ``enabled`` before building an expensive event: with no handler,
    ``emit`` returns after one attribute read.

    Raises:
        TypeError: at construction, for a handler that is not callable or is
            an ``async`` function (handlers are called synchronously, inline).
    """

    __slots__ = ("_failed", "enabled", "handlers")

    def __init__(self, handlers: Iterable[TelemetryHandler] = ()) -> None:
        self.handlers: tuple[TelemetryHandler, ...] = tuple(handlers)
        for handler in self.handlers:
            if not callable(handler):
                raise TypeError(
                    f"telemetry handler {handler!r} is not callable; pass functions or "
                    "objects with __call__(event), e.g. telemetry=[hx.LogHandler()]"
                )
            if _is_async(handler):
                raise TypeError(
                    f"telemetry handler {handler!r} is async; handlers are called "
                    "synchronously, so make it a plain function (hand the event to a "
                    "memory channel with send_nowait if you need async work)"
                )
        self.enabled = bool(self.handlers)
        self._failed: set[int] = set()

    def emit(
        self,
        name: str,
        *,
        instance_id: str | None = None,
        workflow: str | None = None,
        step: str | None = None,
        measurements: Mapping[str, float] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Hand one event to every handler. Never raises because of a handler.

        ``Exception`` from a handler is caught; ``BaseException`` (trio's
        ``Cancelled``, ``KeyboardInterrupt``) propagates as it should.
        """
        if not self.enabled:
            return
        event = TelemetryEvent(
            name=name,
            instance_id=instance_id,
            workflow=workflow,
            step=step,
            measurements={} if measurements is None else measurements,
            metadata={} if metadata is None else metadata,
        )
        for handler in self.handlers:
            try:
                handler(event)
            except Exception:
                self._handler_failed(handler)

    def _handler_failed(self, handler: TelemetryHandler) -> None:
        # Called from inside the except block, so _log.exception sees the error.
        if id(handler) not in self._failed:
            self._failed.add(id(handler))
            _log.exception(
                "telemetry handler %r raised; further errors from it are not logged",
                handler,
            )


# --- LogHandler ----------------------------------------------------------------------------

# Events that are logged at least at this level, whatever LogHandler's ``level``.
_ESCALATE: dict[str, int] = {
    "step.exception": logging.WARNING,  # one attempt failed; a retry may follow
    "runner.restart": logging.WARNING,  # the supervisor recovered from a crash
    "workflow.exception": logging.ERROR,  # the instance is FAILED
    "runner.crash": logging.ERROR,  # an engine bug
    "storage.error": logging.ERROR,  # a failed read or write (retried or failed to a caller)
    "storage.quarantine": logging.ERROR,  # a snapshot was unreadable
}

# Strings made of these characters are written bare; anything else is quoted.
_bare = re.compile(r"[A-Za-z0-9_.:/@+\-]+").fullmatch


def _fmt(value: object) -> str:
    """Render one value for a ``key=value`` pair (logfmt-like, never ambiguous)."""
    if type(value) is str:  # the common cases first, by exact type: this runs per field
        return value if _bare(value) else json.dumps(value, ensure_ascii=False)
    if type(value) is int or type(value) is float:
        return repr(value)
    if isinstance(value, str):  # a str enum such as hx.Status: its value, not its repr
        return _fmt(str.__str__(value))
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, BaseException):
        return _fmt(f"{type(value).__name__}: {value}")
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_fmt(v)}" for k, v in value.items()) + "}"
    return _fmt(str(value))


def format_event(event: TelemetryEvent) -> str:
    """Render an event as the one-line text :class:`LogHandler` writes.

    ``<instance id> <event name> step=<step> duration=<seconds>s workflow=<name>``
    followed by the other measurements and the metadata as ``key=value``.
    Parts whose value is None are left out; a missing instance id is ``-``.
    """
    parts = [event.instance_id or "-", event.name]
    if event.step is not None:
        parts.append(f"step={_fmt(event.step)}")
    measurements = event.measurements
    duration = measurements.get("duration")
    if duration is not None:
        parts.append(f"duration={duration:.6f}s")
    if event.workflow is not None:
        parts.append(f"workflow={_fmt(event.workflow)}")
    for key, value in measurements.items():
        if key != "duration":
            parts.append(f"{key}={_fmt(value)}")
    shown = {"step": event.step, "workflow": event.workflow, "instance_id": event.instance_id}
    for key, value in event.metadata.items():
        if value is None or (key in shown and value == shown[key]):
            continue  # nothing to say, or already written as a field
        parts.append(f"{key}={_fmt(value)}")
    return " ".join(parts)


@final
class LogHandler:
    """Write one structured line per telemetry event through stdlib :mod:`logging`.

    The line reads ``<instance id> <event> step=... duration=...s workflow=...``
    then the other metadata as ``key=value`` (see :func:`format_event`). The
    same fields are attached to the ``LogRecord`` as ``record.hephaestus``, a
    dict with ``event``, ``instance_id``, ``workflow``, ``step``,
    ``measurements`` and ``metadata``, for JSON formatters.

    Args:
        logger: a ``logging.Logger`` or a logger name; defaults to
            ``"hephaestus.events"``.
        level: the level for ordinary events.
        escalate: when true (the default), failures are never logged below
            their own floor: ``step.exception`` and ``runner.restart`` at least
            at WARNING, ``workflow.exception``, ``runner.crash``,
            ``storage.error`` and ``storage.quarantine`` at least at ERROR. With ``escalate=False``
            every event is logged at ``level``.

    Building the line is skipped when the logger is not enabled for the level.
    """

    __slots__ = ("escalate", "level", "logger")

    def __init__(
        self,
        logger: logging.Logger | str | None = None,
        level: int = logging.INFO,
        *,
        escalate: bool = True,
    ) -> None:
        if logger is None or isinstance(logger, str):
            logger = logging.getLogger(logger or "hephaestus.events")
        self.logger = logger
        self.level = level
        self.escalate = escalate

    def __call__(self, event: TelemetryEvent) -> None:
        level = self.level
        if self.escalate:
            floor = _ESCALATE.get(event.name)
            if floor is not None and floor > level:
                level = floor
        logger = self.logger
        if not logger.isEnabledFor(level):
            return
        measurements, metadata = event.measurements, event.metadata
        fields = {
            "event": event.name,
            "instance_id": event.instance_id,
            "workflow": event.workflow,
            "step": event.step,
            # plain dicts for JSON formatters (the runtime already passes dicts)
            "measurements": measurements if type(measurements) is dict else dict(measurements),
            "metadata": metadata if type(metadata) is dict else dict(metadata),
        }
        logger.log(level, format_event(event), extra={"hephaestus": fields})

    def __repr__(self) -> str:
        return (
            f"LogHandler(logger={self.logger.name!r}, "
            f"level={logging.getLevelName(self.level)}, escalate={self.escalate})"
        )
