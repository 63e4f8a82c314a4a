"""Reading pcap and pcapng files into CapturedPackets with exact ns timestamps.

dpkt's header classes parse the file header, SHBs and IDBs; the per-record
loop is ours, over a memory map with `struct` at fixed offsets, because dpkt's
readers give float timestamps, drop the original length, honour only the first
pcapng interface and build an object per record (too slow for a replay).

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
from dpkt import Error as DpktError

from snf.errors import SnfError

__all__ = ["CaptureError", "CaptureWarning", "CapturedPacket", "capture_info", "read_capture"]

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


def read_capture(
    path: str | Path, on_warning: Callable[[str], None] | None = None
) -> Iterator[CapturedPacket]:
    """Packets of a pcap or pcapng file, in file order.

    The file header is checked now, so a file that is not a capture raises
    CaptureError here rather than on the first `next()`.
    """
    name = os.fspath(path)
    buf = _load(name)
    warn = on_warning or _default_warning
    if len(buf) < 4:
        raise CaptureError(f"{name}: not a capture file ({len(buf)} bytes, too short)")
    reader = _pcapng_records if buf[:4] == _PCAPNG_MAGIC else _pcap_records
    records = reader(buf, name, warn)
    try:
        next(records)  # runs the header checks up to the first record
    except StopIteration:
        return iter(())
    return cast(Iterator[CapturedPacket], records)


def capture_info(path: str | Path) -> dict[str, Any]:
    """Summary for the CLI: format, packets, link types, bytes, time span, warnings."""
    found: list[str] = []
    count = caplen = origlen = 0
    first = last = None
    linktypes: set[int] = set()
    for p in read_capture(path, on_warning=found.append):
        if first is None:
            first = p.ts_ns
        last = p.ts_ns
        count += 1
        caplen += len(p.data)
        origlen += p.orig_len
        linktypes.add(p.linktype)
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


def _pcap_records(buf: Any, name: str, warn: Callable[[str], None]) -> Iterator[Any]:
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
    unpack = struct.Struct(bo + "IIII").unpack_from
    packet = CapturedPacket
    yield None  # header accepted
    off, count, bad = 24, 0, ""
    while off < size:
        body = off + hlen
        if body > size:
            break
        sec, frac, caplen, origlen = unpack(buf, off)
        end = body + caplen
        if caplen > limit:
            bad = f"corrupt record {count + 1} at byte {off} (captured length {caplen} > {limit})"
            break
        if end > size:
            break
        yield packet(sec * 1_000_000_000 + frac * mult, origlen, buf[body:end], linktype)
        count += 1
        off = end
    else:
        return
    if not bad:
        part = "header" if off + hlen > size else "data"
        where = f"record {count + 1} at byte {off} is cut short in its {part}"
        bad = f"truncated at byte {size} ({where})"
    warn(_lost(name, count, bad))


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


def _pcapng_records(buf: Any, name: str, warn: Callable[[str], None]) -> Iterator[Any]:
    size = len(buf)
    bo = "<"
    head, epb, pb, u32 = _STRUCTS[bo]
    ifaces: list[tuple[int, int, int, int, int]] = []  # see _interface()
    packet = CapturedPacket
    off = count = ts = 0
    bad = ""
    while off + 12 <= size:
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
        if btype in (_EPB, _PB):
            if blen < 32:
                bad = f"corrupt packet block at byte {off} (length {blen})"
                break
            if btype == _EPB:
                iface, hi, lo, caplen, origlen = epb(buf, off + 8)
            else:
                iface, _drops, hi, lo, caplen, origlen = pb(buf, off + 8)
            if iface >= len(ifaces) or 32 + caplen > blen:
                bad = f"corrupt packet block at byte {off} (interface {iface}, length {caplen})"
                break
            linktype, mul, div, tsoff, _snaplen = ifaces[iface]
            ts = ((hi << 32 | lo) * mul) // div + tsoff
            yield packet(ts, origlen, buf[off + 28 : off + 28 + caplen], linktype)
            count += 1
        elif btype == _SPB:  # no timestamp: keep the previous one
            if not ifaces or blen < 16:
                bad = f"corrupt simple packet block at byte {off} (no interface or too short)"
                break
            origlen = u32(buf, off + 8)[0]
            caplen = min(origlen, blen - 16, ifaces[0][4] or blen)
            yield packet(ts, origlen, buf[off + 12 : off + 12 + caplen], ifaces[0][0])
            count += 1
        elif btype == _IDB:
            try:
                ifaces.append(_interface(buf[off:end], bo))
            except (DpktError, struct.error, ValueError, IndexError):
                bad = f"corrupt interface block at byte {off}"
                break
        elif btype == _SHB:
            cls = dpng.SectionHeaderBlockLE if bo == "<" else dpng.SectionHeaderBlock
            try:
                major = cls(buf[off:end]).v_major
            except (DpktError, struct.error, ValueError, IndexError):
                major = -1
            if major != dpng.PCAPNG_VERSION_MAJOR:
                bad = f"unreadable section header at byte {off} (version {major})"
                break
            ifaces = []  # interface ids are per section
            if off == 0:
                yield None  # header accepted
        off = end
    else:
        if off >= size:
            return
    if not bad:
        bad = f"truncated at byte {size} (block at byte {off} is cut short)"
    elif off == 0:  # nothing was accepted: this is no capture at all
        raise CaptureError(f"{name}: not a readable pcapng file ({bad})")
    warn(_lost(name, count, bad))
