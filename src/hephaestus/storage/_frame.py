"""The snapshot file frame: a checksummed envelope around the msgpack payload.

Layout (little-endian, 16-byte header, then the payload)::

    offset  size  field
    0       4     magic b"HXSN"
    4       2     frame version (1)
    6       2     reserved, 0
    8       4     payload length in bytes
    12      4     CRC32 of bytes 0-11 followed by the payload
    16      n     payload: the msgpack snapshot (``encode_instance``)

The checksum covers the header fields as well as the payload, so any single
flipped bit, any truncation and any trailing garbage is detected. A frame
version newer than ``FRAME_VERSION`` is refused with a message that says to
upgrade, before the checksum is looked at (a later version may checksum
differently).
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

from .._core._errors import CorruptSnapshot

MAGIC: Final = b"HXSN"
FRAME_VERSION: Final = 1
_FIELDS: Final = struct.Struct("<4sHHI")
_CRC: Final = struct.Struct("<I")
HEADER_SIZE: Final = _FIELDS.size + _CRC.size


def encode_frame(payload: bytes) -> bytes:
    """Return ``payload`` wrapped in a frame of the current version."""
    fields = _FIELDS.pack(MAGIC, FRAME_VERSION, 0, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(fields))
    return b"".join((fields, _CRC.pack(crc), payload))


def decode_frame(data: bytes) -> bytes:
    """Return the payload of the frame ``data``.

    Raises:
        CorruptSnapshot: with the reason, for an empty or truncated file, a file
            that is not a snapshot (bad magic), a newer frame version, a length
            that does not match the file, or a checksum mismatch.
    """
    size = len(data)
    if size == 0:
        raise CorruptSnapshot("empty file (0 bytes)")
    if data[: min(size, len(MAGIC))] != MAGIC[: min(size, len(MAGIC))]:
        raise CorruptSnapshot(f"not a snapshot: bad magic {bytes(data[:4])!r}")
    if size < HEADER_SIZE:
        raise CorruptSnapshot(f"truncated header: {size} of {HEADER_SIZE} bytes")
    _, version, reserved, length = _FIELDS.unpack_from(data)
    if version > FRAME_VERSION:
        raise CorruptSnapshot(
            f"frame version {version} is newer than this release reads ({FRAME_VERSION}): "
            "upgrade hephaestus-trio"
        )
    if version == 0:
        raise CorruptSnapshot("invalid frame version 0")
    available = size - HEADER_SIZE
    if available < length:
        raise CorruptSnapshot(
            f"truncated payload: header says {length} bytes, file has {available}"
        )
    if available > length:
        raise CorruptSnapshot(
            f"{available - length} trailing bytes after the {length}-byte payload"
        )
    view = memoryview(data)
    (stored,) = _CRC.unpack_from(data, _FIELDS.size)
    computed = zlib.crc32(view[HEADER_SIZE:], zlib.crc32(view[: _FIELDS.size]))
    if stored != computed:
        raise CorruptSnapshot(
            f"checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )
    if reserved != 0:
        raise CorruptSnapshot(f"reserved header field is {reserved}, not 0")
    return data[HEADER_SIZE:]
