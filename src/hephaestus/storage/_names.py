"""Snapshot file names: a reversible, filesystem-safe encoding of instance ids.

An id is UTF-8 encoded and percent-encoded with lower-case hex digits; only
``a-z``, ``0-9`` and ``-`` stay as they are. So ``orderid::abc-1`` is stored as
``orderid%3a%3aabc-1.snap``. The alphabet has no ``/``, no ``.`` and no upper
case: a name can never leave the store's directory, never be ``.`` or ``..``,
and two ids never collide, even on a case-insensitive file system.

Names are kept well under the usual 255-byte limit: an id whose encoding is
longer than ``MAX_ENCODED`` characters is stored under a readable prefix, ``~``
and a SHA-256 digest of the id. Such a name cannot be reversed, but every
snapshot also carries its id, and the store checks that the two agree.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

SNAPSHOT_SUFFIX: Final = ".snap"
TEMP_SUFFIX: Final = ".tmp"
MAX_ENCODED: Final = 200
"""Longest encoded id used verbatim; temp names stay below 255 bytes."""

_SAFE: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-")
_HASHED_PREFIX: Final = 120
_ESCAPED: Final = tuple(chr(b) if b in _SAFE else f"%{b:02x}" for b in range(256))
_NAME: Final = re.compile(r"(?:[a-z0-9-]|%[0-9a-f]{2})*")
_TEMP: Final = re.compile(r"\..+\.[0-9a-f]{16}\.tmp")


def encode_id(instance_id: str) -> str:
    """Return the percent-encoding of ``instance_id`` (no suffix, no length limit)."""
    return "".join(_ESCAPED[b] for b in instance_id.encode("utf-8", "surrogatepass"))


def decode_id(encoded: str) -> str | None:
    """Return the id whose ``encode_id`` is ``encoded``, or None if it is not one."""
    if not _NAME.fullmatch(encoded):
        return None
    out = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "%":
            byte = int(encoded[i + 1 : i + 3], 16)
            if byte in _SAFE:
                return None  # not canonical: encode_id never escapes a safe byte
            out.append(byte)
            i += 3
        else:
            out.append(ord(encoded[i]))
            i += 1
    try:
        return out.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None


def snapshot_name(instance_id: str) -> str:
    """Return the file name (no directory) of the snapshot of ``instance_id``."""
    encoded = encode_id(instance_id)
    if len(encoded) <= MAX_ENCODED:
        return encoded + SNAPSHOT_SUFFIX
    head = encoded[:_HASHED_PREFIX]
    cut = head.rfind("%", len(head) - 2)
    if cut != -1:
        head = head[:cut]  # never split an escape
    digest = hashlib.sha256(instance_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{head}~{digest}{SNAPSHOT_SUFFIX}"


def id_from_name(name: str) -> str | None:
    """Return the id a snapshot file name encodes, or None (not reversible or not ours)."""
    if not name.endswith(SNAPSHOT_SUFFIX):
        return None
    return decode_id(name[: -len(SNAPSHOT_SUFFIX)])


def is_snapshot_name(name: str) -> bool:
    """True for names the store treats as snapshots (and so may quarantine)."""
    return name.endswith(SNAPSHOT_SUFFIX) and not name.startswith(".")


def temp_name(name: str, token: str) -> str:
    """Return the name of a temp file for snapshot ``name``; ``token`` is 16 hex digits."""
    return f".{name}.{token}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """True for names of temp files this store writes (left over after a crash)."""
    return _TEMP.fullmatch(name) is not None
