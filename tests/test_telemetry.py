"""Telemetry dispatch and the stdlib-logging handler."""

from __future__ import annotations

import functools
import logging

import pytest

import hephaestus as hx
from hephaestus._telemetry import LogHandler, Telemetry, TelemetryEvent, format_event

# --- dispatch ------------------------------------------------------------------------------


def test_dispatches_every_event_to_every_handler_in_order() -> None:
    seen: list[tuple[str, str]] = []
    telemetry = Telemetry(
        [lambda e: seen.append(("a", e.name)), lambda e: seen.append(("b", e.name))]
    )
    assert telemetry.enabled
    telemetry.emit("workflow.start", instance_id="orderid::1", workflow="order")
    telemetry.emit("workflow.stop", instance_id="orderid::1", workflow="order")
    assert seen == [
        ("a", "workflow.start"),
        ("b", "workflow.start"),
        ("a", "workflow.stop"),
        ("b", "workflow.stop"),
    ]


def test_event_carries_what_was_emitted() -> None:
    events: list[TelemetryEvent] = []
    Telemetry([events.append]).emit(
        "step.stop",
        instance_id="orderid::1",
        workflow="order",
        step="charge",
        measurements={"duration": 0.25},
        metadata={"event": "charged", "attempt": 1},
    )
    (event,) = events
    assert event == TelemetryEvent(
        name="step.stop",
        instance_id="orderid::1",
        workflow="order",
        step="charge",
        measurements={"duration": 0.25},
        metadata={"event": "charged", "attempt": 1},
    )


def test_missing_measurements_and_metadata_are_empty_mappings() -> None:
    events: list[TelemetryEvent] = []
    Telemetry([events.append]).emit("runner.init")
    (event,) = events
    assert event.instance_id is None
    assert event.step is None
    assert dict(event.measurements) == {}
    assert dict(event.metadata) == {}


def test_public_names() -> None:
    assert hx.TelemetryEvent is TelemetryEvent
    assert hx.LogHandler is LogHandler


def test_emit_with_no_handlers_is_a_no_op(caplog: pytest.LogCaptureFixture) -> None:
    telemetry = Telemetry()
    assert not telemetry.enabled
    with caplog.at_level(logging.DEBUG):
        telemetry.emit("workflow.start", instance_id="x::1", metadata={"anything": object()})
    assert caplog.records == []


def test_raising_handler_is_logged_once_and_others_still_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def broken(event: TelemetryEvent) -> None:
        calls.append("broken")
        raise RuntimeError("handler bug")

    telemetry = Telemetry([broken, lambda e: calls.append(e.name)])
    with caplog.at_level(logging.ERROR, logger="hephaestus.telemetry"):
        for _ in range(3):
            telemetry.emit("step.start")
    # the broken handler keeps being called, and never stops the next one
    assert calls == ["broken", "step.start"] * 3
    records = [r for r in caplog.records if r.name == "hephaestus.telemetry"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert "broken" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)


def test_each_raising_handler_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    def first(event: TelemetryEvent) -> None:
        raise ValueError("one")

    def second(event: TelemetryEvent) -> None:
        raise KeyError("two")

    telemetry = Telemetry([first, second])
    with caplog.at_level(logging.ERROR, logger="hephaestus.telemetry"):
        telemetry.emit("a")
        telemetry.emit("b")
    messages = [r.getMessage() for r in caplog.records if r.name == "hephaestus.telemetry"]
    assert len(messages) == 2
    assert "first" in messages[0]
    assert "second" in messages[1]


def test_base_exceptions_from_a_handler_propagate() -> None:
    def interrupt(event: TelemetryEvent) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Telemetry([interrupt]).emit("step.start")


def test_handler_that_is_not_callable_is_rejected_at_construction() -> None:
    with pytest.raises(TypeError, match="not callable"):
        Telemetry([print, "not a handler"])  # type: ignore[list-item]


async def _async_handler(event: TelemetryEvent) -> None:
    pass


class _AsyncCallable:
    async def __call__(self, event: TelemetryEvent) -> None:
        pass


