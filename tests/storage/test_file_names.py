"""Snapshot file names: reversible, filesystem-safe, never leaving the store."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hephaestus.storage._names import (
    MAX_ENCODED,
    decode_id,
    encode_id,
    id_from_name,
    is_snapshot_name,
    is_temp_name,
    snapshot_name,
    temp_name,
)

_SAFE_NAME = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-%~.")


def test_typical_ids_stay_readable() -> None:
    assert snapshot_name("orderid::abc-1") == "orderid%3a%3aabc-1.snap"
    assert snapshot_name("k::v::0123abcd") == "k%3a%3av%3a%3a0123abcd.snap"
    assert id_from_name("orderid%3a%3aabc-1.snap") == "orderid::abc-1"


@pytest.mark.parametrize(
    "iid",
    ["../../etc/passwd", "/abs", ".", "..", "a/b", "a\\b", "a\x00b", "ünï", "A", "a" * 5000, "~x"],
)
def test_hostile_ids_stay_inside_the_directory(iid: str) -> None:
    name = snapshot_name(iid)
    assert set(name) <= _SAFE_NAME
    assert os.path.basename(name) == name
    assert name not in (".", "..")
    assert len(name.encode()) < 230
    assert is_snapshot_name(name)


@given(st.text())
def test_encoding_round_trips(iid: str) -> None:
    assert decode_id(encode_id(iid)) == iid
    name = snapshot_name(iid)
    if len(encode_id(iid)) <= MAX_ENCODED:
        assert id_from_name(name) == iid
    else:
        assert id_from_name(name) is None  # hashed: the id lives in the payload


@given(st.text(max_size=40), st.text(max_size=40))
def test_names_differ_even_ignoring_case(a: str, b: str) -> None:
    if a != b:
        assert snapshot_name(a).lower() != snapshot_name(b).lower()


def test_long_ids_are_hashed_but_distinct() -> None:
    a, b = "orderid::" + "A" * 128, "orderid::" + "A" * 127 + "B"
    assert snapshot_name(a) != snapshot_name(b)
    assert "~" in snapshot_name(a)
    assert len(temp_name(snapshot_name(a), "0" * 16)) < 255


def test_non_canonical_names_are_not_ids() -> None:
    assert decode_id("%61") is None  # 'a' is never escaped
    assert decode_id("A") is None
    assert decode_id("%zz") is None
    assert decode_id("%ff") is None  # not UTF-8
    assert id_from_name("notes.txt") is None


def test_temp_names_are_recognised_and_are_not_snapshots() -> None:
    tmp = temp_name("orderid%3a%3aabc-1.snap", "0123456789abcdef")
    assert is_temp_name(tmp)
    assert not is_snapshot_name(tmp)
    assert not is_temp_name("notes.tmp")
    assert not is_temp_name("orderid%3a%3aabc-1.snap")
    assert not is_snapshot_name("hephaestus.lock")
