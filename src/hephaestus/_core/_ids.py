"""Unique keys, business values and instance ids."""

from __future__ import annotations

import re
import uuid
from typing import Final, Literal, TypeAlias, final

from ._errors import InvalidBusinessKey

UniqueScope: TypeAlias = Literal["workflow", "version", "global", "none"]

_UNIQUE_KEY: Final = re.compile(r"[a-z0-9]+")
_BUSINESS_VALUE: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SCOPES: Final = ("workflow", "version", "global", "none")
ID_SEPARATOR: Final = "::"


@final
class Unique:
    """How a workflow's instance ids are built and how unique they must be.

    Ids are ``f"{key}::{value}"``. ``scope`` says among which active instances
    an id must be unique: the same workflow (any version), the same workflow
    version, all workflows, or none (a random suffix makes every id new).

    Raises:
        InvalidBusinessKey: for a key that does not match ``[a-z0-9]+`` or an
            unknown scope.
    """

    __slots__ = ("key", "scope")

    def __init__(self, key: str, scope: UniqueScope = "workflow") -> None:
        if not isinstance(key, str) or not _UNIQUE_KEY.fullmatch(key):
            raise InvalidBusinessKey(
                f"unique key {key!r} must match [a-z0-9]+ (lower-case letters and digits only)"
            )
        if scope not in _SCOPES:
            raise InvalidBusinessKey(
                f"unique scope {scope!r} must be one of {', '.join(map(repr, _SCOPES))}"
            )
        self.key = key
        self.scope: UniqueScope = scope

    def __repr__(self) -> str:
        return f"Unique({self.key!r}, scope={self.scope!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unique) and (self.key, self.scope) == (other.key, other.scope)

    def __hash__(self) -> int:
        return hash((self.key, self.scope))


def check_business_value(value: object) -> str:
    """Return ``value`` if it is a valid business value.

    Raises:
        InvalidBusinessKey: unless ``value`` matches ``[A-Za-z0-9_-]{1,128}`` or
            is a UUID string.
    """
    if isinstance(value, str):
        if _BUSINESS_VALUE.fullmatch(value):
            return value
        try:
            uuid.UUID(value)
        except ValueError:
            pass
        else:
            return value
    raise InvalidBusinessKey(
        f"business value {value!r} must be a string of 1-128 characters from "
        "A-Z a-z 0-9 _ - (or a UUID string)"
    )


def build_instance_id(unique: Unique, value: object, suffix: str | None = None) -> str:
    """Return the instance id for ``value``; ``suffix`` (8 hex digits) is required for scope "none".

    Raises:
        InvalidBusinessKey: for an invalid business value.
    """
    checked = check_business_value(value)
    if unique.scope == "none":
        if suffix is None or not re.fullmatch(r"[0-9a-f]{8}", suffix):
            raise ValueError("scope 'none' needs an 8-hex-digit suffix")
        return f"{unique.key}{ID_SEPARATOR}{checked}{ID_SEPARATOR}{suffix}"
    return f"{unique.key}{ID_SEPARATOR}{checked}"
