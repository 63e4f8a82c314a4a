"""read_capture: real captures against dpkt, crafted pcap/pcapng variants, damage."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snf.packet.capture_file import (
    CapturedPacket,
    CaptureError,
    CaptureWarning,
    capture_info,
    read_capture,
)
from snf.packet.linktypes import LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_RAW
from snf.packet.pcapng_writer import PcapngWriter

# Packet counts stated in ../shared/traffic/README.md
EXPECTED = {
    "tcpreplay-test.pcap": 179,
    "zeek-wikipedia.pcap": 136,
    "zeek-http-bro.org.pcap": 751,
    "zeek-http-vlan.pcap": 14,
    "zeek-ipv6.pcap": 17,
    "zeek-ipv4-fragmented.pcap": 3,
    "suricata-tcp-async.pcap": 139,
    "suricata-udp-flow.pcap": 66,
}


def read_all(path: Path) -> tuple[list[CapturedPacket], list[str]]:
    found: list[str] = []
    return list(read_capture(path, on_warning=found.append)), found


def key(p: CapturedPacket) -> tuple[int, int, bytes, int]:
    return p.ts_ns, p.orig_len, p.data, p.linktype


# -- builders ------------------------------------------------------------


def pcap(
    records: list[tuple[int, bytes, int]],
    bo: str = "<",
    nano: bool = False,
    linktype: int = LINKTYPE_ETHERNET,
) -> bytes:
    """A pcap file of (ts_ns, data, orig_len) records in byte order `bo`."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(bo + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for ts, data, orig in records:
        sec, ns = divmod(ts, 10**9)
        out.append(struct.pack(bo + "IIII", sec, ns if nano else ns // 1000, len(data), orig))
        out.append(data)
    return b"".join(out)


def pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) & 3)


def block(bo: str, btype: int, body: bytes) -> bytes:
    n = 12 + len(pad(body))
    return struct.pack(bo + "II", btype, n) + pad(body) + struct.pack(bo + "I", n)


def shb(bo: str) -> bytes:
    return block(bo, 0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(bo: str, linktype: int, tsresol: int | None = None, tsoffset: int = 0, snaplen: int = 0):
    opts = b""
    if tsresol is not None:
        opts += struct.pack(bo + "HH", 9, 1) + pad(bytes([tsresol]))
    if tsoffset:
        opts += struct.pack(bo + "HHq", 14, 8, tsoffset)
    opts += b"\0\0\0\0" if opts else b""
    return block(bo, 1, struct.pack(bo + "HHI", linktype, 0, snaplen) + opts)


def epb(bo: str, iface: int, ticks: int, data: bytes, orig: int | None = None) -> bytes:
    orig = len(data) if orig is None else orig
    head = struct.pack(bo + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), orig)
    return block(bo, 6, head + pad(data))


def pb(bo: str, iface: int, ticks: int, data: bytes) -> bytes:
    head = struct.pack(bo + "HHIIII", iface, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), 999)
    return block(bo, 2, head + pad(data))


def spb(bo: str, data: bytes, orig: int) -> bytes:
    return block(bo, 3, struct.pack(bo + "I", orig) + pad(data))


def pcap_boundaries(raw: bytes) -> list[int]:
    """Start offset of every record of a little-endian usec pcap, plus the end."""
    offs, off = [], 24
    while off < len(raw):
        offs.append(off)
        off += 16 + struct.unpack_from("<I", raw, off + 8)[0]
    return [*offs, off]


def pcapng_blocks(raw: bytes) -> list[tuple[int, int]]:
    """(block type, offset) of every block of a little-endian pcapng file."""
    out, off = [], 0
    while off < len(raw):
        btype, blen = struct.unpack_from("<II", raw, off)
        out.append((btype, off))
        off += blen
    return out


# -- real captures -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_capture_matches_dpkt(name: str, traffic: Callable[[str], Path]) -> None:
    path = traffic(name)
    ours, found = read_all(path)
    with path.open("rb") as f:
        theirs = list(dpkt.pcap.Reader(f))
    assert found == []
    assert len(ours) == len(theirs) == EXPECTED[name]
    for p, (ts, data) in zip(ours, theirs, strict=True):
        assert p.data == data
        assert abs(p.ts_ns / 1e9 - float(ts)) < 1e-6
        assert p.ts_ns % 1000 == 0  # microsecond files give whole microseconds
        assert p.orig_len >= len(p.data)
        assert p.linktype == LINKTYPE_ETHERNET


