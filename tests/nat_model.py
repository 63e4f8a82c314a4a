"""Reference model of the NAT, written from docs/functions/nat.md alone.

A checker more than a predictor. The NAT picks public ports by hashing, so
for a *new* binding the model adopts the public endpoint the NAT chose, after
checking that the choice was allowed: paired pooling (one public IP per
internal IP), inside the port range, not a forward's port, not held by
another live binding, and on the internal endpoint's partition. Everything
else it predicts: the port and reason of every packet, and every byte of
every output packet except the checksum fields; a checksum that verified in
the input must verify in the output, and a zero UDP checksum must stay zero.

It decodes with dpkt and its own offsets, keeps one global state in packet
order (no partitions, no batches, no lazy deletion) and imports nothing from
the core; `snf.packet.flowkey.endpoint_hash`, the pipeline's partitioning contract,
is used only to check where a chosen port lands.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any

import dpkt

from snf.packet.flowkey import endpoint_hash

__all__ = ["NatModel", "View", "decode"]

NS = 1_000_000_000
ERRORS = {3, 4, 11, 12}
MAX_REMOTES = 64
FRAG_NS = 30 * NS
PROTOS = {"tcp": 6, "udp": 17}
L4_MIN = {6: 20, 17: 8}


@dataclass
class View:
    """Offsets and fields of an IPv4 packet in a frame."""

    l3: int
    l4: int
    end: int  # end of the IP packet within the captured bytes
    proto: int
    src: bytes
    dst: bytes
    ip_id: int
    first: bool  # first fragment (MF, offset 0)
    later: bool  # non-first fragment
    sport: int = 0
    dport: int = 0
    icmp_type: int = -1
    flags: int = 0


def decode(frame: bytes) -> View | str:
    """A frame's View, or "non_ip", "ipv6" or "malformed" (Ethernet, 802.1Q tags)."""
    if len(frame) < 14:
        return "malformed"
    off, etype = 14, struct.unpack_from("!H", frame, 12)[0]
    while etype in (0x8100, 0x88A8):
        if len(frame) < off + 4:
            return "malformed"
        etype, off = struct.unpack_from("!H", frame, off + 2)[0], off + 4
    if etype == 0x86DD:
        return "ipv6"
    if etype != 0x0800:
        return "non_ip"
    raw = frame[off:]
    if len(raw) < 20 or raw[0] >> 4 != 4:
        return "malformed"
    hl = (raw[0] & 15) * 4
    total, ip_id, frag, proto = struct.unpack_from("!2xHHH1xB", raw)
    if hl < 20 or len(raw) < hl or total < hl:
        return "malformed"
    l4 = off + hl
    end = min(len(frame), off + total)
    frag_off = frag & 0x1FFF
    first = bool(frag & 0x2000) and not frag_off
    v = View(off, l4, end, proto, raw[12:16], raw[16:20], ip_id, first, frag_off > 0)
    if v.later:
        return v
    seg = frame[l4:end]
    if proto in L4_MIN:
        if len(seg) < L4_MIN[proto]:
            return "malformed"
        v.sport, v.dport = struct.unpack_from("!HH", seg)
        v.flags = seg[13] if proto == 6 else 0
    elif proto == 1:
        if len(seg) < 4 or (seg[0] in (0, 8) and len(seg) < 8):
            return "malformed"
        v.icmp_type = seg[0]
        if seg[0] in (0, 8):
            v.sport = v.dport = struct.unpack_from("!H", seg, 4)[0]
    return v


@dataclass
class Quote:
    l3: int
    l4: int
    proto: int
    src: bytes
    dst: bytes
    port_off: tuple[int, int]  # offsets of (src port, dst port); the echo id twice for ICMP
    sport: int | None
    dport: int | None
    complete: bool  # the whole quoted packet is there


def quote(frame: bytes, v: View) -> Quote | None:
    q3 = v.l4 + 8
    if v.end - q3 < 20 or frame[q3] >> 4 != 4:
        return None
    hl = (frame[q3] & 15) * 4
    if hl < 20 or q3 + hl > v.end:
        return None
    total, frag, proto = struct.unpack_from("!2xH2xH1xB", frame, q3)
    src, dst = frame[q3 + 12 : q3 + 16], frame[q3 + 16 : q3 + 20]
    q4 = q3 + hl
    avail = v.end - q4
    q = Quote(q3, q4, proto, src, dst, (q4, q4 + 2), None, None, q3 + total <= v.end)
    if frag & 0x1FFF:
        return q
    if proto in (6, 17) and avail >= 4:
        q.sport, q.dport = struct.unpack_from("!HH", frame, q4)
    elif proto == 1 and avail >= 6 and frame[q4] in (0, 8):
        q.sport = q.dport = struct.unpack_from("!H", frame, q4 + 4)[0]
        q.port_off = (q4 + 4, q4 + 4)
    return q


