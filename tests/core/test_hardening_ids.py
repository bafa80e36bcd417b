"""Unique scopes as API.md says: version ids, one id per UUID, shared keys refused."""

from __future__ import annotations

import uuid

import pytest

import hephaestus as hx
from hephaestus._core._ids import build_instance_id, check_business_value
from hephaestus._core._registry import registry_problems

from .helpers import mk

U = uuid.UUID("12345678-abcd-4ef0-9234-56789abcdef0")
SPELLINGS = [
    str(U),
    str(U).upper(),
    U.hex,
    U.hex.upper(),
    "{" + str(U) + "}",
    "urn:uuid:" + str(U),
    "{" + str(U).upper() + "}",
]


def test_one_uuid_gives_one_id_however_it_is_spelled() -> None:
    ids = {build_instance_id(hx.Unique("order"), spelling) for spelling in SPELLINGS}
    assert ids == {f"order::{U}"}
    assert {check_business_value(s) for s in SPELLINGS} == {str(U)}


def test_version_scope_ids_carry_the_version() -> None:
    unique = hx.Unique("order", scope="version")
    assert build_instance_id(unique, "abc", version=3) == "order::abc::v3"
    assert build_instance_id(unique, U.hex, version=1) == f"order::{U}::v1"
    with pytest.raises(ValueError, match="version"):
        build_instance_id(unique, "abc")


@pytest.mark.parametrize("value", ["\ud800", "ab\udfffcd", "\ud800" * 32, "x" * 200])
def test_lone_surrogates_and_other_junk_are_invalid_business_keys(value: str) -> None:
    with pytest.raises(hx.InvalidBusinessKey) as info:
        check_business_value(value)
    assert len(str(info.value)) < 400
    str(info.value).encode("utf-8")  # the message itself is printable


@pytest.mark.parametrize("key", ["Order", "order-id", "", "order_id", 5])
def test_a_malformed_unique_key_is_a_definition_error(key: object) -> None:
    with pytest.raises(hx.WorkflowDefinitionError, match=r"\[a-z0-9\]\+") as info:
        hx.Unique(key)  # type: ignore[arg-type]
    assert not isinstance(info.value, hx.InvalidBusinessKey)


def _wf(name: str, key: str, scope: str = "workflow", version: int = 1) -> hx.Workflow:
    a = mk("a")
    return hx.Workflow(
        name,
        start=a,
        transitions={(a, "ok"): hx.Done},
        unique=hx.Unique(key, scope),  # type: ignore[arg-type]
        version=version,
    )


def test_workflows_sharing_a_key_under_scope_workflow_are_a_problem() -> None:
    problems = registry_problems([_wf("orders", "k"), _wf("refunds", "k")])
    assert len(problems) == 1
    assert "'orders', 'refunds'" in problems[0]
    assert "give each workflow its own key" in problems[0]
    assert registry_problems([_wf("orders", "k"), _wf("refunds", "k", "global")]) != []
    # What is fine: versions of one workflow, and keys shared under other scopes.
    assert registry_problems([_wf("orders", "k"), _wf("orders", "k", version=2)]) == []
    assert registry_problems([_wf("orders", "k", "global"), _wf("refunds", "k", "global")]) == []
    assert registry_problems([_wf("orders", "k"), _wf("refunds", "r")]) == []
