"""Reading pcap and pcapng files, in bulk, with exact ns timestamps.

`read_chunks` is the replay's path: one walk over the record (block)
headers of a memory-mapped file, which only collects where each packet
starts, then numpy reads the header fields of a whole chunk at once. A
CaptureChunk is arrays (time, lengths, link type, start in the file) over the
file's bytes: nothing is copied per packet until a batch is built.
`read_capture` yields one CapturedPacket per record, for tools and tests.

dpkt's header classes parse the file header, SHBs and IDBs; the record walk
is ours because dpkt's readers give float timestamps, drop the original
length, honour only the first pcapng interface and build an object per
record (too slow for a replay).

A damaged file (cut short, or a record that cannot be right) yields every
packet before the damage, reports it through `on_warning` and stops.
"""

from __future__ import annotations

import mmap
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import dpkt.pcap as dpcap
import dpkt.pcapng as dpng
import numpy as np
from dpkt import Error as DpktError

from snf.errors import SnfError
from snf.packet.capture_chunk import CaptureChunk

__all__ = [
    "CHUNK_PACKETS",
    "CaptureError",
    "CaptureWarning",
    "CapturedPacket",
    "capture_info",
    "read_capture",
    "read_chunks",
]

CHUNK_PACKETS = 8192  # packets per CaptureChunk: numpy's fixed costs amortised, memory small
# A timestamp must fit int64 ns and not precede 1970: the wire format, the pcapng
# writer and packet-time expiry all take it as an unsigned count (0 .. 2^63-1 ns).
_TS_MIN, _TS_MAX = 0, (1 << 63) - 1

_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"  # SHB block type: the same in both byte orders
_BOM = 0x1A2B3C4D
_MAX_CAPLEN = 1 << 18  # libpcap's limit for ordinary link types; beyond it a header is garbage
_SHB, _IDB, _PB, _SPB, _EPB = 0x0A0D0D0A, 1, 2, 3, 6
_STRUCTS = {  # per byte order: block head, EPB fields, PB fields, u32
    bo: (
        struct.Struct(bo + "II").unpack_from,
        struct.Struct(bo + "IIIII").unpack_from,
        struct.Struct(bo + "HHIIII").unpack_from,
        struct.Struct(bo + "I").unpack_from,
    )
    for bo in "<>"
}


class CaptureError(SnfError):
    """A file that is not a capture snf can read."""


class CaptureWarning(UserWarning):
    """A capture is damaged; the packets before the damage were read."""


@dataclass(slots=True)
class CapturedPacket:
    ts_ns: int  # ns since the epoch
    orig_len: int  # length on the wire
    data: bytes  # captured bytes (may be shorter than orig_len)
    linktype: int


def _default_warning(message: str) -> None:
    warnings.warn(message, CaptureWarning, stacklevel=3)


def read_chunks(
    path: str | Path,
    on_warning: Callable[[str], None] | None = None,
    chunk_packets: int = CHUNK_PACKETS,
) -> Iterator[CaptureChunk]:
    """The packets of a pcap or pcapng file as CaptureChunks, in file order.

    The file header is checked now, so a file that is not a capture raises
    CaptureError here rather than on the first `next()`.
    """
    name = os.fspath(path)
    buf = _load(name)
    warn = on_warning or _default_warning
    if len(buf) < 4:
        raise CaptureError(f"{name}: not a capture file ({len(buf)} bytes, too short)")
    walker = _pcapng_chunks if buf[:4] == _PCAPNG_MAGIC else _pcap_chunks
    chunks = walker(buf, name, warn, max(1, chunk_packets))
    try:
        next(chunks)  # runs the header checks up to the first record
    except StopIteration:
        return iter(())
    return cast(Iterator[CaptureChunk], chunks)


def read_capture(
    path: str | Path, on_warning: Callable[[str], None] | None = None
) -> Iterator[CapturedPacket]:
    """Packets of a pcap or pcapng file, in file order, one object each."""
    chunks = read_chunks(path, on_warning)

    def packets() -> Iterator[CapturedPacket]:
        for chunk in chunks:
            columns = zip(
                chunk.ts_ns.tolist(),
                chunk.orig_len.tolist(),
                chunk.packets(),
                chunk.linktype.tolist(),
                strict=True,
            )
            for ts, orig, data, lt in columns:
                yield CapturedPacket(ts, orig, data, lt)

    return packets()


def capture_info(path: str | Path) -> dict[str, Any]:
    """Summary for the CLI: format, packets, link types, bytes, time span, warnings."""
    found: list[str] = []
    count = caplen = origlen = 0
    first = last = None
    linktypes: set[int] = set()
    for chunk in read_chunks(path, on_warning=found.append):
        if first is None:
            first = int(chunk.ts_ns[0])
        last = int(chunk.ts_ns[-1])
        count += len(chunk)
        caplen += int(chunk.cap_len.sum())
        origlen += int(chunk.orig_len.sum())
        linktypes.update(np.unique(chunk.linktype).tolist())
    with open(path, "rb") as f:
        fmt = "pcapng" if f.read(4) == _PCAPNG_MAGIC else "pcap"
    return {
        "format": fmt,
        "packets": count,
        "linktypes": sorted(linktypes),
        "bytes": caplen,
        "orig_bytes": origlen,
        "first_ts_ns": first,
        "last_ts_ns": last,
        "warnings": found,
    }