def _csum(data: bytes) -> int:
    return dpkt.in_cksum(data)


def checksums(frame: bytes, v: View) -> dict[str, int | None]:
    """name -> 0 when it verifies (non-zero when not); None when it cannot be checked."""
    out: dict[str, int | None] = {"ip": _csum(frame[v.l3 : v.l4])}
    seg = frame[v.l4 : v.end]
    whole = v.l3 + struct.unpack_from("!H", frame, v.l3 + 2)[0] <= len(frame)
    if v.first or v.later or not whole:
        return out
    if v.proto in (6, 17):
        if v.proto == 17 and seg[6:8] == b"\0\0":
            out["udp0"] = 0
        else:
            pseudo = v.src + v.dst + struct.pack("!BBH", 0, v.proto, len(seg))
            out["l4"] = _csum(pseudo + seg)
    elif v.proto == 1:
        out["l4"] = _csum(seg)
        if v.icmp_type in ERRORS and (q := quote(frame, v)) is not None:
            out["qip"] = _csum(frame[q.l3 : q.l4])
            qseg = frame[q.l4 : q.l3 + struct.unpack_from("!H", frame, q.l3 + 2)[0]]
            if q.complete and q.proto == 17 and qseg[6:8] == b"\0\0":
                out["qudp0"] = 0
            elif q.complete and q.proto in (6, 17):
                pseudo = q.src + q.dst + struct.pack("!BBH", 0, q.proto, len(qseg))
                out["ql4"] = _csum(pseudo + qseg)
            elif q.complete and q.proto == 1:
                out["ql4"] = _csum(qseg)
    return out


def checksum_offsets(frame: bytes, v: View) -> set[int]:
    offs = {v.l3 + 10, v.l3 + 11}
    if not v.later:
        at = {6: 16, 17: 6, 1: 2}.get(v.proto)
        if at is not None:
            offs |= {v.l4 + at, v.l4 + at + 1}
        if v.proto == 1 and v.icmp_type in ERRORS and (q := quote(frame, v)) is not None:
            offs |= {q.l3 + 10, q.l3 + 11}
            qat = {6: 16, 17: 6, 1: 2}.get(q.proto)
            if qat is not None:
                offs |= {q.l4 + qat, q.l4 + qat + 1}
    return offs


@dataclass
class Binding:
    pub_ip: bytes
    pub_port: int
    last: int
    tcp: set[str] = field(default_factory=set)  # "out", "in", "fin_out", "fin_in", "rst"
    remotes: list[tuple[bytes, int]] = field(default_factory=list)


