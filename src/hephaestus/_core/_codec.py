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


def detached_copy(value: dict[str, Any]) -> dict[str, Any]:
    """Return a deep copy of a snapshot's plain data (a msgpack round trip)."""
    copied: dict[str, Any] = _plain_decoder.decode(_encoder.encode(value))
    return copied


def check_serialisable(value: Any, what: str) -> None:
    """Return if ``value`` can be stored in a snapshot (msgpack, str keys).

    Raises:
        InvalidResult: naming ``what`` and the reason otherwise.
    """
    if value is None:
        return
    if not isinstance(value, dict):
        raise InvalidResult(f"{what} must be a dict with str keys, got {type(value).__name__}")
    try:
        data = _encoder.encode(value)
        _plain_decoder.decode(data)
        problem = _unstorable(value)
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
