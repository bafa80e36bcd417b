"""Telemetry events and their dispatch to user handlers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias, final

import msgspec

_log = logging.getLogger("hephaestus.telemetry")


class TelemetryEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One thing the engine did, as handed to telemetry handlers.

    ``name`` is one of ``workflow.start|stop|exception|cancel``,
    ``step.start|stop|exception|suspend|resume|retry``, ``workflow.transition``,
    ``runner.init|crash|restart``, ``timer.fire``, ``storage.quarantine``.
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


@final
class Telemetry:
    """Sends events to handlers; a handler that raises is logged once and skipped.

    Check ``enabled`` before building an event: with no handler, emitting
    costs one attribute read.
    """

    __slots__ = ("_failed", "enabled", "handlers")

    def __init__(self, handlers: Iterable[TelemetryHandler] = ()) -> None:
        self.handlers: tuple[TelemetryHandler, ...] = tuple(handlers)
        for handler in self.handlers:
            if not callable(handler):
                raise TypeError(f"telemetry handler {handler!r} is not callable")
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
        """Hand one event to every handler. Never raises because of a handler."""
        if not self.enabled:
            return
        event = TelemetryEvent(
            name=name,
            instance_id=instance_id,
            workflow=workflow,
            step=step,
            measurements=measurements or {},
            metadata=metadata or {},
        )
        for handler in self.handlers:
            try:
                handler(event)
            except Exception:
                if id(handler) not in self._failed:
                    self._failed.add(id(handler))
                    _log.exception(
                        "telemetry handler %r raised; further errors from it are not logged",
                        handler,
                    )


@final
class LogHandler:
    """Writes one structured line per telemetry event through stdlib logging (in progress)."""

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger or logging.getLogger("hephaestus")
        self.level = level

    def __call__(self, event: TelemetryEvent) -> None:
        self.logger.log(self.level, "%s %s", event.instance_id, event.name)
