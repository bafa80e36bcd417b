"""Unique keys, business values and instance ids."""

from __future__ import annotations

import re
import uuid
from typing import Final, Literal, TypeAlias, final

from ._errors import InvalidBusinessKey, WorkflowDefinitionError

UniqueScope: TypeAlias = Literal["workflow", "version", "global", "none"]

_UNIQUE_KEY: Final = re.compile(r"[a-z0-9]+")
_BUSINESS_VALUE: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SCOPES: Final = ("workflow", "version", "global", "none")
ID_SEPARATOR: Final = "::"
_LONGEST_UUID_SPELLING: Final = 64  # "{urn:uuid:...}" is 47; longer is no UUID


@final
class Unique:
    """How a workflow's instance ids are built and how unique they must be.

    Ids are ``f"{key}::{value}"``; under scope ``"version"`` they are
    ``f"{key}::{value}::v{version}"``. ``scope`` says among which active
    instances an id must be unique: the same workflow (any version; two
    workflows registered with one key under this scope are refused by
    ``open_engine``), the same workflow version (so versions run side by side),
    every workflow sharing the key, or none (a random suffix makes every id new).

    Raises:
        WorkflowDefinitionError: for a key that does not match ``[a-z0-9]+`` or
            an unknown scope.
    """

    __slots__ = ("key", "scope")

    def __init__(self, key: str, scope: UniqueScope = "workflow") -> None:
        problems = []
        if not isinstance(key, str) or not _UNIQUE_KEY.fullmatch(key):
            problems.append(
                f"unique key {key!r} must match [a-z0-9]+ (lower-case letters and digits only)"
            )
        if scope not in _SCOPES:
            problems.append(
                f"unique scope {scope!r} must be one of {', '.join(map(repr, _SCOPES))}"
            )
        if problems:
            raise WorkflowDefinitionError(f"hx.Unique({key!r})", problems)
        self.key = key
        self.scope: UniqueScope = scope

    def __repr__(self) -> str:
        return f"Unique({self.key!r}, scope={self.scope!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unique) and (self.key, self.scope) == (other.key, other.scope)

    def __hash__(self) -> int:
        return hash((self.key, self.scope))


def check_business_value(value: object) -> str:
    """Return ``value`` if it is a valid business value, a UUID in its canonical form.

    Any spelling of a UUID that :class:`uuid.UUID` reads (upper case, braces,
    ``urn:uuid:``, without hyphens) is returned in the canonical lower-case
    hyphenated form, so one UUID always gives one instance id. A value made of
    32 hex digits is such a spelling too.

    Raises:
        InvalidBusinessKey: unless ``value`` matches ``[A-Za-z0-9_-]{1,128}`` or
            is a UUID string.
    """
    if isinstance(value, str):
        if len(value) >= 32:  # shorter is no UUID spelling (_canonical_uuid): most values
            canonical = _canonical_uuid(value)
            if canonical is not None:
                return canonical
        if _BUSINESS_VALUE.fullmatch(value):
            return value
    raise InvalidBusinessKey(
        f"business value {_shown(value)} must be a string of 1-128 characters from "
        "A-Z a-z 0-9 _ - (or a UUID string)"
    )


def _canonical_uuid(value: str) -> str | None:
    if not 32 <= len(value) <= _LONGEST_UUID_SPELLING:  # 32 hex digits at the least
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 140 else f"{text[:140]}..."


def build_instance_id(
    unique: Unique, value: object, suffix: str | None = None, *, version: int | None = None
) -> str:
    """Return the instance id for ``value`` (normalised by :func:`check_business_value`).

    ``suffix`` (8 hex digits) is required for scope "none", ``version`` for
    scope "version" (ids ``key::value::v{version}``).

    Raises:
        InvalidBusinessKey: for an invalid business value.
    """
    checked = check_business_value(value)
    if unique.scope == "none":
        if suffix is None or not re.fullmatch(r"[0-9a-f]{8}", suffix):
            raise ValueError("scope 'none' needs an 8-hex-digit suffix")
        return f"{unique.key}{ID_SEPARATOR}{checked}{ID_SEPARATOR}{suffix}"
    if unique.scope == "version":
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError("scope 'version' needs the workflow's version (an int >= 1)")
        return f"{unique.key}{ID_SEPARATOR}{checked}{ID_SEPARATOR}v{version}"
    return f"{unique.key}{ID_SEPARATOR}{checked}"
