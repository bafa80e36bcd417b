"""The one msgpack encoder and decoder for snapshots, created once and reused."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ._errors import CorruptSnapshot, InvalidResult
from ._model import FORMAT_VERSION, Instance

_encoder: Final = msgspec.msgpack.Encoder()
_instance_decoder: Final = msgspec.msgpack.Decoder(Instance)


def encode_instance(instance: Instance) -> bytes:
    """Return the msgpack bytes of ``instance``."""
    return _encoder.encode(instance)


def decode_instance(data: bytes) -> Instance:
    """Return the instance encoded in ``data``.

    Raises:
        CorruptSnapshot: when ``data`` is not a valid snapshot, or was written by
            a newer format version than this release reads.
    """
    try:
        instance = _instance_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptSnapshot(f"cannot decode snapshot: {exc}") from None
    if instance.format > FORMAT_VERSION:
        raise CorruptSnapshot(
            f"snapshot format {instance.format} is newer than this release reads "
            f"({FORMAT_VERSION}): upgrade hephaestus-trio"
        )
    return instance


def detached_instance(instance: Instance) -> Instance:
    """Return a deep copy of ``instance`` that shares no dict or list with it."""
    return _instance_decoder.decode(_encoder.encode(instance))


def detached_copy(value: dict[str, Any]) -> dict[str, Any]:
    """Return a deep copy of a snapshot's plain data (a msgpack round trip)."""
    copied: dict[str, Any] = _plain_decoder.decode(_encoder.encode(value))
    return copied


def check_serialisable(value: Any, what: str) -> None:
    """Return if ``value`` can be stored in a snapshot (msgpack, str keys, valid Unicode).

    Raises:
        InvalidResult: naming ``what`` and the reason otherwise.
    """
    stored_copy(value, what)


def stored_copy(value: Any, what: str) -> dict[str, Any] | None:
    """Return a deep copy of ``value`` as a snapshot will store it, or None for None.

    The copy is ``value`` encoded the way a snapshot encodes it and decoded
    again, so whatever passes can be stored and read back equal, and the caller
    keeps no reference into what is stored.

    Raises:
        InvalidResult: naming ``what`` and the reason when ``value`` is not a
            dict with str keys holding str, int, float, bool, None, list, dict
            or bytes values, or holds a str that is not valid Unicode (a lone
            surrogate such as ``"\\ud800"``).
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidResult(f"{what} must be a dict with str keys, got {type(value).__name__}")
    try:
        copied: dict[str, Any] = _plain_decoder.decode(_encoder.encode(value))
        problem = _unstorable(value)
    except UnicodeEncodeError as exc:
        raise InvalidResult(_not_unicode(what, exc)) from None
    except (
        TypeError,
        OverflowError,
        RecursionError,
        msgspec.EncodeError,
        msgspec.ValidationError,
    ) as exc:
        problem = str(exc)
    if problem is not None:
        raise InvalidResult(
            f"{what} is not msgpack-serialisable ({problem}): use str keys and str, int, "
            "float, bool, None, list, dict or bytes values"
        ) from None
    return copied


def check_text(value: object, what: str, *, optional: bool = False) -> str | None:
    """Return ``value`` if it is a str that can be stored (valid Unicode); None if allowed.

    For every str argument a caller passes that may end up in a snapshot or
    an instance id: event names, step keys, dedupe keys, cancel reasons, ids.

    Raises:
        InvalidResult: ``value`` is not a str (nor None when ``optional``), or
            holds a lone surrogate, which UTF-8 (and so msgpack) cannot encode.
    """
    if value is None and optional:
        return None
    if not isinstance(value, str):
        allowed = "a str or None" if optional else "a str"
        raise InvalidResult(f"{what} must be {allowed}, got {type(value).__name__} {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidResult(_not_unicode(what, exc)) from None
    return value


def _not_unicode(what: str, exc: UnicodeEncodeError) -> str:
    bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
    return (
        f"{what} holds a str that is not valid Unicode (the lone surrogate {bad!r}), so it "
        "cannot be stored: decode bytes with errors='replace' or drop the surrogate"
    )


def _unstorable(value: dict[str, Any]) -> str | None:
    """Return why ``value`` would not decode back equal (a set, tuple, datetime...), or None.

    msgspec encodes many more types than it decodes back as themselves: a set or
    tuple comes back as a list, a datetime or UUID as something else, and a
    nested int key is kept. Only the types a snapshot stores as they are pass.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"key {key!r} at {path or 'top level'} is not a str"
                stack.append((f"{path}[{key!r}]", child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{index}]", child) for index, child in enumerate(item))
        elif not (item is None or isinstance(item, str | int | float | bytes)):
            return f"{path} is a {type(item).__name__}"
    return None


_plain_decoder: Final = msgspec.msgpack.Decoder(dict[str, Any])
