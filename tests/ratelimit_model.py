"""Reference model of the ratelimit function, written from its semantics alone.

An independent check of `functions/ratelimit.py` (see docs/functions/ratelimit.md).
It walks the Ethernet, VLAN and MPLS headers by hand, decodes IP and L4 with dpkt, keeps
tokens as exact `fractions.Fraction`s in units of packets or bytes (no
scaling), and holds one global state in capture order: no batches, no
partitions, no write-on-change. It imports nothing from snf.

Semantics modelled
    * Ethernet, VLAN tags and MPLS labels are walked by hand.
    * Frames without IP pass unpoliced. Frames that claim IP but whose IP or
      port header is cut short: drop, "malformed".
    * Key flow: (version, proto, {(src, sport), (dst, dport)}); ports are the
      TCP/UDP/DCCP/SCTP/UDP-Lite ports, the ICMP/ICMPv6 echo identifier (as
      both), else 0. A non-first fragment belongs to the flow of its
      datagram's first fragment (same version, src, dst, proto, IP id) seen
      within 30 s either side of it, else to its own flow (ports 0).
      Key src / dst: the source / destination address.
    * Bucket: `burst` tokens (packets, or bytes for bit rates), refilled at
      rate/1e9 packets per ns (bits/8e9 bytes per ns) from the bucket's time,
      capped at burst. Time never moves back. A packet conforms when the
      bucket holds its cost (1 packet, or orig_len bytes) and then takes it.
      A bucket that is full is forgotten (absent means full, with no time).
    * Exceeding: port "exceed", reason "rate"; or with action mark, port
      "pass", reason "marked" and DSCP set (ECN kept, IPv4 checksum redone).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import dpkt

from tests.model_decode import read_l4

__all__ = ["ModelPacket", "decode", "model_outcomes", "model_rate"]

NS = 1_000_000_000
FRAG_TTL = 30 * NS
VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
UNITS = {"pps": 1, "bps": 1, "kbps": 1000, "Kbps": 1000, "Mbps": 10**6, "Gbps": 10**9}

Outcome = tuple[str, str, bytes]  # port, reason, frame as it leaves


@dataclass
class ModelPacket:
    version: int
    proto: int
    src: bytes
    dst: bytes
    l3: int  # offset of the IP header in the frame
    sport: int = 0
    dport: int = 0
    datagram: tuple[Any, ...] | None = None  # (version, src, dst, proto, id) of a fragment
    later: bool = False  # non-first fragment

    @property
    def flow(self) -> tuple[Any, ...]:
        ends = frozenset({(self.src, self.sport), (self.dst, self.dport)})
        return (self.version, self.proto, ends)

    @property
    def own_flow(self) -> tuple[Any, ...]:
        """The flow with ports 0 (for a fragment without a known first fragment)."""
        return (self.version, self.proto, frozenset({(self.src, 0), (self.dst, 0)}))


def model_rate(text: str) -> tuple[Fraction, bool]:
    """(units per ns, bits?) where units are packets for pps, bytes for bit rates."""
    text = text.strip()
    for unit, mult in sorted(UNITS.items(), key=lambda u: -len(u[0])):  # "kbps" before "bps"
        if text.endswith(unit) and text[: -len(unit)].strip():
            per_s = Fraction(text[: -len(unit)].strip()) * mult
            bits = unit != "pps"
            return per_s / (8 * NS if bits else NS), bits
    raise ValueError(text)


def decode(frame: bytes, off: int = 0) -> ModelPacket | str:
    """The frame's ModelPacket, or "non_ip", or "malformed". Link layer: Ethernet at
    `off`, VLAN tags, MPLS labels (IP by its first nibble, or a pseudowire Ethernet
    frame after a zero control word)."""
    if len(frame) < off + 14:
        return "malformed"
    off += 12
    (etype,) = struct.unpack_from("!H", frame, off)
    while etype in VLAN_TYPES:
        off += 4
        if len(frame) < off + 2:
            return "malformed"
        (etype,) = struct.unpack_from("!H", frame, off)
    l3 = off + 2
    if etype in (0x8847, 0x8848):
        while True:
            if len(frame) < l3 + 4:
                return "malformed"
            bottom = frame[l3 + 2] & 1
            l3 += 4
            if bottom:
                break
        nibble = frame[l3] >> 4 if len(frame) > l3 else 0
        if nibble in (4, 6):
            etype = 0x0800 if nibble == 4 else 0x86DD
        elif frame[l3 : l3 + 4] == bytes(4):
            return decode(frame, l3 + 4)
        else:
            return "non_ip"
    if etype not in (0x0800, 0x86DD):
        return "non_ip"
    try:
        ip: Any = dpkt.ip.IP(frame[l3:]) if etype == 0x0800 else dpkt.ip6.IP6(frame[l3:])
    except (dpkt.UnpackError, dpkt.NeedData):
        return "malformed"
    if ip.v != (4 if etype == 0x0800 else 6):
        return "malformed"
    if ip.v == 4:
        if len(ip.opts) != ip.hl * 4 - 20 or ip.len < ip.hl * 4:
            return "malformed"
        first = bool(ip.mf) and ip.offset == 0
        later = ip.offset > 0
        pkt = ModelPacket(4, ip.p, ip.src, ip.dst, l3, later=later)
        if first or later:
            pkt.datagram = (4, ip.src, ip.dst, ip.p, ip.id)
    else:
        pkt = ModelPacket(6, ip.p, ip.src, ip.dst, l3)
        for ext in ip.all_extension_headers:
            if isinstance(ext, dpkt.ip6.IP6FragmentHeader) and (ext.frag_off or ext.m_flag):
                pkt.datagram = (6, ip.src, ip.dst, ip.p, ext.id)
                pkt.later = ext.frag_off > 0
    if pkt.later:
        return pkt
    l4 = read_l4(pkt.proto, ip.data)
    if isinstance(l4, str):
        return l4
    if l4.sport is not None:
        pkt.sport, pkt.dport = l4.sport, l4.dport or 0
    elif l4.echo_id is not None:
        pkt.sport = pkt.dport = l4.echo_id
    return pkt


def _cksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _marked(frame: bytes, pkt: ModelPacket, dscp: int) -> bytes:
    """The frame with DSCP `dscp`: IPv4 checksum recomputed from scratch; IPv6 word edit."""
    out = bytearray(frame)
    l3 = pkt.l3
    if pkt.version == 4:
        out[l3 + 1] = dscp << 2 | (out[l3 + 1] & 3)
        ihl = (out[l3] & 0x0F) * 4
        out[l3 + 10 : l3 + 12] = b"\x00\x00"
        out[l3 + 10 : l3 + 12] = struct.pack("!H", _cksum(bytes(out[l3 : l3 + ihl])))
    else:
        (word,) = struct.unpack_from("!I", out, l3)
        tc = (word >> 20) & 0xFF
        word = (word & ~(0xFF << 20)) | ((dscp << 2 | (tc & 3)) << 20)
        struct.pack_into("!I", out, l3, word)
    return bytes(out)


def model_outcomes(packets: list[tuple[int, int, bytes]], config: dict[str, Any]) -> list[Outcome]:
    """(port, reason, frame out) per (ts_ns, orig_len, Ethernet frame), in order."""
    rate, bits = model_rate(config["rate"])
    burst = Fraction(config["burst"])
    key_kind = config.get("key", "flow")
    mark = config.get("action", "drop") == "mark"
    dscp = config.get("dscp")
    buckets: dict[Any, tuple[Fraction, int]] = {}  # absent: full
    first_fragments: dict[tuple[Any, ...], tuple[int, Any]] = {}  # datagram -> (ts, flow)
    out: list[Outcome] = []
    for ts, orig_len, frame in packets:
        pkt = decode(frame)
        if pkt == "non_ip":
            out.append(("pass", "", frame))
            continue
        if isinstance(pkt, str):
            out.append(("drop", "malformed", frame))
            continue
        if key_kind == "src":
            key: Any = pkt.src
        elif key_kind == "dst":
            key = pkt.dst
        elif pkt.later:
            seen = first_fragments.get(pkt.datagram)
            key = seen[1] if seen and abs(ts - seen[0]) <= FRAG_TTL else pkt.own_flow
        else:
            key = pkt.flow
            if pkt.datagram is not None:
                first_fragments[pkt.datagram] = (ts, key)
        if key in buckets:
            tokens, last = buckets[key]
            if ts > last:
                tokens, last = min(burst, tokens + (ts - last) * rate), ts
        else:
            tokens, last = burst, ts
        cost = orig_len if bits else 1
        if tokens >= cost:
            tokens -= cost
            out.append(("pass", "", frame))
        elif mark:
            out.append(("pass", "marked", _marked(frame, pkt, dscp)))
        else:
            out.append(("exceed", "rate", frame))
        if tokens == burst:
            buckets.pop(key, None)
        else:
            buckets[key] = (tokens, last)
    return out
