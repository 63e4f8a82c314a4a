"""The batch wire format: exact round trips and clear errors."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snf import wire
from snf.packet.batch import PacketBatch, format_packet_id

rows = st.lists(
    st.tuples(
        st.integers(0, 2**62),  # ts_ns
        st.integers(0, 2**32 - 1),  # orig_len
        st.binary(max_size=300),  # data
        st.sampled_from([1, 2**63 - 1, 0xDEADBEEF]),  # source id
        st.integers(0, 2**64 - 1),  # seq
        st.sampled_from(["", "default", "rule:3", "malformed", "ünïcode"]),
    ),
    max_size=40,
)


@given(linktype=st.integers(0, 65535), rows=rows, batch_id=st.integers(0, 2**64 - 1))
@settings(max_examples=200)
def test_round_trip_is_exact(linktype: int, rows: list, batch_id: int) -> None:
    batch = PacketBatch.from_rows(linktype, rows, batch_id=batch_id)
    decoded = wire.decode(wire.encode(batch))
    assert decoded.linktype == linktype
    assert decoded.batch_id == batch_id
    assert list(decoded.rows()) == rows
    assert wire.encode(decoded) == wire.encode(batch)


@given(rows=rows.filter(bool), data=st.data())
def test_select_keeps_ids_and_sets_reasons(rows: list, data: st.DataObject) -> None:
    batch = PacketBatch.from_rows(1, rows)
    idx = data.draw(st.lists(st.integers(0, len(rows) - 1), unique=True))
    reasons = [f"r{i}" for i in idx]
    out = wire.decode(wire.encode(batch.select(idx, reasons=reasons)))
    assert [(r[3], r[4]) for r in out.rows()] == [(rows[i][3], rows[i][4]) for i in idx]
    assert [r[5] for r in out.rows()] == reasons
    assert out.packets() == [rows[i][2] for i in idx]


def test_select_with_rewritten_packet() -> None:
    batch = PacketBatch.from_rows(1, [(1, 10, b"aaaa", 7, 0, ""), (2, 10, b"bb", 7, 1, "")])
    out = wire.decode(wire.encode(batch.select([0, 1], replaced={1: b"cccccc"})))
    assert out.packets() == [b"aaaa", b"cccccc"]
    assert out.records["cap_len"].tolist() == [4, 6]


def test_packet_id_format() -> None:
    assert format_packet_id(42, 17) == "000000000000002a:17"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: b"XXXX" + m[4:], "bad magic"),
        (lambda m: m[:4] + bytes([9]) + m[5:], "unsupported batch format version 9"),
        (lambda m: m[:-1], "length mismatch"),
        (lambda m: m[:30], "truncated source table"),
        (lambda m: m[:36], "truncated reason table"),
        (lambda m: m[:5], "shorter than a batch header"),
    ],
)
def test_bad_messages_are_rejected_clearly(mutate, message: str) -> None:
    good = wire.encode(PacketBatch.from_rows(1, [(1, 60, b"x" * 60, 5, 0, "")]))
    with pytest.raises(wire.WireError, match=message):
        wire.decode(mutate(good))


def test_header_layout_is_stable() -> None:
    """The documented header: magic, version, flags, linktype, count, batch id, tables."""
    msg = wire.encode(PacketBatch.from_rows(113, [(5, 3, b"abc", 9, 4, "")], batch_id=77))
    assert struct.unpack_from("<4sBBHIQHHI", msg) == (b"SNFB", 1, 0, 113, 1, 77, 1, 1, 3)
    assert len(msg) == 28 + 8 + 1 + 32 + 3


@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_decode_or_raise_wire_error(data: bytes, with_magic: bool) -> None:
    if with_magic:
        data = b"SNFB\x01" + data
    with contextlib.suppress(wire.WireError):
        wire.decode(data)