def test_every_shared_capture_reads_cleanly(traffic_dir: Path) -> None:
    for path in sorted(traffic_dir.glob("*.pcap")):
        ours, found = read_all(path)
        assert found == [] and ours, path


def test_capture_info(traffic: Callable[[str], Path]) -> None:
    info = capture_info(traffic("zeek-ipv4-fragmented.pcap"))
    assert info["format"] == "pcap"
    assert info["packets"] == 3
    assert info["linktypes"] == [LINKTYPE_ETHERNET]
    assert info["first_ts_ns"] <= info["last_ts_ns"]
    assert info["warnings"] == []


# -- pcap variants -------------------------------------------------------

RECORDS = [(1_700_000_000_123_456_789, b"\x01" * 60, 60), (1_700_000_001_000_000_001, b"ab", 1500)]


@pytest.mark.parametrize("bo", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_magics(tmp_path: Path, bo: str, nano: bool) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap(RECORDS, bo=bo, nano=nano, linktype=LINKTYPE_RAW))
    got = [key(p) for p in read_capture(path)]
    want_ts = [ts if nano else ts // 1000 * 1000 for ts, _, _ in RECORDS]
    assert got == [(t, o, d, LINKTYPE_RAW) for t, (_, d, o) in zip(want_ts, RECORDS, strict=True)]
    with path.open("rb") as f:  # the crafted file is what dpkt thinks it is
        assert [d for _, d in dpkt.pcap.Reader(f)] == [d for _, d, _ in RECORDS]


def test_modified_pcap(tmp_path: Path) -> None:
    """Kuznetzov's format: 8 more bytes (ifindex, protocol, type) per record header."""
    out = [struct.pack("<IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)]
    for ts, data, orig in RECORDS:
        sec, ns = divmod(ts, 10**9)
        out.append(struct.pack("<IIIIIHBB", sec, ns // 1000, len(data), orig, 3, 0x800, 0, 0))
        out.append(data)
    path = tmp_path / "mod.pcap"
    path.write_bytes(b"".join(out))
    got = [(p.ts_ns, p.orig_len, p.data) for p in read_capture(path)]
    assert got == [(ts // 1000 * 1000, orig, data) for ts, data, orig in RECORDS]


def test_pcap_linktype_fcs_bits_are_masked(tmp_path: Path) -> None:
    path = tmp_path / "fcs.pcap"
    path.write_bytes(pcap(RECORDS, linktype=LINKTYPE_ETHERNET | 0x14000000))
    assert {p.linktype for p in read_capture(path)} == {LINKTYPE_ETHERNET}


# -- pcapng variants -----------------------------------------------------


def test_pcapng_interfaces_blocks_and_sections(tmp_path: Path) -> None:
    le, be = "<", ">"
    raw = b"".join(
        [
            shb(le),
            idb(le, LINKTYPE_ETHERNET, snaplen=64),  # default resolution: microseconds
            idb(le, LINKTYPE_RAW, tsresol=0x80 | 20, tsoffset=1000),  # 2**-20 s, +1000 s
            block(le, 0x40000BAD, b"custom block, skipped"),
            block(le, 4, b"\0\0\0\0"),  # name resolution block, skipped
            epb(le, 0, 1_500_000_123_456, b"eth", orig=70),
            epb(le, 1, 3 * 2**20 + 2**19, b"raw"),
            pb(le, 0, 1_500_000_999_999, b"obsolete"),
            spb(le, b"s" * 64, orig=100),  # snapped at the interface's snaplen
            spb(le, b"short", orig=5),
            shb(be),  # a new section, big-endian, with its own interfaces
            idb(be, LINKTYPE_IPV4, tsresol=9, tsoffset=-10),
            epb(be, 0, 20 * 10**9 + 7, b"v4"),
        ]
    )
    path = tmp_path / "multi.pcapng"
    path.write_bytes(raw)
    got, found = read_all(path)
    assert found == []
    assert [key(p) for p in got] == [
        (1_500_000_123_456_000, 70, b"eth", LINKTYPE_ETHERNET),
        (1000 * 10**9 + 3_500_000_000, 3, b"raw", LINKTYPE_RAW),
        (1_500_000_999_999_000, 999, b"obsolete", LINKTYPE_ETHERNET),
        (1_500_000_999_999_000, 100, b"s" * 64, LINKTYPE_ETHERNET),  # SPB: previous ts
        (1_500_000_999_999_000, 5, b"short", LINKTYPE_ETHERNET),
        (10 * 10**9 + 7, 2, b"v4", LINKTYPE_IPV4),
    ]
    assert capture_info(path)["linktypes"] == [LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_IPV4]


@pytest.mark.parametrize(
    ("tsresol", "ticks", "ts_ns"),
    [
        (0, 7, 7 * 10**9),  # seconds
        (3, 1234, 1_234_000_000),  # milliseconds
        (6, 1_234_567, 1_234_567_000),
        (9, 1_234_567_891, 1_234_567_891),
        (12, 1_234_567_891_999, 1_234_567_891),  # picoseconds: floor to ns
        (0x80 | 10, 1536, 1_500_000_000),  # 1/1024 s
        (0x80 | 30, 3, 2),  # 3 / 2**30 s = 2.79 ns
    ],
)
def test_pcapng_tsresol(tmp_path: Path, tsresol: int, ticks: int, ts_ns: int) -> None:
    path = tmp_path / "res.pcapng"
    path.write_bytes(shb("<") + idb("<", 1, tsresol=tsresol) + epb("<", 0, ticks, b"x"))
    assert [p.ts_ns for p in read_capture(path)] == [ts_ns]


def test_pcapng_section_resets_interfaces(tmp_path: Path) -> None:
    path = tmp_path / "reset.pcapng"
    raw = shb("<") + idb("<", 1) + idb("<", 101) + epb("<", 1, 1, b"a") + shb("<") + idb("<", 1)
    path.write_bytes(raw + epb("<", 1, 2, b"b"))  # interface 1 belonged to the first section
    got, found = read_all(path)
    assert [p.data for p in got] == [b"a"]
    assert len(found) == 1 and "interface 1" in found[0] and "read 1 packets" in found[0]


# -- damage --------------------------------------------------------------


def check_cut(path: Path, cut: int, full: list[CapturedPacket], keep: int, clean: bool) -> None:
    damaged = path.with_name(f"cut{cut}{path.suffix}")
    damaged.write_bytes(path.read_bytes()[:cut])
    got, found = read_all(damaged)
    assert [key(p) for p in got] == [key(p) for p in full[:keep]]
    if clean:
        assert found == []
    else:
        assert len(found) == 1
        assert str(damaged) in found[0]
        assert f"truncated at byte {cut}" in found[0]
        assert f"read {keep} packets before the damage" in found[0]


def test_truncated_pcap(tmp_path: Path, traffic: Callable[[str], Path]) -> None:
    path = tmp_path / "full.pcap"
    path.write_bytes(traffic("tcpreplay-test.pcap").read_bytes())
    full = list(read_capture(path))
    bounds = pcap_boundaries(path.read_bytes())
    check_cut(path, 10, full, 0, clean=False)  # inside the file header
    check_cut(path, 24, full, 0, clean=True)  # header only: an empty capture
    for k in (0, 1, 50, len(full) - 1):
        check_cut(path, bounds[k], full, k, clean=True)
        check_cut(path, bounds[k] + 7, full, k, clean=False)  # inside a record header
        check_cut(path, bounds[k] + 16 + 5, full, k, clean=False)  # inside packet data
    check_cut(path, bounds[-1] - 1, full, len(full) - 1, clean=False)
    damaged = tmp_path / "cut.pcap"
    damaged.write_bytes(path.read_bytes()[: bounds[3] + 7])
    assert "record 4 at byte" in read_all(damaged)[1][0]


def test_truncated_pcapng(tmp_path: Path, traffic: Callable[[str], Path]) -> None:
    path = tmp_path / "full.pcapng"
    with PcapngWriter(path) as w:
        for i, p in enumerate(read_capture(traffic("tcpreplay-test.pcap"))):
            w.write(p.linktype, p.ts_ns, p.data, p.orig_len, comment=f"snf id={i}")
    full = list(read_capture(path))
    raw = path.read_bytes()
    epbs = [off for btype, off in pcapng_blocks(raw) if btype == 6]
    check_cut(path, 20, full, 0, clean=False)  # inside the section header
    check_cut(path, epbs[0], full, 0, clean=True)
    for k in (0, 1, 50, len(full) - 1):
        check_cut(path, epbs[k], full, k, clean=True)
        check_cut(path, epbs[k] + 6, full, k, clean=False)  # inside the block header
        check_cut(path, epbs[k] + 30, full, k, clean=False)  # inside packet data
    check_cut(path, len(raw) - 2, full, len(full) - 1, clean=False)  # inside the trailer


def test_corrupt_pcap_record_length(tmp_path: Path) -> None:
    raw = bytearray(pcap(RECORDS * 3))
    bounds = pcap_boundaries(bytes(raw))
    struct.pack_into("<I", raw, bounds[2] + 8, 0x7FFFFFFF)
    path = tmp_path / "bad.pcap"
    path.write_bytes(bytes(raw))
    got, found = read_all(path)
    assert len(got) == 2
    assert len(found) == 1 and "corrupt record 3" in found[0]


def test_corrupt_pcapng_trailer(tmp_path: Path) -> None:
    raw = bytearray(shb("<") + idb("<", 1) + epb("<", 0, 1, b"a") + epb("<", 0, 2, b"b"))
    raw[-1] ^= 0xFF
    path = tmp_path / "bad.pcapng"
    path.write_bytes(bytes(raw))
    got, found = read_all(path)
    assert [p.data for p in got] == [b"a"]
    assert len(found) == 1 and "trailing length" in found[0]


def test_pcapng_timestamps_outside_int64_ns_are_damage(tmp_path: Path) -> None:
    # 2^63 ns and more, or before 1970 (a negative if_tsoffset): the packets
    # before it are read, then one warning names the file, the packet and the range.
    path = tmp_path / "late.pcapng"
    path.write_bytes(
        shb("<") + idb("<", 1, tsresol=9) + epb("<", 0, 10**18, b"a") + epb("<", 0, 1 << 63, b"b")
    )
    got, found = read_all(path)
    assert [p.data for p in got] == [b"a"]
    assert found == [
        f"{path}: packet 2 at byte {len(path.read_bytes()) - 36}: timestamp {1 << 63} ns is "
        "outside 0..2^63-1 ns (1970 to 2262); read 1 packets before the damage"
    ]
    path.write_bytes(shb("<") + idb("<", 1, tsresol=9, tsoffset=-10) + epb("<", 0, 2000, b"a"))
    got, found = read_all(path)
    assert got == [] and len(found) == 1
    assert (
        "packet 1 at byte 72: timestamp -9999998000 ns (if_tsoffset -10 s) is outside" in found[0]
    )
    # A negative offset is fine while the time stays after 1970.
    path.write_bytes(shb("<") + idb("<", 1, tsoffset=-10) + epb("<", 0, 11 * 10**6, b"a"))
    assert [p.ts_ns for p in read_capture(path)] == [10**9]


def test_default_warning_is_a_capture_warning(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    path.write_bytes(pcap(RECORDS)[:-1])
    with pytest.warns(CaptureWarning, match="truncated"):
        assert len(list(read_capture(path))) == 1


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xd4\xc3",
        b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n",
        struct.pack("<IHHiIII", 0xA1B2C3D4, 1, 0, 0, 0, 65535, 1),  # pcap version 1
        b"\x0a\x0d\x0d\x0a" + struct.pack("<II", 28, 0x12345678) + bytes(16),  # bad BOM
    ],
)
def test_not_a_capture(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=r"garbage\.bin"):
        read_capture(path)  # raises at the call, before any iteration


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"nothere\.pcap"):
        read_capture(tmp_path / "nothere.pcap")


SMALL = {
    "pcap": pcap(RECORDS * 2, nano=True),
    "pcapng": shb("<")
    + idb("<", 1)
    + idb("<", 101, tsresol=0x85)
    + epb("<", 1, 9, b"abcde")
    + pb("<", 0, 7, b"xy")
    + spb("<", b"q", 1)
    + shb(">")
    + idb(">", 1)
    + epb(">", 0, 3, b"z"),
}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(SMALL)),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(0, 300),
)
def test_damage_never_raises_past_the_header(
    tmp_path_factory: pytest.TempPathFactory, kind: str, edits: list, cut: int
) -> None:
    raw = bytearray(SMALL[kind])
    for pos, value in edits:
        raw[pos % len(raw)] = value
    path = tmp_path_factory.mktemp("fuzz") / f"x.{kind}"
    path.write_bytes(bytes(raw[:cut]))
    try:
        records = read_capture(path, on_warning=lambda message: None)
    except CaptureError:
        return
    for p in records:
        assert isinstance(p.data, bytes) and isinstance(p.ts_ns, int) and p.orig_len >= 0
