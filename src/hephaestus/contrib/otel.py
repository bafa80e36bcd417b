"""OpenTelemetry bridge: workflow and step spans from hephaestus telemetry events.

Usage::

    from hephaestus.contrib.otel import OTelHandler

    async with hx.open_engine(workflows=[order], telemetry=[OTelHandler()]) as engine:
        ...

Each instance becomes one trace: a ``workflow <name>`` span from
``workflow.start`` to ``workflow.stop`` / ``workflow.exception`` /
``workflow.cancel``, with a child ``step <key>`` span per step attempt, from
``step.start`` to ``step.stop`` / ``step.exception`` / ``step.suspend``. The
other events (transitions, retries, resumes, timers, runner restarts) become
span events on the workflow span. Needs ``pip install "hephaestus-trio[otel]"``;
this is the only module that imports opentelemetry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, final

try:
    from opentelemetry import trace
    from opentelemetry.trace import Span, Status, StatusCode, TracerProvider
    from opentelemetry.util.types import AttributeValue
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "hephaestus.contrib.otel needs OpenTelemetry: pip install 'hephaestus-trio[otel]'"
    ) from exc

from .._telemetry import TelemetryEvent

__all__ = ["OTelHandler"]

_PREFIX: Final = "hephaestus."
_WORKFLOW_END: Final = {
    "workflow.stop": "completed",
    "workflow.exception": "failed",
    "workflow.cancel": "cancelled",
}
_STEP_END: Final = frozenset({"step.stop", "step.exception", "step.suspend"})
# Step events that open an instance's workflow span when it has none (the
# workflow.start happened before a crash, in an earlier process).
_STEP_EVENTS: Final = frozenset(
    {"step.start", "step.stop", "step.exception", "step.suspend", "step.resume", "step.retry"}
)
# Metadata keys describing an error; turned into exception events, not attributes.
_ERROR_KEYS: Final = frozenset({"error", "message"})


def _version() -> str | None:
    try:
        from importlib.metadata import version

        return version("hephaestus-trio")
    except Exception:  # pragma: no cover - not installed as a distribution
        return None


def _attribute(value: object) -> AttributeValue | None:
    """Convert a metadata value to an OTel attribute value (None: leave it out)."""
    if value is None:
        return None
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Sequence | set | frozenset) and not isinstance(value, bytes):
        items = list(value)
        for kind in (str, bool, int, float):
            if all(type(item) is kind for item in items):
                return items  # a homogeneous list of primitives, as OTel wants
        return [str(item) for item in items]
    return str(value)


def _error(event: TelemetryEvent) -> tuple[str, str, BaseException | None] | None:
    """Find the error an event reports: (type name, message, exception if any).

    Understands ``metadata["error"]`` as an exception, an object with ``type``
    and ``message`` (``hx.ErrorInfo``), a mapping with those keys, or a type name
    with the message in ``metadata["message"]``; a ``step.exception`` with only
    an ``event`` is a step that returned an event it did not declare.
    """
    meta = event.metadata
    error = meta.get("error")
    message = meta.get("message")
    if isinstance(error, BaseException):
        return type(error).__name__, str(error), error
    if isinstance(error, Mapping):
        return str(error.get("type", "Error")), str(error.get("message", "")), None
    if error is not None and hasattr(error, "type") and hasattr(error, "message"):
        return str(error.type), str(error.message), None
    if error is not None:
        return str(error), "" if message is None else str(message), None
    if message is not None:
        return "Error", str(message), None
    if event.name == "step.exception" and meta.get("event") is not None:
        return "UndeclaredEvent", f"the step ended with undeclared event {meta['event']!r}", None
    return None


@final
class OTelHandler:
    """Turn telemetry events into OpenTelemetry spans; pass it in ``telemetry=``.

    Args:
        tracer_provider: where spans go; defaults to the global provider
            (``opentelemetry.trace.get_tracer_provider()``).

    Spans are keyed by instance id (workflow spans) and by instance id and
    step key (step spans); each retry attempt is its own step span, with
    ``hephaestus.attempt`` set. Missing starts are handled: an end event with
    no open span records a span backdated by ``measurements["duration"]``
    (zero-length without it) and marked ``hephaestus.missing_start``; a step
    event for an instance with no workflow span (after a crash and recovery)
    opens one marked ``hephaestus.recovered``. Exceptions end spans with
    ``StatusCode.ERROR`` and an ``exception`` span event; cancellation is not
    an error. When a workflow ends, its still-open step spans are ended first.
    A ``runner.crash`` ends the instance's open step spans with an error.

    Spans stay open while an instance waits (possibly for days); call
    :meth:`close` when the engine shuts down to end every open span, marked
    ``hephaestus.unfinished``.

    Not thread-safe: use one handler per engine (events arrive on the engine's
    Trio thread).
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("hephaestus", _version(), tracer_provider=tracer_provider)
        self._workflows: dict[str, Span] = {}
        self._steps: dict[str, dict[str, Span]] = {}

    @property
    def open_spans(self) -> int:
        """How many spans are started and not yet ended."""
        return len(self._workflows) + sum(len(s) for s in self._steps.values())

    def __call__(self, event: TelemetryEvent) -> None:
        name = event.name
        iid = event.instance_id
        if iid is None:
            return  # not about one instance: nothing to attach it to
        if name == "workflow.start":
            old = self._workflows.pop(iid, None)
            if old is not None:  # started again without an end event
                self._end_steps(iid, unfinished=True)
                old.set_attribute(_PREFIX + "unfinished", True)
                old.end()
            self._workflows[iid] = self._start(f"workflow {event.workflow}", event, None)
        elif name in _WORKFLOW_END:
            self._end_workflow(event, _WORKFLOW_END[name])
        elif name == "step.start":
            self._start_step(event)
        elif name in _STEP_END:
            self._end_step(event)
        else:
            self._annotate(event)

    def close(self) -> None:
        """End every open span, marked ``hephaestus.unfinished``.

        Call it when the engine exits: instances still waiting then have
        their spans exported instead of kept in memory.
        """
        for iid in list(self._steps):
            self._end_steps(iid, unfinished=True)
        for span in self._workflows.values():
            span.set_attribute(_PREFIX + "unfinished", True)
            span.end()
        self._workflows.clear()

    # -- spans ----------------------------------------------------------------------------

    def _start(
        self, name: str, event: TelemetryEvent, parent: Span | None, start_time: int | None = None
    ) -> Span:
        context = None if parent is None else trace.set_span_in_context(parent)
        return self._tracer.start_span(
            name, context=context, attributes=self._attributes(event), start_time=start_time
        )

    def _workflow_span(self, event: TelemetryEvent, *, open_missing: bool) -> Span | None:
        assert event.instance_id is not None
        span = self._workflows.get(event.instance_id)
        if span is None and open_missing:
            span = self._start(f"workflow {event.workflow}", event, None)
            span.set_attribute(_PREFIX + "recovered", True)
            self._workflows[event.instance_id] = span
        return span

    def _start_step(self, event: TelemetryEvent) -> None:
        assert event.instance_id is not None
        parent = self._workflow_span(event, open_missing=True)
        steps = self._steps.setdefault(event.instance_id, {})
        key = event.step or ""
        old = steps.pop(key, None)
        if old is not None:  # started again (a re-run after a runner crash)
            old.set_attribute(_PREFIX + "unfinished", True)
            old.end()
        steps[key] = self._start(f"step {event.step}", event, parent)

    def _end_step(self, event: TelemetryEvent) -> None:
        assert event.instance_id is not None
        steps = self._steps.get(event.instance_id)
        span = None if steps is None else steps.pop(event.step or "", None)
        if steps is not None and not steps:
            del self._steps[event.instance_id]
        if span is None:
            parent = self._workflow_span(event, open_missing=True)
            span = self._start_missing(f"step {event.step}", event, parent)
        else:
            span.set_attributes(self._attributes(event))
        if event.name == "step.exception":
            self._fail(span, event)
        elif event.name == "step.suspend":
            span.set_attribute(_PREFIX + "suspended", True)
        span.end()

    def _end_workflow(self, event: TelemetryEvent, status: str) -> None:
        assert event.instance_id is not None
        self._end_steps(event.instance_id, unfinished=True)
        span = self._workflows.pop(event.instance_id, None)
        if span is None:
            span = self._start_missing(f"workflow {event.workflow}", event, None)
        else:
            span.set_attributes(self._attributes(event))
        span.set_attribute(_PREFIX + "status", status)
        if status == "failed":
            self._fail(span, event)
        span.end()

    def _end_steps(self, iid: str, *, unfinished: bool, error: str | None = None) -> None:
        for span in self._steps.pop(iid, {}).values():
            if unfinished:
                span.set_attribute(_PREFIX + "unfinished", True)
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end()

    def _start_missing(self, name: str, event: TelemetryEvent, parent: Span | None) -> Span:
        duration = event.measurements.get("duration", 0.0)
        start = time.time_ns() - max(0, int(duration * 1e9))
        span = self._start(name, event, parent, start_time=start)
        span.set_attribute(_PREFIX + "missing_start", True)
        return span

    def _annotate(self, event: TelemetryEvent) -> None:
        span = self._workflow_span(event, open_missing=event.name in _STEP_EVENTS)
        if event.name == "runner.crash":
            assert event.instance_id is not None
            self._end_steps(event.instance_id, unfinished=True, error="runner crashed")
        if span is not None:
            span.add_event(event.name, self._attributes(event))

    @staticmethod
    def _fail(span: Span, event: TelemetryEvent) -> None:
        found = _error(event)
        if found is None:
            span.set_status(Status(StatusCode.ERROR, event.name))
            return
        type_name, message, exc = found
        description = f"{type_name}: {message}" if message else type_name
        span.set_status(Status(StatusCode.ERROR, description))
        if exc is not None:
            span.record_exception(exc)
        else:
            span.add_event("exception", {"exception.type": type_name, "exception.message": message})

    @staticmethod
    def _attributes(event: TelemetryEvent) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {}
        if event.instance_id is not None:
            attributes[_PREFIX + "instance_id"] = event.instance_id
        if event.workflow is not None:
            attributes[_PREFIX + "workflow"] = event.workflow
        if event.step is not None:
            attributes[_PREFIX + "step"] = event.step
        items: list[tuple[str, Any]] = [*event.measurements.items(), *event.metadata.items()]
        for key, value in items:
            if key in _ERROR_KEYS:
                continue
            converted = _attribute(value)
            if converted is not None:
                attributes[_PREFIX + key] = converted
        return attributes
