"""Wire format of one Kafka message: a PacketBatch (see docs/WIRE-FORMAT.md).

    header   "SNFB" version:u8 flags:u8 linktype:u16 count:u32 batch_id:u64
             n_sources:u16 n_reasons:u16 payload_len:u32          (28 bytes)
    sources  n_sources x u64
    reasons  n_reasons x (len:u8, utf-8 bytes)    entry 0 is always ""
    records  count x 32-byte rows (RECORD_DTYPE)
    payload  payload_len bytes: the packets, back to back

All integers little-endian. Decoding is two struct calls and one
np.frombuffer: it never looks inside a packet.

Two more message kinds share the topics (docs/WIRE-FORMAT.md):

    "SNFC" + JSON   a control message: EndMarker (end of input, see snf.core.engine)
    "SNFR" + JSON   records of a record port ({"records": [...], "end": id})
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snf.errors import SnfError
from snf.packet.batch import RECORD_DTYPE, PacketBatch

__all__ = [
    "CONTROL_MAGIC",
    "MAGIC",
    "RECORDS_MAGIC",
    "VERSION",
    "EndMarker",
    "RecordBlock",
    "WireError",
    "decode",
    "decode_any",
    "encode",
    "encode_end_marker",
    "encode_record_blocks",
]

MAGIC = b"SNFB"
CONTROL_MAGIC = b"SNFC"
RECORDS_MAGIC = b"SNFR"
VERSION = 1
_HEADER = struct.Struct("<4sBBHIQHHI")
# Bounds on control data (anyone who can write a topic can write a message):
MAX_CONTROL_BYTES = 4096  # an end marker is ~100 bytes
MAX_RECORDS_BYTES = 16 << 20  # a records block is cut at ~512 KiB
MAX_END_ID = 128
MAX_EXPECTED = 1 << 16


class WireError(SnfError):
    """A message that is not a valid packet batch."""


def encode(batch: PacketBatch) -> bytes:
    reasons = batch.reasons or ("",)
    if reasons[0] != "":
        raise WireError("reason table must start with the empty reason")
    parts = [
        _HEADER.pack(
            MAGIC,
            VERSION,
            0,
            batch.linktype,
            len(batch.records),
            batch.batch_id,
            len(batch.sources),
            len(reasons),
            len(batch.payload),
        ),
        struct.pack(f"<{len(batch.sources)}Q", *batch.sources),
    ]
    for r in reasons:
        raw = r.encode()
        if len(raw) > 255:
            raise WireError(f"reason longer than 255 bytes: {r[:40]!r}...")
        parts.append(bytes((len(raw),)) + raw)
    parts.append(np.ascontiguousarray(batch.records, dtype=RECORD_DTYPE).tobytes())
    parts.append(bytes(batch.payload))
    return b"".join(parts)


def decode(message: bytes) -> PacketBatch:
    if len(message) < _HEADER.size:
        raise WireError(f"message of {len(message)} bytes is shorter than a batch header")
    magic, version, _flags, linktype, count, batch_id, n_src, n_reasons, payload_len = (
        _HEADER.unpack_from(message)
    )
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise WireError(f"unsupported batch format version {version} (this build reads {VERSION})")
    pos = _HEADER.size
    if len(message) < pos + 8 * n_src:
        raise WireError("truncated source table")
    sources = struct.unpack_from(f"<{n_src}Q", message, pos)
    pos += 8 * n_src
    reasons = []
    for _ in range(n_reasons):
        if pos >= len(message):
            raise WireError("truncated reason table")
        n = message[pos]
        reasons.append(bytes(message[pos + 1 : pos + 1 + n]).decode(errors="replace"))
        pos += 1 + n
    rec_len = count * RECORD_DTYPE.itemsize
    if pos + rec_len + payload_len != len(message):
        raise WireError(
            f"length mismatch: header announces {count} packets and {payload_len} payload bytes, "
            f"message has {len(message) - pos} bytes after the tables"
        )
    records = np.frombuffer(message, dtype=RECORD_DTYPE, count=count, offset=pos)
    pos += rec_len
    if int(records["cap_len"].sum(dtype=np.int64)) != payload_len:
        raise WireError("packet lengths do not add up to the payload length")
    if count and int(records["source"].max()) >= max(n_src, 1):
        raise WireError("packet refers to a source id outside the source table")
    if count and int(records["reason"].max()) >= max(n_reasons, 1):
        raise WireError("packet refers to a reason outside the reason table")
    return PacketBatch(
        linktype=linktype,
        records=records,
        payload=bytes(message[pos:]),
        sources=tuple(sources),
        reasons=tuple(reasons) or ("",),
        batch_id=batch_id,
    )


@dataclass(frozen=True)
class EndMarker:
    """End of input: finish what is pending, then pass the marker on.

    A partition acts once it has markers of one end_id from `expected`
    distinct origins: one per upstream partition that can send it packets
    (1 when batches keep their partition, all N after a re-keying hop). The
    origin ("<function>/<partition>", "" from a capture agent) makes a marker
    re-sent after a crash count once.
    """

    end_id: str
    end_ts_ns: int
    expected: int = 1
    origin: str = ""


@dataclass
class RecordBlock:
    """JSON records from one function partition; `end` closes an end of input."""

    records: list[dict[str, Any]] = field(default_factory=list)
    end: str = ""  # the end id when this block is the partition's last after an end marker
    origin: str = ""  # "<function>/<partition>" on an end block


def encode_end_marker(marker: EndMarker) -> bytes:
    # "flush" is the wire name of the end id (docs/WIRE-FORMAT.md).
    body = {"flush": marker.end_id, "end_ts_ns": marker.end_ts_ns, "expected": marker.expected}
    if marker.origin:
        body["origin"] = marker.origin
    return CONTROL_MAGIC + json.dumps(body).encode()


def encode_record_blocks(
    records: list[dict[str, Any]], end: str = "", max_bytes: int = 512 * 1024, origin: str = ""
) -> list[bytes]:
    """Records as messages of at most ~max_bytes each (an end of input can hold many
    thousands); `end` goes on the last one only. Always at least one message."""
    messages: list[bytes] = []
    chunk: list[str] = []
    size = 0
    for record in records:
        text = json.dumps(record)
        if chunk and size + len(text) > max_bytes:
            messages.append(_block(chunk, "", ""))
            chunk, size = [], 0
        chunk.append(text)
        size += len(text) + 1
    messages.append(_block(chunk, end, origin))
    return messages


def _block(texts: list[str], end: str, origin: str) -> bytes:
    tail = f', "origin": {json.dumps(origin)}' if origin else ""
    body = '{"records": [' + ", ".join(texts) + '], "end": ' + json.dumps(end) + tail + "}"
    return RECORDS_MAGIC + body.encode()


def _json(message: bytes, what: str, limit: int) -> dict[str, Any]:
    if len(message) > limit:
        raise WireError(f"{what} message of {len(message)} bytes (at most {limit})")
    try:
        body = json.loads(message[4:], parse_constant=_no_constant)
    except RecursionError:
        raise WireError(f"{what} message nests too deep") from None
    except ValueError as exc:
        raise WireError(f"{what} message is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise WireError(f"{what} message must be a JSON object")
    return body


def _no_constant(name: str) -> Any:
    raise WireError(f"{name} is not a number snf accepts")


def _end_marker(body: dict[str, Any]) -> EndMarker:
    """The fields of an end marker, each checked: type, range, length."""
    end_id, ts, expected = body.get("flush"), body.get("end_ts_ns"), body.get("expected")
    origin = body.get("origin", "")
    if not isinstance(end_id, str) or not 0 < len(end_id) <= MAX_END_ID:
        raise WireError(f"bad control message: flush must be a string of 1..{MAX_END_ID} chars")
    if type(ts) is not int or not 0 <= ts < 1 << 63:
        raise WireError("bad control message: end_ts_ns must be an integer in [0, 2^63)")
    if type(expected) is not int or not 1 <= expected <= MAX_EXPECTED:
        raise WireError(f"bad control message: expected must be an integer in [1, {MAX_EXPECTED}]")
    if not isinstance(origin, str) or len(origin) > MAX_END_ID:
        raise WireError(f"bad control message: origin must be a string of <= {MAX_END_ID} chars")
    return EndMarker(end_id, ts, expected, origin)


def decode_any(message: bytes) -> PacketBatch | EndMarker | RecordBlock:
    """Decode any message found on an snf topic.

    Raises WireError, and nothing else, on anything that is not one: a null
    (tombstone) value, a truncated batch, control JSON too big, too deep or
    with numbers out of range."""
    if not isinstance(message, bytes | bytearray | memoryview):
        raise WireError("a null (tombstone) value" if message is None else "not bytes")
    magic = bytes(message[:4])
    if magic == CONTROL_MAGIC:
        return _end_marker(_json(message, "control", MAX_CONTROL_BYTES))
    if magic == RECORDS_MAGIC:
        body = _json(message, "records", MAX_RECORDS_BYTES)
        records = body.get("records")
        if not isinstance(records, list):
            raise WireError("records message without a records list")
        return RecordBlock(records, str(body.get("end", "")), str(body.get("origin", "")))
    return decode(message)
