"""A shop that charges cards, for the operations guide.

    python shop.py order 1001 1002   take orders (and run them until they settle)
    python shop.py run               recover the store and finish what can finish

The card gateway is "down" unless the environment says GATEWAY=up, so orders
fail at their charge step until it is back.
"""

import os
import sys

import trio

import hephaestus as hx


@hx.step(events=("reserved",))
async def reserve(ctx: hx.StepContext) -> hx.StepResult:
    return hx.Emit("reserved", {"shelf": "B4"})


@hx.step(events=("charged",), retry=hx.Retry(max_attempts=2, initial=0.1))
async def charge(ctx: hx.StepContext) -> hx.StepResult:
    if os.environ.get("GATEWAY") != "up":
        raise ConnectionError("the card gateway is down")
    return hx.Emit("charged", {"payment_id": f"pay-{ctx.instance_id}"})


@hx.step(events=("shipped",))
async def ship(ctx: hx.StepContext) -> hx.StepResult:
    return hx.Emit("shipped", {"parcel": ctx.results["reserve"]["shelf"] + "-1"})


shop = hx.Workflow(
    "shop",
    start=reserve,
    transitions={
        (reserve, "reserved"): charge,
        (charge, "charged"): ship,
        (ship, "shipped"): hx.Done,
    },
    unique=hx.Unique("order"),
)

ACTIVE = (hx.Status.PENDING, hx.Status.RUNNING, hx.Status.WAITING)


async def main(command: str, *values: str) -> None:
    async with hx.open_engine(workflows=[shop], storage=hx.FileStorage("state")) as engine:
        ids = [await engine.start(shop, value) for value in values] if command == "order" else []
        ids += [i.id for i in await engine.list(status=ACTIVE) if i.id not in ids]
        for iid in ids:
            final = await engine.wait(iid)
            error = final.error
            why = f"  {error.step}: {error.type}: {error.message}" if error else ""
            print(f"{iid}  {final.status.value}{why}")


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:])
