"""open_engine refuses workflows whose ids would collide; start normalises UUID values."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import hephaestus as hx

from .helpers import clock, fan_workflow


async def test_two_workflows_sharing_a_key_under_scope_workflow_are_refused() -> None:
    orders = fan_workflow("orders", key="order")
    refunds = fan_workflow("refunds", key="order")
    with pytest.raises(hx.WorkflowDefinitionError, match="its own key"):
        async with hx.open_engine(workflows=[orders, refunds]):
            pass


async def test_one_uuid_is_one_instance(autojump_clock: Any) -> None:
    wf = fan_workflow(delay=10.0)
    value = uuid.UUID(int=12345)
    async with hx.open_engine(workflows=[wf], clock=clock()) as engine:
        iid = await engine.start(wf, str(value).upper(), {"n": 1})
        assert iid == f"fan::{value}"
        for spelling in (value.hex, "{" + str(value) + "}", f"urn:uuid:{value}"):
            with pytest.raises(hx.AlreadyRunning):
                await engine.start(wf, spelling, {"n": 1})
        assert (await engine.wait(iid)).status is hx.Status.COMPLETED
