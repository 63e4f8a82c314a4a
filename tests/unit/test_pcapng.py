"""PcapngWriter: exact round trips through read_capture, and dpkt (and tshark) agree."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import dpkt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snf.errors import SnfError
from snf.packet.capture_file import read_capture
from snf.packet.linktypes import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW
from snf.packet.pcapng_writer import PcapngWriteError, PcapngWriter

LINKTYPES = [0, 1, 101, 108, 113, 228, 229, 276]

packets = st.lists(
    st.tuples(
        st.sampled_from(LINKTYPES),
        st.integers(0, 2**62),  # ts_ns
        st.binary(max_size=2000),
        st.integers(0, 100),  # bytes lost to the snap length
        st.none() | st.text(max_size=40),
    ),
    max_size=20,
)


@settings(deadline=None, max_examples=60)
@given(packets)
def test_round_trip(tmp_path_factory: pytest.TempPathFactory, pkts: list) -> None:
    path = tmp_path_factory.mktemp("rt") / "out.pcapng"
    with PcapngWriter(path) as w:
        for lt, ts, data, lost, comment in pkts:
            w.write(lt, ts, data, len(data) + lost, comment=comment)
    want = [(ts, len(data) + lost, data, lt) for lt, ts, data, lost, _ in pkts]
    got = [(p.ts_ns, p.orig_len, p.data, p.linktype) for p in read_capture(path)]
    assert got == want
    if pkts:  # dpkt needs an interface block, which comes with the first packet
        with path.open("rb") as f:
            theirs = list(dpkt.pcapng.Reader(f))
        assert [d for _, d in theirs] == [d for _, _, d, _, _ in pkts]
        assert [t for t, _ in theirs] == [ts / 1e9 for _, ts, _, _, _ in pkts]


def test_blocks_as_dpkt_sees_them() -> None:
    buf = io.BytesIO()
    with PcapngWriter(buf) as w:
        w.write(LINKTYPE_ETHERNET, 1, b"abc", 60, comment="snf id=000000000000002a:17")
        w.write(LINKTYPE_RAW, 2, b"de")
        w.write(LINKTYPE_ETHERNET, 3, b"fghi", comment="ü")
    assert not buf.closed  # a file object the caller gave stays open
    raw = buf.getvalue()
    shb = dpkt.pcapng.SectionHeaderBlockLE(raw[: struct.unpack_from("<I", raw, 4)[0]])
    assert [o.data for o in shb.opts if o.code == dpkt.pcapng.PCAPNG_OPT_SHB_USERAPPL] == [b"snf"]
    off, blocks = len(shb), []
    while off < len(raw):
        btype, blen = struct.unpack_from("<II", raw, off)
        cls = {1: dpkt.pcapng.InterfaceDescriptionBlockLE, 6: dpkt.pcapng.EnhancedPacketBlockLE}
        blocks.append(cls[btype](raw[off : off + blen]))
        off += blen
    idbs = [b for b in blocks if b.type == 1]
    assert [(b.linktype, b.snaplen) for b in idbs] == [(LINKTYPE_ETHERNET, 0), (LINKTYPE_RAW, 0)]
    for b in idbs:
        assert [o.data for o in b.opts if o.code == dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL] == [b"\x09"]
    epbs = [b for b in blocks if b.type == 6]
    assert [(b.iface_id, b.caplen, b.pkt_len, b.pkt_data) for b in epbs] == [
        (0, 3, 60, b"abc"),
        (1, 2, 2, b"de"),
        (0, 4, 4, b"fghi"),
    ]
    comments = [[o.text for o in b.opts if o.code == 1] for b in epbs]
    assert comments == [["snf id=000000000000002a:17"], [], ["ü"]]


def test_path_target_is_closed(tmp_path: Path) -> None:
    w = PcapngWriter(tmp_path / "a.pcapng")
    w.write(LINKTYPE_LINUX_SLL2, 5, b"x")
    w.close()
    w.close()  # idempotent
    assert w._file.closed
    assert [p.data for p in read_capture(tmp_path / "a.pcapng")] == [b"x"]


@pytest.mark.parametrize(
    ("linktype", "ts_ns", "orig_len"),
    [(1, -1, None), (1, 2**63, None), (1, 0, -1), (1, 0, 2**32), (70000, 0, None)],
)
def test_rejects_what_pcapng_cannot_hold(linktype: int, ts_ns: int, orig_len: int | None) -> None:
    with PcapngWriter(io.BytesIO()) as w, pytest.raises(ValueError):
        w.write(linktype, ts_ns, b"x", orig_len)


def test_a_timestamp_it_cannot_hold_is_a_clear_error(tmp_path: Path) -> None:
    # An SnfError (the CLI prints it, no traceback) naming the file and the packet.
    path = tmp_path / "out.pcapng"
    with PcapngWriter(path) as w:
        w.write(1, 5, b"x")
        with pytest.raises(PcapngWriteError) as info:
            w.write(1, 1 << 63, b"y")
        assert str(info.value) == (
            f"{path}: cannot write packet 2: timestamp {1 << 63} ns is outside "
            "0..2^63-1 ns (1970 to 2262)"
        )
        ts = np.array([7, -1], dtype=np.int64)
        with pytest.raises(PcapngWriteError, match="cannot write packet 3: timestamp -1 ns"):
            w.write_batch(np.ones(2, dtype=np.int64), ts, np.ones(2, dtype=np.int64), [b"a", b"b"])
        assert isinstance(info.value, SnfError) and w.packets == 1
    assert [p.data for p in read_capture(path)] == [b"x"]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_reads_exact_timestamps_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "ws.pcapng"
    rows = [
        (1_389_719_041_819_644_123, b"\0" * 60, 64),
        (1_389_719_041_819_644_124, b"\1" * 20, 20),
    ]
    with PcapngWriter(path) as w:
        for i, (ts, data, orig) in enumerate(rows):
            w.write(LINKTYPE_ETHERNET, ts, data, orig, comment=f"snf id={i:016x}:{i}")
    fields = ["frame.time_epoch", "frame.len", "frame.cap_len", "frame.comment"]
    cmd = ["tshark", "-r", str(path), "-T", "fields", *[a for f in fields for a in ("-e", f)]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.splitlines() == [
        f"{ts // 10**9}.{ts % 10**9:09d}\t{orig}\t{len(data)}\tsnf id={i:016x}:{i}"
        for i, (ts, data, orig) in enumerate(rows)
    ]
