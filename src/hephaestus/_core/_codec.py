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
    except (TypeError, msgspec.EncodeError, msgspec.ValidationError) as exc:
        raise InvalidResult(
            f"{what} is not msgpack-serialisable ({exc}): use str keys and str, int, float, "
            "bool, None, list, dict or bytes values"
        ) from None


_plain_decoder: Final = msgspec.msgpack.Decoder(dict[str, Any])
