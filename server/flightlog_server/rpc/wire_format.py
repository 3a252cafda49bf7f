"""The protobuf wire format's few primitives, for the code that reads requests on the wire
before (``rpc.request_items``) or instead of (``rpc.piecewise``) protobuf's parser
(https://protobuf.dev/programming-guides/encoding/#structure)."""

from __future__ import annotations

from google.protobuf.message import DecodeError

__all__ = [
    "END_GROUP",
    "FIXED32",
    "FIXED64",
    "LENGTH_DELIMITED",
    "MAX_DEPTH",
    "START_GROUP",
    "VARINT",
    "read_varint",
    "varint_bytes",
]

# Wire types.
VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = range(6)
# protobuf's parser refuses messages (and groups) nested deeper than this.
MAX_DEPTH = 100


def read_varint(raw: bytes, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it (IndexError past the end)."""
    value = shift = 0
    while True:
        byte = raw[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift >= 70:
            raise DecodeError("a varint longer than ten bytes")


def varint_bytes(value: int) -> bytes:
    """``value`` (0 or more) as a varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
