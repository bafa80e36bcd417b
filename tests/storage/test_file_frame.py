"""The snapshot frame detects every truncation, bit flip and foreign content."""

from __future__ import annotations

import random
import struct

import pytest

from hephaestus import CorruptSnapshot
from hephaestus._core._codec import decode_instance, encode_instance
from hephaestus.storage._frame import FRAME_VERSION, HEADER_SIZE, MAGIC, decode_frame, encode_frame

from ._fs_samples import varied_instances


def sample_frame() -> bytes:
    return encode_frame(encode_instance(varied_instances()[2]))


def test_round_trip() -> None:
    for instance in varied_instances():
        assert decode_instance(decode_frame(encode_frame(encode_instance(instance)))) == instance


def test_header_layout() -> None:
    frame = encode_frame(b"payload")
    assert frame[:4] == MAGIC
    assert struct.unpack_from("<HHI", frame, 4) == (FRAME_VERSION, 0, 7)
    assert frame[HEADER_SIZE:] == b"payload"


def test_every_truncation_is_detected() -> None:
    frame = sample_frame()
    for length in range(len(frame)):
        with pytest.raises(CorruptSnapshot):
            decode_frame(frame[:length])


def test_every_single_bit_flip_is_detected() -> None:
    frame = sample_frame()
    for bit in range(len(frame) * 8):
        damaged = bytearray(frame)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptSnapshot):
            decode_frame(bytes(damaged))


def test_trailing_bytes_are_detected() -> None:
    with pytest.raises(CorruptSnapshot, match="1 trailing bytes"):
        decode_frame(sample_frame() + b"\x00")


def test_random_garbage_is_detected() -> None:
    rng = random.Random(4)
    for _ in range(3000):
        garbage = rng.randbytes(rng.randrange(0, 200))
        if rng.random() < 0.5:  # garbage behind a valid magic gets further into the checks
            garbage = MAGIC + garbage
        with pytest.raises(CorruptSnapshot):
            decode_frame(garbage)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"HXS", "truncated header"),
        (b"PK\x03\x04rest-of-a-zip-file", "bad magic"),
        (MAGIC + struct.pack("<HHII", FRAME_VERSION + 1, 0, 0, 0), "newer than this release"),
        (MAGIC + struct.pack("<HHII", 0, 0, 0, 0), "invalid frame version 0"),
    ],
)
def test_reasons_say_what_is_wrong(data: bytes, reason: str) -> None:
    with pytest.raises(CorruptSnapshot, match=reason):
        decode_frame(data)


def test_checksum_mismatch_is_named() -> None:
    frame = bytearray(sample_frame())
    frame[-1] ^= 0xFF
    with pytest.raises(CorruptSnapshot, match="checksum mismatch"):
        decode_frame(bytes(frame))


def test_valid_frame_with_undecodable_payload_is_detected_by_the_codec() -> None:
    with pytest.raises(CorruptSnapshot, match="cannot decode"):
        decode_instance(decode_frame(encode_frame(b"\xc1not msgpack")))
