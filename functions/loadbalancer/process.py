"""The per-batch work of snf.functions.loadbalancer: classify, pick, rewrite, record.

Kept apart from the config models so that each module stays short. The rules
are described in the package's docstring and docs/functions/loadbalancer.md.
What this module needs of the load balancer is the `Balancer` protocol (its
compiled services and caches), so it never imports the package itself.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from snf.core.contract import EVICTED, Decisions, triage
from snf.core.reasons import MALFORMED
from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch
from snf.packet.flowkey import endpoint_hash
from snf.packet.fragments import FRAG_TTL_NS, datagram_key
from snf.packet.headers import FRAG_FIRST, FRAG_LATER, KIND_IP, Headers

from .bounds import HALF_OPEN, UNANSWERED, Bounds
from .maglev import flow5_hash
from .net import conn_key, nat_rewrite, set_addr, side_key

__all__ = [
    "FRAGMENT",
    "METRICS",
    "NO_BACKEND",
    "REASONS",
    "Balancer",
    "PacketRun",
    "Service",
    "client_hash",
    "key_hashes",
    "process_batch",
]

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
TCP, UDP = 6, 17
_EP_CACHE_MAX = 1 << 16

NO_BACKEND = "no_backend"  # a VIP whose pool is empty
FRAGMENT = "fragment"  # a later fragment to a VIP address, its first fragment unseen
REASONS = (MALFORMED, NO_BACKEND, FRAGMENT)
# Metrics: flows picked, flows re-picked because their backend left, packets
# rewritten, flows evicted from a full conn table.
NEW, MOVED, TO_BACKEND, TO_CLIENT = "new", "moved", "to_backend", "to_client"
METRICS = (NEW, MOVED, TO_BACKEND, TO_CLIENT, EVICTED)
ANSWERED = ~(HALF_OPEN | UNANSWERED)  # a reply's mask on the conn bits


@dataclass(frozen=True, slots=True)
class Service:
    """One compiled service."""

    vip: bytes
    vport: int
    members: list[tuple[bytes, int]]  # (addr, port) in config order
    by_hex: dict[tuple[str, int], tuple[bytes, int]]  # (addr hex, port) -> member
    ends: dict[tuple[str, int], bytes]  # (addr hex, port) -> member's address + port bytes
    table: list[int] = field(repr=False)  # Maglev slot -> index into members
    size: int


def _fin_bits(flags: int, bit: int) -> int:
    """conn bits a packet adds: `bit` for a FIN, both for a RST."""
    if flags & RST:
        return 3
    return bit if flags & FIN else 0


def opening_bits(flags: int) -> int:
    """conn bits of a flow picked on a client packet with `flags`: unanswered, and
    half-open when a bare SYN opened it."""
    half_open = HALF_OPEN if flags & (SYN | ACK) == SYN else 0
    return _fin_bits(flags, 1) | UNANSWERED | half_open


class Balancer(Protocol):
    """What the per-batch work reads of the LoadBalancer."""

    services: dict[tuple[int, bytes, int], Service]  # (proto, vip, vport) -> service
    backends: set[tuple[int, bytes, int]]  # (proto, addr, port) of every backend
    vip_addrs: set[tuple[int, bytes]]  # (proto, vip): for later fragments
    timeout_ns: tuple[int, int, int, int]  # tcp, tcp_fin, udp, tcp_syn
    ep_hashes: dict[tuple[int, bytes, int], int]  # endpoint_hash cache
    bounds: Bounds  # timeouts, due-time indexes, sweeps and eviction


class PacketRun:
    """One batch, packet by packet: the tables, the packet times and what was
    decided so far (fastpath.py calls its methods for the packets it leaves)."""

    def __init__(
        self, lb: Balancer, batch: PacketBatch, headers: Headers, state: BatchState
    ) -> None:
        self.lb = lb
        self.batch = batch
        self.h = headers
        self.ts: list[int] = batch.records["ts_ns"].tolist()
        self.conn = state.table("conn")
        self.back = state.table("back")
        self.frag = state.table("frag")
        self.bounds = lb.bounds
        self.timeout = lb.bounds.timeout
        self.due, self.frag_due = lb.bounds.indexes(state)
        self.replaced: dict[int, bytes] = {}
        self.metrics: Counter[str] = Counter()

    def store(self, ck: bytes, value: list, entry: list | None) -> None:
        """Write a picked flow's conn entry (new, or over an old one), making room
        first in a full table; every write but a refresh goes through here or retime."""
        if value == entry:
            return
        if entry is None:
            evicted = self.bounds.make_room(self.conn, self.back, self.due)
            if evicted:
                self.metrics[EVICTED] += evicted
        self.conn.set(ck, value)
        self.due.set(ck, value)

    def retime(self, ck: bytes, value: list, bits: int) -> None:
        """A refresh changed the conn bits from `bits`: tell the index when that
        brings the due earlier (FIN both ways, RST). Else (an answer, a FIN one
        way) the due moves on or stays, which the index reads lazily (bounds.py)."""
        if self.timeout(ck[0], value[3]) < self.timeout(ck[0], bits):
            self.due.set(ck, value)

    def rewrite(self, i: int, which: str, addr: bytes, port: int) -> bytes:
        """Packet i with its source or destination set to addr:port."""
        h = self.h
        frame = self.batch.packet(i)
        l3, l4 = h.l3_off[i], h.l4_off[i]
        return nat_rewrite(frame, h.version[i], l3, l4, h.proto[i], which, addr, port)

    def record_first_fragment(self, i: int, addr: bytes, which: int) -> None:
        h = self.h
        key = datagram_key(h.version[i], h.src[i], h.dst[i], h.proto[i], h.ip_id[i])
        value = [self.ts[i], addr.hex(), which]
        if self.frag.get(key) != value:
            self.frag.set(key, value)
            self.frag_due.set(key, self.bounds.frag_due(key, value))

    def request(self, i: int, proto: int, svc: Service) -> str:
        """A client packet to a VIP: keep or pick its backend, rewrite the destination."""
        h = self.h
        t = self.ts[i]
        client, cport, vport = h.src[i], h.sport[i], h.dport[i]
        flags = h.tcp_flags[i] if proto == TCP else 0
        ck = conn_key(proto, client, cport, svc.vip, vport)
        entry = self.conn.get(ck)
        backend = None
        if entry is not None:
            bhex, bport, last, fins = entry
            backend = svc.by_hex.get((bhex, bport))
            if backend is not None and (
                t - last > self.timeout(proto, fins)
                or (fins & 3 == 3 and flags & (SYN | ACK) == SYN)  # a new connection, old ports
            ):
                backend = None
        if backend is not None:
            addr, port = backend
            new_last = t if t > last else last  # packet time may step back
            value = [bhex, bport, new_last, fins | _fin_bits(flags, 1)]
        else:
            if not svc.table:
                if entry is not None:  # its backend left and nothing replaces it
                    self.forget(proto, ck, entry, client, cport)
                return NO_BACKEND
            slot = flow5_hash(proto, client, cport, svc.vip, vport) % svc.size
            addr, port = svc.members[svc.table[slot]]
            value = [addr.hex(), port, t, opening_bits(flags)]
            self.metrics[NEW] += 1
            if entry is not None and (entry[0], entry[1]) not in svc.by_hex:
                self.metrics[MOVED] += 1
        out = self.rewrite(i, "dst", addr, port)
        # State changes come last, so a failure above writes nothing.
        if backend is not None:
            if value != entry:
                self.conn.set(ck, value)
                if value[3] != fins:
                    self.retime(ck, value, fins)
        else:
            self.store(ck, value, entry)
            if entry is not None and (entry[0], entry[1]) != (value[0], value[1]):
                old = side_key(proto, bytes.fromhex(entry[0]), entry[1], client, cport)
                self.back.delete(old)
            bk = side_key(proto, addr, port, client, cport)
            want = [svc.vip.hex(), vport]
            if self.back.get(bk) != want:
                self.back.set(bk, want)
        if h.frag[i] == FRAG_FIRST:
            self.record_first_fragment(i, addr, 0)
        self.replaced[i] = out
        self.metrics[TO_BACKEND] += 1
        return ""

    def forget(self, proto: int, ck: bytes, entry: list, client: bytes, cport: int) -> None:
        self.conn.delete(ck)
        self.due.discard(ck)
        self.back.delete(side_key(proto, bytes.fromhex(entry[0]), entry[1], client, cport))

    def reply(self, i: int, proto: int) -> str:
        """A packet from a backend endpoint: rewrite its source to the VIP if a flow says so."""
        h = self.h
        t = self.ts[i]
        bsrc, bport, client, cport = h.src[i], h.sport[i], h.dst[i], h.dport[i]
        bk = side_key(proto, bsrc, bport, client, cport)
        link = self.back.get(bk)
        if link is None:
            return ""  # no recorded flow: untouched
        vip, vport = bytes.fromhex(link[0]), link[1]
        ck = conn_key(proto, client, cport, vip, vport)
        entry = self.conn.get(ck)
        if entry is None or entry[1] != bport or entry[0] != bsrc.hex():
            self.back.delete(bk)  # the flow moved to another backend or is gone
            return ""
        bhex, _, last, fins = entry
        if t - last > self.timeout(proto, fins):
            self.conn.delete(ck)
            self.due.discard(ck)
            self.back.delete(bk)
            return ""
        flags = h.tcp_flags[i] if proto == TCP else 0
        out = self.rewrite(i, "src", vip, vport)
        value = [bhex, bport, t if t > last else last, (fins | _fin_bits(flags, 2)) & ANSWERED]
        if value != entry:
            self.conn.set(ck, value)
            if value[3] != fins:
                self.retime(ck, value, fins)
        if h.frag[i] == FRAG_FIRST:
            self.record_first_fragment(i, vip, 1)
        self.replaced[i] = out
        self.metrics[TO_CLIENT] += 1
        return ""

    def later_fragment(self, i: int) -> str:
        """A non-first fragment: rewritten as its first fragment was, else passed or dropped."""
        h = self.h
        proto, dst = h.proto[i], h.dst[i]
        key = datagram_key(h.version[i], h.src[i], dst, proto, h.ip_id[i])
        rec = self.frag.get(key)
        if rec is not None:
            if self.ts[i] - rec[0] <= FRAG_TTL_NS:
                pkt = bytearray(self.batch.packet(i))
                which = "dst" if rec[2] == 0 else "src"
                set_addr(pkt, h.version[i], h.l3_off[i], -1, proto, which, bytes.fromhex(rec[1]))
                self.replaced[i] = bytes(pkt)
                return ""
            self.frag.delete(key)
            self.frag_due.discard(key)
        return FRAGMENT if (proto, dst) in self.lb.vip_addrs else ""

    def run(self) -> Decisions:
        h = self.h
        decisions, ip = triage(h)
        ports, reasons = decisions.ports, decisions.reasons
        frag, proto = h.frag, h.proto
        src, dst, sport, dport = h.src, h.dst, h.sport, h.dport
        services_get = self.lb.services.get
        backends = self.lb.backends
        for i in ip:
            try:
                if frag[i] == FRAG_LATER:
                    reason = self.later_fragment(i)
                else:
                    p = proto[i]
                    if p != TCP and p != UDP:
                        reason = ""
                    else:
                        svc = services_get((p, dst[i], dport[i]))
                        if svc is not None:
                            reason = self.request(i, p, svc)
                        elif (p, src[i], sport[i]) in backends:
                            reason = self.reply(i, p)
                        else:
                            reason = ""
            except Exception:  # crafted content broke an assumption: drop, never raise
                self.replaced.pop(i, None)
                reason = MALFORMED
            if reason:
                ports[i], reasons[i] = "drop", reason
        decisions.replaced = self.replaced
        decisions.metrics = self.metrics
        return decisions


def process_batch(
    lb: Balancer, batch: PacketBatch, headers: Headers, state: BatchState
) -> Decisions:
    """The Decisions of one batch, with its metrics (NEW, MOVED, TO_BACKEND, TO_CLIENT)."""
    return PacketRun(lb, batch, headers, state).run()


def key_hashes(lb: Balancer, headers: Headers) -> list[int | None]:
    """The client endpoint's endpoint_hash per packet, or None (no preference)."""
    kind, frag, proto = headers.kind, headers.frag, headers.proto
    src, dst, sport, dport = headers.src, headers.dst, headers.sport, headers.dport
    out: list[int | None] = []
    for i in range(len(headers)):
        p = proto[i]
        if kind[i] != KIND_IP or frag[i] == FRAG_LATER or (p != TCP and p != UDP):
            out.append(None)
            continue
        out.append(client_hash(lb, p, src[i], sport[i], dst[i], dport[i]))
    return out


def client_hash(lb: Balancer, p: int, s: bytes, sp: int, d: bytes, dp: int) -> int | None:
    """The endpoint_hash of a TCP/UDP packet's client end, None when it has none:
    to a VIP, the source; from a VIP, the destination; from a backend endpoint,
    the destination; to a backend endpoint, the source."""
    services, backends = lb.services, lb.backends
    s_ep, d_ep = (p, s, sp), (p, d, dp)
    if d_ep in services:
        ep = s_ep
    elif s_ep in services or s_ep in backends:
        ep = d_ep
    elif d_ep in backends:
        ep = s_ep
    else:
        return None
    cache = lb.ep_hashes
    value = cache.get(ep)
    if value is None:
        if len(cache) >= _EP_CACHE_MAX:
            cache.clear()
        value = cache[ep] = endpoint_hash(*ep)
    return value
