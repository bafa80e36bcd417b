"""The OpenTelemetry bridge, against the SDK's in-memory exporter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from hephaestus._telemetry import Telemetry, TelemetryEvent
from hephaestus.contrib.otel import OTelHandler

IID = "orderid::abc123"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture
def handler(exporter: InMemorySpanExporter) -> OTelHandler:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OTelHandler(tracer_provider=provider)


def ev(name: str, step: str | None = None, iid: str | None = IID, **kw: Any) -> TelemetryEvent:
    return TelemetryEvent(
        name=name,
        instance_id=iid,
        workflow="order",
        step=step,
        measurements=kw.pop("measurements", {}),
        metadata={"version": 1, **kw},
    )


def spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    finished = exporter.get_finished_spans()
    by_name = {span.name: span for span in finished}
    assert len(by_name) == len(finished), [s.name for s in finished]
    return by_name


def test_workflow_and_step_spans(handler: OTelHandler, exporter: InMemorySpanExporter) -> None:
    handler(ev("workflow.start"))
    handler(ev("step.start", "validate", attempt=1))
    handler(ev("step.stop", "validate", event="valid", attempt=1, measurements={"duration": 0.01}))
    handler(ev("workflow.transition", targets=["charge", "reserve"], status="running"))
    handler(ev("step.start", "charge", attempt=1))
    handler(ev("step.start", "reserve", attempt=1))
    handler(ev("step.stop", "reserve", event="reserved", attempt=1))
    handler(ev("step.stop", "charge", event="charged", attempt=1))
    assert handler.open_spans == 1
    handler(ev("workflow.stop", status="completed", error=None))
    assert handler.open_spans == 0

    by_name = spans(exporter)
    assert set(by_name) == {"workflow order", "step validate", "step charge", "step reserve"}
    root = by_name["workflow order"]
    assert root.parent is None
    for key in ("validate", "charge", "reserve"):
        span = by_name[f"step {key}"]
        assert span.parent is not None
        assert span.parent.span_id == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
        assert span.status.status_code is StatusCode.UNSET
        assert span.attributes is not None
        assert span.attributes["hephaestus.step"] == key
        assert span.attributes["hephaestus.instance_id"] == IID
        assert span.attributes["hephaestus.attempt"] == 1
    assert by_name["step charge"].attributes == {
        "hephaestus.instance_id": IID,
        "hephaestus.workflow": "order",
        "hephaestus.step": "charge",
        "hephaestus.version": 1,
        "hephaestus.attempt": 1,
        "hephaestus.event": "charged",
    }
    assert by_name["step validate"].attributes["hephaestus.duration"] == 0.01  # type: ignore[index]
    assert root.attributes is not None
    assert root.attributes["hephaestus.status"] == "completed"
    assert root.status.status_code is StatusCode.UNSET
    (transition,) = root.events
    assert transition.name == "workflow.transition"
    assert transition.attributes is not None
    assert tuple(transition.attributes["hephaestus.targets"]) == ("charge", "reserve")  # type: ignore[arg-type]


def test_instances_get_separate_traces(
    handler: OTelHandler, exporter: InMemorySpanExporter
) -> None:
    for iid in ("orderid::1", "orderid::2"):
        handler(ev("workflow.start", iid=iid))
        handler(ev("step.start", "charge", iid=iid))
    for iid in ("orderid::2", "orderid::1"):
        handler(ev("step.stop", "charge", iid=iid, event="charged"))
        handler(ev("workflow.stop", iid=iid))
    finished = exporter.get_finished_spans()
    assert len(finished) == 4
    traces: dict[int, set[str]] = {}
    for span in finished:
        assert span.attributes is not None
        instance_id = span.attributes["hephaestus.instance_id"]
        assert isinstance(instance_id, str)
        traces.setdefault(span.context.trace_id, set()).add(f"{instance_id} {span.name}")
    assert sorted(map(sorted, traces.values())) == [
        ["orderid::1 step charge", "orderid::1 workflow order"],
        ["orderid::2 step charge", "orderid::2 workflow order"],
    ]


def test_step_exception_and_retry(handler: OTelHandler, exporter: InMemorySpanExporter) -> None:
    handler(ev("workflow.start"))
    handler(ev("step.start", "charge", attempt=1))
    handler(ev("step.exception", "charge", attempt=1, error="ValueError", message="card declined"))
    handler(ev("step.retry", "charge", attempt=2, deadline=1234.5))
    handler(ev("step.start", "charge", attempt=2))
    handler(ev("step.stop", "charge", attempt=2, event="charged"))
    handler(ev("workflow.stop"))

    finished = exporter.get_finished_spans()
    attempts = [s for s in finished if s.name == "step charge"]
    assert [s.attributes["hephaestus.attempt"] for s in attempts] == [1, 2]  # type: ignore[index]
    failed, ok = attempts
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: card declined"
    (exception,) = failed.events
    assert exception.name == "exception"
    assert dict(exception.attributes or {}) == {
        "exception.type": "ValueError",
        "exception.message": "card declined",
    }
    assert failed.attributes is not None
    assert "hephaestus.error" not in failed.attributes
    assert ok.status.status_code is StatusCode.UNSET
    root = next(s for s in finished if s.name == "workflow order")
    assert [e.name for e in root.events] == ["step.retry"]


def test_workflow_exception_ends_open_steps_and_records_the_error(
    handler: OTelHandler, exporter: InMemorySpanExporter
) -> None:
    handler(ev("workflow.start"))
    handler(ev("step.start", "charge"))
    handler(ev("step.start", "reserve"))
    handler(ev("step.exception", "charge", error=RuntimeError("gateway down")))
    handler(ev("workflow.exception", status="failed", error="RuntimeError"))
    assert handler.open_spans == 0

    by_name = spans(exporter)
    charge = by_name["step charge"]
    assert charge.status.status_code is StatusCode.ERROR
    assert charge.status.description == "RuntimeError: gateway down"
    (recorded,) = charge.events
    assert recorded.name == "exception"
    assert recorded.attributes is not None
    assert recorded.attributes["exception.type"] == "RuntimeError"
    # the sibling cancelled by fail-fast is ended, not leaked
    reserve = by_name["step reserve"]
    assert reserve.attributes is not None
    assert reserve.attributes["hephaestus.unfinished"] is True
    root = by_name["workflow order"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "RuntimeError"
    assert root.attributes is not None
    assert root.attributes["hephaestus.status"] == "failed"


def test_error_info_objects_and_mappings_are_understood(
    handler: OTelHandler, exporter: InMemorySpanExporter
) -> None:
    import hephaestus as hx

    info = hx.ErrorInfo(step="charge", type="StepTimeout", message="took too long", attempts=3)
    handler(ev("workflow.start"))
    handler(ev("step.start", "charge"))
    handler(ev("step.exception", "charge", error={"type": "KeyError", "message": "'sku'"}))
    handler(ev("workflow.exception", error=info))
    by_name = spans(exporter)
    assert by_name["step charge"].status.description == "KeyError: 'sku'"
    assert by_name["workflow order"].status.description == "StepTimeout: took too long"


def test_undeclared_event_and_unknown_errors(
    handler: OTelHandler, exporter: InMemorySpanExporter
) -> None:
    handler(ev("workflow.start"))
    handler(ev("step.start", "charge"))
    handler(ev("step.exception", "charge", event="oops"))
    handler(ev("step.start", "reserve"))
    handler(ev("step.exception", "reserve"))
    handler(ev("workflow.exception"))
    by_name = spans(exporter)
    charge = by_name["step charge"]
    assert charge.status.description == (
        "UndeclaredEvent: the step ended with undeclared event 'oops'"
    )
    assert by_name["step reserve"].status.status_code is StatusCode.ERROR
    assert by_name["step reserve"].status.description == "step.exception"
    assert by_name["workflow order"].status.status_code is StatusCode.ERROR


def test_cancel_is_not_an_error(handler: OTelHandler, exporter: InMemorySpanExporter) -> None:
    handler(ev("workflow.start"))
    handler(ev("step.start", "ship"))
    handler(ev("workflow.cancel", status="cancelled", reason="customer asked"))
    by_name = spans(exporter)
    root = by_name["workflow order"]
    assert root.status.status_code is StatusCode.UNSET
    assert root.attributes is not None
    assert root.attributes["hephaestus.status"] == "cancelled"
    assert root.attributes["hephaestus.reason"] == "customer asked"
    assert by_name["step ship"].attributes["hephaestus.unfinished"] is True  # type: ignore[index]


def test_suspend_ends_the_step_span_and_resume_is_an_event(
    handler: OTelHandler, exporter: InMemorySpanExporter
) -> None:
    handler(ev("workflow.start"))
    handler(ev("step.start", "await_payment"))
    handler(ev("step.suspend", "await_payment", timeout=60.0))
    assert handler.open_spans == 1
    handler(ev("step.resume", "await_payment", event="paid"))
    handler(ev("timer.fire", timer="t1"))
    handler(ev("workflow.stop"))
    by_name = spans(exporter)
    step = by_name["step await_payment"]
    assert step.attributes is not None
    assert step.attributes["hephaestus.suspended"] is True
    assert step.attributes["hephaestus.timeout"] == 60.0
    assert [e.name for e in by_name["workflow order"].events] == ["step.resume", "timer.fire"]


def test_missing_starts_are_handled(handler: OTelHandler, exporter: InMemorySpanExporter) -> None:
    # a step ends whose start was emitted by an earlier process (crash, recovery)
    handler(ev("step.stop", "charge", event="charged", measurements={"duration": 2.0}))
    handler(ev("workflow.stop", measurements={"duration": 5.0}))
    # a workflow ends with nothing open at all
    handler(ev("workflow.exception", iid="orderid::other", error="ValueError"))
    finished = exporter.get_finished_spans()
    assert len(finished) == 3
    step, root, other = finished
    assert step.name == "step charge"
    assert step.attributes is not None
    assert step.attributes["hephaestus.missing_start"] is True
    assert step.end_time is not None
    assert step.start_time is not None
    assert step.end_time - step.start_time >= 2_000_000_000
    # the step opened a workflow span for the recovered instance...
    assert root.name == "workflow order"
    assert root.attributes is not None
    assert root.attributes["hephaestus.recovered"] is True
    assert step.parent is not None
    assert step.parent.span_id == root.context.span_id
    # ...and a terminal event with no span at all still records the outcome
    assert other.attributes is not None
    assert other.attributes["hephaestus.missing_start"] is True
    assert other.status.status_code is StatusCode.ERROR
    assert handler.open_spans == 0


def test_restarted_step_and_workflow_end_the_stale_spans(
    handler: OTelHandler, exporter: InMemorySpanExporter
) -> None:
    handler(ev("workflow.start"))
    handler(ev("step.start", "charge", attempt=1))
    handler(ev("runner.crash", error="OSError", message="disk full"))
    handler(ev("runner.restart"))
    handler(ev("step.start", "charge", attempt=1))  # re-run: at-least-once
    handler(ev("step.start", "charge", attempt=1))  # and again, with no crash event
    assert handler.open_spans == 2
    handler(ev("workflow.start"))  # started again with no end event
    assert handler.open_spans == 1
    finished = exporter.get_finished_spans()
    assert [s.name for s in finished] == [
        "step charge",
        "step charge",
        "step charge",
        "workflow order",
    ]
    crashed = finished[0]
    assert crashed.status.status_code is StatusCode.ERROR
    assert crashed.status.description == "runner crashed"
    for span in finished:
        assert span.attributes is not None
        assert span.attributes["hephaestus.unfinished"] is True
    assert [e.name for e in finished[3].events] == ["runner.crash", "runner.restart"]


def test_close_ends_every_open_span(handler: OTelHandler, exporter: InMemorySpanExporter) -> None:
    handler(ev("workflow.start", iid="orderid::1"))
    handler(ev("step.start", "wait", iid="orderid::1"))
    handler(ev("workflow.start", iid="orderid::2"))
    assert handler.open_spans == 3
    handler.close()
    assert handler.open_spans == 0
    assert len(exporter.get_finished_spans()) == 3
    handler.close()  # idempotent
    assert len(exporter.get_finished_spans()) == 3


def test_events_without_an_instance_are_ignored(
    handler: OTelHandler, exporter: InMemorySpanExporter
) -> None:
    handler(ev("storage.quarantine", iid=None, path="x.snap"))
    handler(ev("runner.init"))  # no workflow span: nothing to annotate, nothing opened
    assert handler.open_spans == 0
    assert exporter.get_finished_spans() == ()


def test_metadata_values_become_valid_attributes(
    handler: OTelHandler, exporter: InMemorySpanExporter
) -> None:
    handler(ev("workflow.start"))
    handler(
        ev(
            "step.start",
            "charge",
            ints=[1, 2],
            mixed=[1, "a", None],
            nested={"a": 1},
            flag=True,
            nothing=None,
            blob=b"\x00",
        )
    )
    handler(ev("step.stop", "charge"))
    span = spans(exporter)["step charge"]
    assert span.attributes is not None
    assert tuple(span.attributes["hephaestus.ints"]) == (1, 2)  # type: ignore[arg-type]
    assert tuple(span.attributes["hephaestus.mixed"]) == ("1", "a", "None")  # type: ignore[arg-type]
    assert span.attributes["hephaestus.nested"] == "{'a': 1}"
    assert span.attributes["hephaestus.flag"] is True
    assert span.attributes["hephaestus.blob"] == "b'\\x00'"
    assert "hephaestus.nothing" not in span.attributes


def test_works_as_a_telemetry_handler_with_the_global_provider() -> None:
    # tracer_provider=None means the global provider; a proxy tracer that
    # creates non-recording spans until one is set. It must not fail either way.
    handler = OTelHandler()
    telemetry = Telemetry([handler])
    telemetry.emit("workflow.start", instance_id=IID, workflow="order")
    telemetry.emit("step.start", instance_id=IID, workflow="order", step="a")
    telemetry.emit("step.stop", instance_id=IID, workflow="order", step="a")
    telemetry.emit("workflow.stop", instance_id=IID, workflow="order")
    assert handler.open_spans == 0


def test_import_hephaestus_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, hephaestus, hephaestus.contrib\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_clear_error_when_opentelemetry_is_missing() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "try:\n"
        "    import hephaestus.contrib.otel\n"
        "except ImportError as exc:\n"
        "    assert 'hephaestus-trio[otel]' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('imported without opentelemetry')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_spans_from_a_real_engine_run(
    handler: OTelHandler, exporter: InMemorySpanExporter, autojump_clock: object
) -> None:
    import hephaestus as hx

    @hx.step(events=("valid",))
    async def validate(ctx: hx.StepContext) -> hx.StepResult:
        return "valid"

    @hx.step(events=("charged",), retry=hx.Retry(max_attempts=3, backoff="constant"))
    async def charge(ctx: hx.StepContext) -> hx.StepResult:
        if ctx.attempt == 1:
            raise ValueError("card declined")
        return "charged"

    @hx.step(events=("reserved",))
    async def reserve(ctx: hx.StepContext) -> hx.StepResult:
        return "reserved"

    @hx.step(events=("shipped",))
    async def ship(ctx: hx.StepContext) -> hx.StepResult:
        return "shipped"

    order = hx.Workflow(
        "order",
        start=validate,
        transitions={
            (validate, "valid"): [charge, reserve],
            (charge, "charged"): ship,
            (reserve, "reserved"): ship,
            (ship, "shipped"): hx.Done,
        },
        unique=hx.Unique("orderid"),
    )
    async with hx.open_engine(
        workflows=[order], telemetry=[handler], clock=hx.testing.VirtualClock()
    ) as engine:
        iid = await engine.start(order, "abc123")
        assert (await engine.wait(iid)).status is hx.Status.COMPLETED
    assert handler.open_spans == 0

    finished = exporter.get_finished_spans()
    (root,) = [s for s in finished if s.name == "workflow order"]
    assert root.attributes is not None
    assert root.attributes["hephaestus.instance_id"] == iid
    assert root.attributes["hephaestus.status"] == "completed"
    assert "step.retry" in [e.name for e in root.events]
    steps = [s for s in finished if s is not root]
    assert sorted(s.name for s in steps) == [
        "step charge",
        "step charge",
        "step reserve",
        "step ship",
        "step validate",
    ]
    for span in steps:
        assert span.parent is not None
        assert span.parent.span_id == root.context.span_id
    first, second = (s for s in steps if s.name == "step charge")
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "ValueError: card declined"
    assert second.status.status_code is StatusCode.UNSET
    assert second.attributes is not None
    assert second.attributes["hephaestus.attempt"] == 2
