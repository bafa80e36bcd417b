"""Example workflows for the harness tests: an order with a payment provider and a webhook.

``order`` is correct: its ``charge`` step passes the instance id as the
provider's idempotency key, so running it again after a crash charges once.
``broken_order`` is the same graph with a ``charge`` step that forgets the
key: a re-run after a crash charges the customer a second time (and gets a
second charge id back). The harness must catch that.
"""

from __future__ import annotations

from typing import Any

import trio

import hephaestus as hx


class FakeProvider:
    """A payment provider: charges, each with a new id, deduplicated by idempotency key."""

    def __init__(self) -> None:
        self.charges: list[tuple[str, int, str]] = []  # (order id, amount, charge id)
        self.by_key: dict[str, str] = {}

    def reset(self) -> None:
        self.charges.clear()
        self.by_key.clear()

    def charge(self, order: str, amount: int, idempotency_key: str | None = None) -> str:
        if idempotency_key is not None and idempotency_key in self.by_key:
            return self.by_key[idempotency_key]
        charge_id = f"ch_{len(self.charges) + 1}"
        self.charges.append((order, amount, charge_id))
        if idempotency_key is not None:
            self.by_key[idempotency_key] = charge_id
        return charge_id

    def times_charged(self, order: str) -> int:
        return sum(1 for charged, _, _ in self.charges if charged == order)


PROVIDER = FakeProvider()


@hx.step(events=("valid", "invalid"))
async def validate(ctx: hx.StepContext) -> hx.StepResult:
    return "valid" if ctx.initial.get("amount", 0) > 0 else "invalid"


@hx.step(events=("approved", "declined"), retry=hx.Retry(max_attempts=3, initial=2.0))
async def request_payment(ctx: hx.StepContext) -> hx.StepResult:
    """Ask the provider to authorise the amount (the real code: approves up to 1000)."""
    await trio.sleep(0.5)  # the provider's round trip
    return "approved" if ctx.initial["amount"] <= 1000 else "declined"


await_payment = hx.WaitForEvent("paid", key="await_payment", timeout=3600)
"""The provider's webhook: the customer confirmed the payment (or an hour passed)."""


@hx.step(events=("charged",))
async def charge(ctx: hx.StepContext) -> hx.StepResult:
    """Capture the payment, idempotently: the instance id is the idempotency key."""
    charge_id = PROVIDER.charge(
        ctx.instance_id, ctx.initial["amount"], idempotency_key=ctx.instance_id
    )
    await trio.lowlevel.checkpoint()
    return hx.Emit("charged", {"charge_id": charge_id})


@hx.step(events=("charged",), key="charge")
async def charge_without_key(ctx: hx.StepContext) -> hx.StepResult:
    """The bug: no idempotency key, so a re-run after a crash charges again."""
    charge_id = PROVIDER.charge(ctx.instance_id, ctx.initial["amount"])
    await trio.lowlevel.checkpoint()
    return hx.Emit("charged", {"charge_id": charge_id})


@hx.step(events=("shipped",))
async def ship(ctx: hx.StepContext) -> hx.StepResult:
    return hx.Emit("shipped", {"parcel": f"parcel-{ctx.instance_id}"})


@hx.step(events=("cancelled",))
async def cancel_order(ctx: hx.StepContext) -> hx.StepResult:
    return hx.Emit("cancelled", metadata={"cancelled": True})


def make_order(charge_step: hx.Step, name: str = "order") -> hx.Workflow:
    return hx.Workflow(
        name,
        start=validate,
        transitions={
            (validate, "valid"): request_payment,
            (validate, "invalid"): cancel_order,
            (request_payment, "approved"): await_payment,
            (request_payment, "declined"): cancel_order,
            (await_payment, "paid"): charge_step,
            (await_payment, "timeout"): cancel_order,
            (charge_step, "charged"): ship,
            (ship, "shipped"): hx.Done,
            (cancel_order, "cancelled"): hx.Done,
        },
        unique=hx.Unique("orderid"),
    )


order = make_order(charge)
broken_order = make_order(charge_without_key)


# --- a fan-out / fan-in workflow with a Route, a durable wait and retries ---------------------


@hx.step(events=("ok",))
async def prepare(ctx: hx.StepContext) -> hx.StepResult:
    return hx.Emit("ok", {"items": ctx.initial.get("items", 1)})


@hx.step(events=("reserved", "out_of_stock"), retry=hx.Retry(max_attempts=2, initial=1.0))
async def reserve(ctx: hx.StepContext) -> hx.StepResult:
    return "reserved"


@hx.step(events=("packed",))
async def pack(ctx: hx.StepContext) -> hx.StepResult:
    await trio.sleep(1)
    return "packed"


cool_down = hx.Wait(600, key="cool_down")


@hx.step(events=("sent",))
async def send_big(ctx: hx.StepContext) -> hx.StepResult:
    return hx.Emit("sent", {"by": "truck"})


@hx.step(events=("sent",))
async def send_small(ctx: hx.StepContext) -> hx.StepResult:
    return hx.Emit("sent", {"by": "post"})


def _by_size(ctx: hx.StepContext) -> Any:
    return send_big if ctx.initial.get("items", 1) > 10 else send_small


@hx.step(events=("closed",))
async def close(ctx: hx.StepContext) -> hx.StepResult:
    return "closed"


warehouse = hx.Workflow(
    "warehouse",
    start=prepare,
    transitions={
        (prepare, "ok"): [reserve, pack],
        (reserve, "reserved"): cool_down,
        (reserve, "out_of_stock"): close,
        (pack, "packed"): close,
        (cool_down, "timeout"): hx.Route(_by_size, [send_big, send_small]),
        (send_big, "sent"): close,
        (send_small, "sent"): close,
        (close, "closed"): hx.Done,
    },
    unique=hx.Unique("shipment"),
)
