"""Reference model of the load balancer, written from its documented semantics.

An independent check of `functions/loadbalancer.py` (docs/functions/loadbalancer.md).
It decodes frames with dpkt, parses endpoints with `ipaddress`, builds the
Maglev table straight from the paper's formulas (permutation[i][j] =
(offset_i + j * skip_i) mod M, Katran's weighted turns, no shortcuts), keeps
one global state in packet order (no partitions, no batches, no
write-on-change) and rewrites packets by recomputing every checksum from
scratch with dpkt. It imports nothing from snf.

Semantics modelled (IPv4 and IPv6 over Ethernet, optionally 802.1Q-tagged;
fragments are not modelled)
    * A TCP/UDP packet to a VIP (proto, address, port): if the client flow
      (proto, client, client port, VIP, VIP port) has a record that is live
      (idle <= tcp 900 / tcp_fin 120 once both FIN bits are set / tcp_syn 120
      while half-open / udp 300),
      whose backend is still in the pool, and the packet is not a bare SYN on
      a closed (both FIN bits) record, the recorded backend is kept; else the
      backend is table[H(5-tuple) mod M] (empty pool: drop "no_backend" and
      forget the record). The destination becomes the backend.
    * A packet from a backend endpoint of the current config whose
      backend-side flow is linked to a live client flow on that very backend:
      the source becomes the VIP. A link without such a flow is forgotten.
    * FIN adds bit 0 (client) or 1 (backend) to the record, RST sets both;
      packet time never moves the record's last-seen time back. A new record
      is unanswered (bit 3) and, when a bare SYN opened it, half-open (bit 2);
      a packet from the backend clears both.
    * Everything else passes untouched; frames claiming IP but cut short: drop
      "malformed".
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any

import dpkt

__all__ = ["LBModel", "Outcome", "checksums_ok", "endpoints", "maglev_table"]

NS = 1_000_000_000
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
PROTOS = {"tcp": 6, "udp": 17}
TIMEOUTS = {"tcp": 900.0, "tcp_fin": 120.0, "tcp_syn": 120.0, "udp": 300.0}
HALF_OPEN, UNANSWERED = 4, 8

Ep = tuple[bytes, int]  # (packed address, port)


def h64(data: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "little")


def parse_ep(text: str) -> Ep:
    host, _, port = text.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")).packed, int(port)


def maglev_table(backends: list[tuple[Ep, int]], size: int) -> list[Ep]:
    """Maglev population with Katran's weights, as in the paper's pseudo-code."""
    pool = sorted(backends, key=lambda b: b[0][0] + b[0][1].to_bytes(2, "big"))
    n = len(pool)
    ident = [ep[0] + ep[1].to_bytes(2, "big") for ep, _ in pool]
    offset = [h64(x, b"maglev-offset") % size for x in ident]
    skip = [h64(x, b"maglev-skip") % (size - 1) + 1 for x in ident]
    weight = [w for _, w in pool]
    top = max(weight)
    nxt, cum = [0] * n, [0] * n
    entry: list[int | None] = [None] * size
    filled = 0
    while filled < size:
        for i in range(n):
            cum[i] += weight[i]
            if cum[i] < top:
                continue
            cum[i] -= top
            c = (offset[i] + nxt[i] * skip[i]) % size
            while entry[c] is not None:
                nxt[i] += 1
                c = (offset[i] + nxt[i] * skip[i]) % size
            entry[c] = i
            nxt[i] += 1
            filled += 1
            if filled == size:
                break
    return [pool[e][0] for e in entry]  # type: ignore[index]


@dataclass
class Outcome:
    port: str
    reason: str
    frame: bytes | None  # rewritten frame, None when untouched or dropped


def _ip_layer(frame: bytes) -> tuple[int, Any] | None:
    """(offset of the IP header, dpkt IP/IP6) of an Ethernet frame, or None when not IP."""
    off, etype = 14, int.from_bytes(frame[12:14], "big")
    while etype == 0x8100 and len(frame) >= off + 4:
        etype, off = int.from_bytes(frame[off + 2 : off + 4], "big"), off + 4
    if etype == 0x0800:
        return off, dpkt.ip.IP(frame[off:])
    if etype == 0x86DD:
        return off, dpkt.ip6.IP6(frame[off:])
    return None


def endpoints(frame: bytes) -> tuple[int, bytes, int, bytes, int] | None:
    """(proto, src, sport, dst, dport) of a TCP/UDP frame, else None."""
    found = _ip_layer(frame)
    if found is None:
        return None
    ip = found[1]
    l4 = ip.data
    if not isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
        return None
    return (6 if isinstance(l4, dpkt.tcp.TCP) else 17), ip.src, l4.sport, ip.dst, l4.dport


def checksums_ok(frame: bytes) -> bool:
    """IPv4 header and TCP/UDP checksums verify (recomputed by dpkt from scratch)."""
    ip = _ip_layer(frame)[1]  # type: ignore[index]
    l4 = ip.data
    sums = (getattr(ip, "sum", None), l4.sum)
    if isinstance(ip, dpkt.ip.IP):
        ip.sum = 0
    if isinstance(l4, dpkt.udp.UDP) and l4.sum == 0 and isinstance(ip, dpkt.ip.IP):
        return True  # UDP over IPv4 without a checksum
    l4.sum = 0
    bytes(ip)  # recomputes both
    return (getattr(ip, "sum", None), l4.sum) == sums


class LBModel:
    """The load balancer as plain dicts, one packet at a time."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.conn: dict[tuple, list] = {}  # (proto, client ep, vip ep) -> [backend ep, last, fins]
        self.back: dict[tuple, Ep] = {}  # (proto, backend ep, client ep) -> vip ep
        self.configure(config)

    def configure(self, config: dict[str, Any]) -> None:
        """A new config over the same state (a pool change)."""
        size = config.get("table_size", 65537)
        self.timeouts = {k: v * NS for k, v in {**TIMEOUTS, **config.get("timeouts", {})}.items()}
        self.services: dict[tuple[int, Ep], tuple[list[Ep], list[Ep]]] = {}
        for svc in config.get("services", []):
            pool = [(parse_ep(b["address"]), b.get("weight", 1)) for b in svc["backends"]]
            table = maglev_table(pool, size) if pool else []
            members = [ep for ep, _ in pool]
            self.services[PROTOS[svc["proto"]], parse_ep(svc["vip"])] = (members, table)
        self.backend_eps = {(p, ep) for (p, _), (m, _) in self.services.items() for ep in m}

    def _live(self, proto: int, rec: list, t: int) -> bool:
        if proto == 17:
            limit = self.timeouts["udp"]
        else:
            bits = rec[2]
            name = "tcp_fin" if bits & 3 == 3 else "tcp_syn" if bits & HALF_OPEN else "tcp"
            limit = self.timeouts[name]
        return t - rec[1] <= limit

    def packet(self, t: int, frame: bytes) -> Outcome:
        try:
            found = _ip_layer(frame)
        except (dpkt.UnpackError, IndexError):
            return Outcome("drop", "malformed", None)
        if found is None:
            return Outcome("pass", "", None)
        off, ip = found
        l4 = ip.data
        if not isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
            if isinstance(l4, bytes) and getattr(ip, "p", getattr(ip, "nxt", 0)) in (6, 17):
                return Outcome("drop", "malformed", None)  # dpkt could not decode the L4 header
            return Outcome("pass", "", None)
        proto = 6 if isinstance(l4, dpkt.tcp.TCP) else 17
        flags = l4.flags if proto == 6 else 0
        fin = 3 if flags & RST else 1 if flags & FIN else 0
        src, dst = (ip.src, l4.sport), (ip.dst, l4.dport)
        if (proto, dst) in self.services:
            members, table = self.services[proto, dst]
            key = (proto, src, dst)
            rec = self.conn.get(key)
            keep = (
                rec is not None
                and rec[0] in members
                and self._live(proto, rec, t)
                and not (rec[2] & 3 == 3 and flags & (SYN | ACK) == SYN)
            )
            if keep:
                rec[1], rec[2] = max(rec[1], t), rec[2] | fin
            else:
                if rec is not None:
                    self.back.pop((proto, rec[0], src), None)
                    del self.conn[key]
                if not table:
                    return Outcome("drop", "no_backend", None)
                five = bytes([proto]) + src[0] + src[1].to_bytes(2, "big")
                five += dst[0] + dst[1].to_bytes(2, "big")
                backend = table[h64(five, b"maglev-flow") % len(table)]
                opened = UNANSWERED | (HALF_OPEN if flags & (SYN | ACK) == SYN else 0)
                rec = self.conn[key] = [backend, t, fin | opened]
                self.back[proto, backend, src] = dst
            return Outcome("pass", "", self._rewrite(frame, off, ip, "dst", rec[0]))
        if (proto, src) in self.backend_eps and (proto, src, dst) in self.back:
            vip = self.back[proto, src, dst]
            rec = self.conn.get((proto, dst, vip))
            if rec is None or rec[0] != src or not self._live(proto, rec, t):
                del self.back[proto, src, dst]
                if rec is not None and rec[0] == src:
                    del self.conn[proto, dst, vip]
                return Outcome("pass", "", None)
            bits = rec[2] | (3 if fin == 3 else 2 if fin else 0)
            rec[1], rec[2] = max(rec[1], t), bits & ~(HALF_OPEN | UNANSWERED)
            return Outcome("pass", "", self._rewrite(frame, off, ip, "src", vip))
        return Outcome("pass", "", None)

    @staticmethod
    def _rewrite(frame: bytes, off: int, ip: Any, which: str, ep: Ep) -> bytes:
        l4 = ip.data
        if which == "dst":
            ip.dst, l4.dport = ep
        else:
            ip.src, l4.sport = ep
        if isinstance(ip, dpkt.ip.IP):
            ip.sum = 0
        l4.sum = 0  # recomputed by dpkt (a UDP datagram without checksum gets one: not modelled)
        raw = bytes(ip)
        return frame[:off] + raw + frame[off + len(raw) :]