class NatModel:
    """Checks, packet by packet and in order, what the NAT did."""

    def __init__(self, config: dict[str, Any], partitions: int = 1) -> None:
        self.inside = [ipaddress.IPv4Network(n) for n in config["inside"]]
        self.public = [ipaddress.IPv4Address(a).packed for a in config["public_ips"]]
        lo, _, hi = str(config.get("ports", "1024-65535")).partition("-")
        self.lo, self.hi = int(lo), int(hi or lo)
        self.fwd_pub: dict[tuple[int, bytes, int], tuple[bytes, int]] = {}
        self.fwd_in: dict[tuple[int, bytes, int], tuple[bytes, int]] = {}
        for f in config.get("port_forwards", []):
            p = PROTOS[f["proto"]]
            pub, ins = _ep(f["public"]), _ep(f["inside"])
            self.fwd_pub[(p, *pub)] = ins
            self.fwd_in[(p, *ins)] = pub
        t = {"tcp": 7440, "tcp_transitory": 240, "udp": 300, "icmp": 60}
        t.update(config.get("timeouts", {}))
        self.t = {k: round(v * NS) for k, v in t.items()}
        self.filtering = config.get("filtering", "address-and-port-dependent")
        self.partitions = partitions
        self.bindings: dict[tuple[int, bytes, int], Binding] = {}
        self.owner: dict[tuple[int, bytes, int], tuple[int, bytes, int]] = {}
        self.pool: dict[bytes, bytes] = {}
        self.frags: dict[tuple[bytes, bytes, int, int], tuple[int, str, str, bytes]] = {}
        self.new_bindings = 0

    # -- semantics ------------------------------------------------------------

    def _in(self, a: bytes) -> bool:
        return any(ipaddress.IPv4Address(a) in n for n in self.inside)

    def timeout(self, proto: int, b: Binding) -> int:
        if proto == 6:
            est = {"out", "in"} <= b.tcp and "rst" not in b.tcp
            if est and not {"fin_out", "fin_in"} <= b.tcp:
                return self.t["tcp"]
            return self.t["tcp_transitory"]
        return self.t["udp"] if proto == 17 else self.t["icmp"]

    def live(self, key: tuple[int, bytes, int], ts: int) -> Binding | None:
        b = self.bindings.get(key)
        return b if b is not None and ts - b.last <= self.timeout(key[0], b) else None

    def holder(self, proto: int, ip: bytes, port: int, ts: int) -> tuple[int, bytes, int] | None:
        key = self.owner.get((proto, ip, port))
        b = self.live(key, ts) if key else None
        return key if b is not None and (b.pub_ip, b.pub_port) == (ip, port) else None

    def _remote(self, proto: int, ip: bytes, port: int) -> tuple[bytes, int]:
        return (ip, 0) if self.filtering == "address-dependent" or proto == 1 else (ip, port)

    def _touch(self, proto: int, b: Binding, ts: int, v: View, out: bool) -> None:
        b.last = max(b.last, ts)
        if proto == 6:
            way = "out" if out else "in"
            f = v.flags
            if f & 0x04:
                b.tcp |= {way, "rst"}
            else:
                if f & 0x12 == 0x02 and ("rst" in b.tcp or {"fin_out", "fin_in"} <= b.tcp):
                    b.tcp = set()
                b.tcp.add(way)
                if f & 0x01:
                    b.tcp.add("fin_" + way)
        if out and self.filtering != "endpoint-independent":
            r = self._remote(proto, v.dst, v.dport)
            if r not in b.remotes:
                b.remotes = [*b.remotes, r][-MAX_REMOTES:]

    def admits(self, proto: int, b: Binding, ip: bytes, port: int) -> bool:
        if self.filtering == "endpoint-independent":
            return True
        return self._remote(proto, ip, port) in b.remotes

    def _partition(self, proto: int, ip: bytes, port: int) -> int:
        return endpoint_hash(proto, ip, port) % self.partitions

    def exhausted(self, proto: int, ip: bytes, port: int, ts: int) -> bool:
        pubs = [self.pool[ip]] if ip in self.pool else self.public
        want = self._partition(proto, ip, port)
        return any(
            all(
                (proto, pub, p) in self.fwd_pub or self.holder(proto, pub, p, ts)
                for p in range(self.lo, self.hi + 1)
                if self._partition(proto, pub, p) == want
            )
            for pub in pubs
        )

    # -- the check ------------------------------------------------------------

    def check(self, ts: int, frame: bytes, port: str, reason: str, out: bytes) -> None:
        v = decode(frame)
        if isinstance(v, str):
            want = ("drop", "malformed") if v == "malformed" else ("pass", "")
            assert (port, reason) == want, f"{v}: got {port}/{reason}"
            assert out == frame, "untouched packet changed"
            return
        expect, edits, which, addr = self._decide(ts, frame, v, port, reason, out)
        if v.first and self._class(v) in ("out", "in"):
            self.frags[(v.src, v.dst, v.proto, v.ip_id)] = (ts, expect, which, addr)
        assert (port, reason) == ("drop" if expect else "pass", expect), (
            f"{_show(v)}: expected {expect or 'pass'}, got {port}/{reason}"
        )
        if not edits:
            assert out == frame, f"{_show(v)}: should pass untouched"
            return
        self._compare(frame, v, out, edits)

    def _class(self, v: View) -> str:
        s_in, d_in = self._in(v.src), self._in(v.dst)
        if s_in:
            return "pass" if d_in else "out"
        if v.dst in self.public:
            return "in"
        return "no" if d_in else "pass"

    def _decide(self, ts: int, frame: bytes, v: View, port: str, reason: str, out: bytes) -> Any:
        cls = self._class(v)
        none: list[tuple[int, bytes]] = []
        if cls == "pass":
            return "", none, "", b""
        if cls == "no":
            return "no_binding", none, "", b""
        if v.later:
            f = self.frags.get((v.src, v.dst, v.proto, v.ip_id))
            if f is None or ts - f[0] > FRAG_NS:
                return "fragment", none, "", b""
            if f[1]:
                return f[1], none, "", b""
            return "", [(v.l3 + (12 if f[2] == "src" else 16), f[3])], f[2], f[3]
        if v.proto == 1 and v.icmp_type in ERRORS:
            return self._error(ts, frame, v, cls)
        echo = v.proto == 1 and v.icmp_type in (0, 8)
        if v.proto not in (6, 17) and not echo:
            return ("unsupported" if cls == "out" else "no_binding"), none, "", b""
        port_at = (v.l4 + 4,) * 2 if echo else (v.l4, v.l4 + 2)
        if cls == "out":
            key = (v.proto, v.src, v.sport)
            if key in self.fwd_in:
                pub = self.fwd_in[key]
            elif (b := self.live(key, ts)) is not None:
                pub = (b.pub_ip, b.pub_port)
                self._touch(v.proto, b, ts, v, True)
            elif reason == "ports_exhausted":
                assert self.exhausted(*key, ts), f"{_show(v)}: ports_exhausted with free ports"
                return "ports_exhausted", none, "", b""
            else:
                pub = self._adopt(key, out, v, ts)
                b = self.bindings[key] = Binding(pub[0], pub[1], ts)
                self.owner[(v.proto, *pub)] = key
                self._touch(v.proto, b, ts, v, True)
            edits = [(v.l3 + 12, pub[0]), (port_at[0], pub[1].to_bytes(2, "big"))]
            return "", edits, "src", pub[0]
        key = (v.proto, v.dst, v.dport)
        if key in self.fwd_pub:
            ins = self.fwd_pub[key]
        else:
            holder = self.holder(*key, ts)
            if holder is None:
                return "no_binding", none, "", b""
            b = self.bindings[holder]
            if not self.admits(v.proto, b, v.src, v.sport):
                return "filtered", none, "", b""
            self._touch(v.proto, b, ts, v, False)
            ins = holder[1:]
        edits = [(v.l3 + 16, ins[0]), (port_at[1], ins[1].to_bytes(2, "big"))]
        return "", edits, "dst", ins[0]

    def _adopt(
        self, key: tuple[int, bytes, int], out: bytes, v: View, ts: int
    ) -> tuple[bytes, int]:
        o = decode(out)
        assert isinstance(o, View), "translated packet does not decode"
        pub = (o.src, o.sport)
        where = f"{_show(v)} -> {_show(o)}"
        assert o.src in self.public, f"{where}: not a public IP"
        assert self.pool.setdefault(key[1], o.src) == o.src, f"{where}: pooling not paired"
        assert self.lo <= o.sport <= self.hi, f"{where}: port out of range"
        assert (key[0], *pub) not in self.fwd_pub, f"{where}: took a forward's port"
        other = self.holder(key[0], *pub, ts)
        assert other is None or other == key, f"{where}: public endpoint of live {other}"
        assert self._partition(key[0], *pub) == self._partition(*key), f"{where}: partition"
        self.new_bindings += 1
        return pub

    def _error(self, ts: int, frame: bytes, v: View, cls: str) -> Any:
        none: list[tuple[int, bytes]] = []
        q = quote(frame, v)
        if q is None:
            return "malformed", none, "", b""
        if q.sport is None:
            return "no_binding", none, "", b""
        if cls == "in":
            key = (q.proto, q.src, q.sport)
            if key in self.fwd_pub:
                ins = self.fwd_pub[key]
            else:
                holder = self.holder(*key, ts)
                if holder is None:
                    return "no_binding", none, "", b""
                if not self.admits(q.proto, self.bindings[holder], q.dst, q.dport or 0):
                    return "filtered", none, "", b""
                ins = holder[1:]
            port = ins[1].to_bytes(2, "big")
            edits = [(v.l3 + 16, ins[0]), (q.l3 + 12, ins[0]), (q.port_off[0], port)]
            return "", edits, "dst", ins[0]
        key = (q.proto, q.dst, q.dport)
        if key in self.fwd_in:
            pub = self.fwd_in[key]
        elif (b := self.live(key, ts)) is not None:
            pub = (b.pub_ip, b.pub_port)
        else:
            return "no_binding", none, "", b""
        port = pub[1].to_bytes(2, "big")
        edits = [(v.l3 + 12, pub[0]), (q.l3 + 16, pub[0]), (q.port_off[1], port)]
        return "", edits, "src", pub[0]

    def _compare(self, frame: bytes, v: View, out: bytes, edits: list[tuple[int, bytes]]) -> None:
        want = bytearray(frame)
        for off, data in edits:
            want[off : off + len(data)] = data
        mask = checksum_offsets(frame, v)
        assert len(out) == len(want), "length changed"
        diff = [i for i in range(len(want)) if i not in mask and want[i] != out[i]]
        assert not diff, f"{_show(v)}: bytes differ at {diff[:8]}"
        o = decode(out)
        assert isinstance(o, View)
        before, after = checksums(frame, v), checksums(out, o)
        for name, value in before.items():
            if name in ("udp0", "qudp0"):
                assert after.get(name) == 0, f"{_show(v)}: zero UDP checksum changed"
            elif value == 0:
                assert after.get(name) == 0, f"{_show(v)} -> {_show(o)}: bad {name} checksum"


def _ep(text: str) -> tuple[bytes, int]:
    host, _, port = text.partition(":")
    return ipaddress.IPv4Address(host).packed, int(port)


def _show(v: View) -> str:
    s, d = ipaddress.IPv4Address(v.src), ipaddress.IPv4Address(v.dst)
    return f"proto {v.proto} {s}:{v.sport} -> {d}:{v.dport}"