def _load(name: str) -> bytes | mmap.mmap:
    """The whole file, mapped when possible (no copy, no read of the unused tail)."""
    try:
        with open(name, "rb") as f:
            try:
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (ValueError, OSError):  # empty file, pipe, or a filesystem without mmap
                return f.read()
    except OSError as e:
        raise CaptureError(f"{name}: cannot read: {e.strerror or e}") from e


def _lost(name: str, count: int, what: str) -> str:
    return f"{name}: {what}; read {count} packets before the damage"


def _pcap_chunks(
    buf: Any, name: str, warn: Callable[[str], None], chunk_packets: int
) -> Iterator[Any]:
    magic = buf[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\x34\xcd\xb2\xa1"):
        hdr_cls: type[dpcap.FileHdr] = dpcap.LEFileHdr
        bo = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d", b"\xa1\xb2\xcd\x34"):
        hdr_cls, bo = dpcap.FileHdr, ">"
    else:
        raise CaptureError(f"{name}: not a pcap or pcapng file (starts with {magic.hex()})")
    size = len(buf)
    if size < 24:
        warn(_lost(name, 0, f"truncated at byte {size} (inside the 24-byte file header)"))
        return
    fh = hdr_cls(buf[:24])
    if fh.v_major != dpcap.PCAP_VERSION_MAJOR:
        raise CaptureError(f"{name}: unsupported pcap version {fh.v_major}.{fh.v_minor}")
    # fh.magic reads the same in both byte orders once parsed with the right class
    mult = 1 if fh.magic == dpcap.TCPDUMP_MAGIC_NANO else 1000
    # The modified (Kuznetzov) format adds 8 bytes to each record header.
    hlen = 24 if fh.magic == dpcap.MODPCAP_MAGIC else 16
    linktype = fh.linktype & 0x03FFFFFF  # upper bits carry FCS information
    limit = max(fh.snaplen, _MAX_CAPLEN)
    caplen_at = struct.Struct(bo + "I").unpack_from
    fields = np.dtype(f"{bo}u4")
    yield None  # header accepted
    off, count, bad = 24, 0, ""
    starts: list[int] = []
    while True:
        # The walk only follows the chain of lengths; numpy reads the rest.
        while off < size and len(starts) < chunk_packets:
            body = off + hlen
            if body > size:
                break
            caplen = caplen_at(buf, off + 8)[0]
            if caplen > limit:
                bad = f"corrupt record {count + len(starts) + 1} at byte {off} "
                bad += f"(captured length {caplen} > {limit})"
                break
            if body + caplen > size:
                break
            starts.append(body)
            off = body + caplen
        if starts:
            yield _pcap_chunk(buf, np.array(starts, dtype=np.int64), hlen, fields, mult, linktype)
            count += len(starts)
            full = len(starts) == chunk_packets
            starts = []
            if full:
                continue
        break
    if off >= size:
        return
    if not bad:
        part = "header" if off + hlen > size else "data"
        where = f"record {count + 1} at byte {off} is cut short in its {part}"
        bad = f"truncated at byte {size} ({where})"
    warn(_lost(name, count, bad))


def _pcap_chunk(
    buf: Any, start: np.ndarray, hlen: int, fields: np.dtype, mult: int, linktype: int
) -> CaptureChunk:
    raw = np.frombuffer(buf, dtype=np.uint8)
    heads = raw[(start - hlen)[:, None] + np.arange(16)]  # (n, 16): sec frac caplen origlen
    sec, frac, caplen, origlen = heads.view(fields).astype(np.int64).T
    return CaptureChunk(
        buf,
        start,
        caplen,
        origlen,
        sec * 1_000_000_000 + frac * mult,
        np.full(len(start), linktype),
    )


def _interface(block: bytes, bo: str) -> tuple[int, int, int, int, int]:
    """(linktype, mul, div, offset_ns, snaplen): ts_ns = ticks * mul // div + offset_ns."""
    idb = (dpng.InterfaceDescriptionBlockLE if bo == "<" else dpng.InterfaceDescriptionBlock)(block)
    resol, offset = 6, 0  # microseconds unless if_tsresol says otherwise
    for opt in idb.opts:
        if opt.code == dpng.PCAPNG_OPT_IF_TSRESOL and len(opt.data) >= 1:
            resol = opt.data[0]
        elif opt.code == dpng.PCAPNG_OPT_IF_TSOFFSET and len(opt.data) >= 8:
            offset = struct.unpack_from(bo + "q", opt.data)[0]
    if resol & 0x80:  # negative power of 2
        mul, div = 1_000_000_000, 1 << (resol & 0x7F)
    else:  # negative power of 10
        mul, div = (10 ** (9 - resol), 1) if resol <= 9 else (1, 10 ** (resol - 9))
    return idb.linktype, mul, div, offset * 1_000_000_000, idb.snaplen


def _pcapng_chunks(
    buf: Any, name: str, warn: Callable[[str], None], chunk_packets: int
) -> Iterator[Any]:
    size = len(buf)
    bo = "<"
    head, epb, pb, u32 = _STRUCTS[bo]
    ifaces: list[tuple[int, int, int, int, int]] = []  # see _interface()
    cols: tuple[list[int], ...] = ([], [], [], [], [])  # start caplen origlen ts linktype
    start = cols[0]
    off = count = ts = 0
    bad = ""
    while off + 12 <= size:
        if len(start) >= chunk_packets:
            yield _columns_chunk(buf, cols)
            count += len(start)
            for col in cols:
                col.clear()
        btype, blen = head(buf, off)
        if btype == _SHB:  # a new section may switch byte order
            bom = _STRUCTS["<"][3](buf, off + 8)[0]
            if bom not in (_BOM, 0x4D3C2B1A):
                bad = f"section header at byte {off} has a bad byte-order mark"
                break
            bo = "<" if bom == _BOM else ">"
            head, epb, pb, u32 = _STRUCTS[bo]
            blen = head(buf, off)[1]
        end = off + blen
        if blen < 12 or blen & 3:
            bad = f"corrupt block at byte {off} (length {blen})"
            break
        if end > size:
            break
        if u32(buf, end - 4)[0] != blen:
            bad = f"corrupt block at byte {off} (trailing length differs)"
            break
        if btype in (_EPB, _PB, _SPB):
            number = count + len(start) + 1
            row, bad = _packet_block(buf, off, btype, blen, ifaces, (ts, number), (epb, pb, u32))
            if bad:
                break
            for col, value in zip(cols, row, strict=True):
                col.append(value)
            ts = row[3]
        elif btype == _IDB:
            try:
                ifaces.append(_interface(buf[off:end], bo))
            except (DpktError, struct.error, ValueError, IndexError):
                bad = f"corrupt interface block at byte {off}"
                break
        elif btype == _SHB:
            if not _section_ok(buf[off:end], bo):
                bad = f"unreadable section header at byte {off}"
                break
            ifaces = []  # interface ids are per section
            if off == 0:
                yield None  # header accepted
        off = end
    if start:
        yield _columns_chunk(buf, cols)
        count += len(start)
    if off >= size and not bad:
        return
    if not bad:
        bad = f"truncated at byte {size} (block at byte {off} is cut short)"
    elif off == 0:  # nothing was accepted: this is no capture at all
        raise CaptureError(f"{name}: not a readable pcapng file ({bad})")
    warn(_lost(name, count, bad))


def _packet_block(
    buf: Any,
    off: int,
    btype: int,
    blen: int,
    ifaces: list[tuple[int, int, int, int, int]],
    previous: tuple[int, int],
    unpack: tuple[Callable[..., Any], ...],
) -> tuple[tuple[int, int, int, int, int], str]:
    """(start, caplen, origlen, ts_ns, linktype) of a packet block, or the damage.

    `previous` is (the previous packet's ts_ns, this packet's 1-based number).
    """
    epb, pb, u32 = unpack
    ts, number = previous
    if btype == _SPB:  # no timestamp: keep the previous one
        if not ifaces or blen < 16:
            return (
                0,
            ) * 5, f"corrupt simple packet block at byte {off} (no interface or too short)"
        origlen = u32(buf, off + 8)[0]
        return (
            off + 12,
            min(origlen, blen - 16, ifaces[0][4] or blen),
            origlen,
            ts,
            ifaces[0][0],
        ), ""
    if blen < 32:
        return (0,) * 5, f"corrupt packet block at byte {off} (length {blen})"
    if btype == _EPB:
        iface, hi, lo, caplen, origlen = epb(buf, off + 8)
    else:
        iface, _drops, hi, lo, caplen, origlen = pb(buf, off + 8)
    if iface >= len(ifaces) or 32 + caplen > blen:
        return (0,) * 5, f"corrupt packet block at byte {off} (interface {iface}, length {caplen})"
    linktype, mul, div, tsoff, _snaplen = ifaces[iface]
    ts = ((hi << 32 | lo) * mul) // div + tsoff
    if not _TS_MIN <= ts <= _TS_MAX:
        offset = f" (if_tsoffset {tsoff // 1_000_000_000} s)" if tsoff else ""
        what = f"timestamp {ts} ns{offset} is outside 0..2^63-1 ns (1970 to 2262)"
        return (0,) * 5, f"packet {number} at byte {off}: {what}"
    return (off + 28, caplen, origlen, ts, linktype), ""


def _section_ok(block: Any, bo: str) -> bool:
    cls = dpng.SectionHeaderBlockLE if bo == "<" else dpng.SectionHeaderBlock
    try:
        return bool(cls(block).v_major == dpng.PCAPNG_VERSION_MAJOR)
    except (DpktError, struct.error, ValueError, IndexError):
        return False


def _columns_chunk(buf: Any, cols: tuple[list[int], ...]) -> CaptureChunk:
    start, caps, origs, stamps, kinds = (np.array(c, dtype=np.int64) for c in cols)
    return CaptureChunk(buf, start, caps, origs, stamps, kinds)