@pytest.mark.parametrize(
    "handler",
    [_async_handler, _AsyncCallable(), functools.partial(_async_handler)],
    ids=["function", "callable-object", "partial"],
)
def test_async_handler_is_rejected_at_construction(handler: object) -> None:
    with pytest.raises(TypeError, match="async"):
        Telemetry([handler])  # type: ignore[list-item]


def test_handlers_accepts_any_iterable() -> None:
    seen: list[str] = []
    telemetry = Telemetry(h for h in [lambda e: seen.append(e.name)])
    telemetry.emit("timer.fire")
    assert seen == ["timer.fire"]


# --- LogHandler ----------------------------------------------------------------------------


def _event(**kwargs: object) -> TelemetryEvent:
    defaults: dict[str, object] = {
        "name": "step.stop",
        "instance_id": "orderid::abc123",
        "workflow": "order",
        "step": "charge",
        "measurements": {"duration": 0.0125},
        "metadata": {"version": 1, "event": "charged", "attempt": 1},
    }
    defaults.update(kwargs)
    return TelemetryEvent(**defaults)  # type: ignore[arg-type]


def test_log_line_format(caplog: pytest.LogCaptureFixture) -> None:
    handler = LogHandler()
    with caplog.at_level(logging.INFO, logger="hephaestus.events"):
        handler(_event())
    (record,) = caplog.records
    assert record.name == "hephaestus.events"
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "orderid::abc123 step.stop step=charge duration=0.012500s workflow=order "
        "version=1 event=charged attempt=1"
    )


def test_log_record_carries_the_fields_for_json_formatters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="hephaestus.events"):
        LogHandler()(_event())
    (record,) = caplog.records
    assert record.hephaestus == {  # type: ignore[attr-defined]
        "event": "step.stop",
        "instance_id": "orderid::abc123",
        "workflow": "order",
        "step": "charge",
        "measurements": {"duration": 0.0125},
        "metadata": {"version": 1, "event": "charged", "attempt": 1},
    }


def test_log_line_leaves_out_what_is_missing() -> None:
    event = TelemetryEvent(name="runner.init")
    assert format_event(event) == "- runner.init"
    event = TelemetryEvent(name="workflow.start", instance_id="orderid::1", workflow="order")
    assert format_event(event) == "orderid::1 workflow.start workflow=order"


def test_log_line_quotes_values_that_need_it() -> None:
    event = _event(
        name="step.exception",
        measurements={"duration": 1.5, "backoff": 2.0},
        metadata={
            "error": "ValueError: bad input = 3",
            "targets": ["ship", "notify"],
            "payload": {"a": 1, "b": None},
            "ok": False,
            "nothing": None,
            "exc": RuntimeError("boom"),
            "step": "charge",  # same as the field: not repeated
            "workflow": "other",  # differs from the field: kept
        },
    )
    assert format_event(event) == (
        "orderid::abc123 step.exception step=charge duration=1.500000s workflow=order "
        'backoff=2.0 error="ValueError: bad input = 3" targets=[ship,notify] '
        'payload={a:1,b:null} ok=false exc="RuntimeError: boom" workflow=other'
    )


def test_log_line_writes_str_enums_by_value() -> None:
    event = TelemetryEvent(
        name="workflow.stop", instance_id="orderid::1", metadata={"status": hx.Status.COMPLETED}
    )
    assert format_event(event) == "orderid::1 workflow.stop status=completed"


def test_log_handler_accepts_a_logger_or_a_name_and_a_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mine = logging.getLogger("myapp.workflows")
    with caplog.at_level(logging.DEBUG):
        LogHandler(mine, level=logging.DEBUG)(_event())
        LogHandler("myapp.other", logging.WARNING)(_event())
    assert [(r.name, r.levelno) for r in caplog.records] == [
        ("myapp.workflows", logging.DEBUG),
        ("myapp.other", logging.WARNING),
    ]


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("step.start", logging.DEBUG),
        ("step.exception", logging.WARNING),
        ("runner.restart", logging.WARNING),
        ("workflow.exception", logging.ERROR),
        ("runner.crash", logging.ERROR),
        ("storage.quarantine", logging.ERROR),
    ],
)
def test_failures_are_escalated_whatever_the_level(
    caplog: pytest.LogCaptureFixture, name: str, level: int
) -> None:
    with caplog.at_level(logging.DEBUG, logger="hephaestus.events"):
        LogHandler(level=logging.DEBUG)(_event(name=name))
    (record,) = caplog.records
    assert record.levelno == level


def test_escalation_never_lowers_the_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="hephaestus.events"):
        LogHandler(level=logging.CRITICAL)(_event(name="step.exception"))
    assert [r.levelno for r in caplog.records] == [logging.CRITICAL]


def test_escalation_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="hephaestus.events"):
        LogHandler(level=logging.DEBUG, escalate=False)(_event(name="runner.crash"))
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_disabled_logger_writes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hephaestus.events"):
        LogHandler()(_event())  # INFO, below the threshold
        LogHandler()(_event(name="workflow.exception"))  # escalated to ERROR
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


def test_log_handler_through_telemetry(caplog: pytest.LogCaptureFixture) -> None:
    telemetry = Telemetry([LogHandler()])
    with caplog.at_level(logging.INFO, logger="hephaestus.events"):
        telemetry.emit(
            "workflow.start", instance_id="orderid::9", workflow="order", metadata={"version": 2}
        )
    assert [r.getMessage() for r in caplog.records] == [
        "orderid::9 workflow.start workflow=order version=2"
    ]


def test_log_handler_repr() -> None:
    assert repr(LogHandler()) == (
        "LogHandler(logger='hephaestus.events', level=INFO, escalate=True)"
    )


# --- with the engine -----------------------------------------------------------------------


def _linear_workflow() -> hx.Workflow:
    @hx.step(events=("valid",))
    async def validate(ctx: hx.StepContext) -> hx.StepResult:
        return "valid"

    @hx.step(events=("charged",))
    async def charge(ctx: hx.StepContext) -> hx.StepResult:
        return hx.Emit("charged", {"amount": 42})

    return hx.Workflow(
        "order",
        start=validate,
        transitions={(validate, "valid"): charge, (charge, "charged"): hx.Done},
        unique=hx.Unique("orderid"),
    )


async def test_log_handler_with_the_engine(caplog: pytest.LogCaptureFixture) -> None:
    order = _linear_workflow()
    with caplog.at_level(logging.INFO, logger="hephaestus.events"):
        async with hx.open_engine(workflows=[order], telemetry=[hx.LogHandler()]) as engine:
            iid = await engine.start(order, "abc123")
            await engine.wait(iid)
    lines = [r.getMessage() for r in caplog.records if r.name == "hephaestus.events"]
    assert lines[0].startswith("orderid::abc123 workflow.start workflow=order")
    assert lines[-1].startswith("orderid::abc123 workflow.stop duration=")
    assert all(line.startswith("orderid::abc123 ") for line in lines)
    assert any(
        line.startswith("orderid::abc123 step.stop step=charge duration=")
        and "event=charged" in line
        for line in lines
    )


async def test_raising_handler_never_breaks_a_workflow(caplog: pytest.LogCaptureFixture) -> None:
    order = _linear_workflow()
    names: list[str] = []

    def broken(event: TelemetryEvent) -> None:
        raise RuntimeError("handler bug")

    with caplog.at_level(logging.ERROR, logger="hephaestus.telemetry"):
        async with hx.open_engine(
            workflows=[order], telemetry=[broken, lambda e: names.append(e.name)]
        ) as engine:
            iid = await engine.start(order, "abc123")
            final = await engine.wait(iid)
    assert final.status is hx.Status.COMPLETED
    assert final.results == {"validate": {}, "charge": {"amount": 42}}
    assert names[0] == "workflow.start"
    assert names[-1] == "workflow.stop"
    assert len([r for r in caplog.records if r.name == "hephaestus.telemetry"]) == 1
