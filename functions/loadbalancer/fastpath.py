"""The load balancer's batch path (a helper of snf.functions.loadbalancer).

Most packets are either nothing to the load balancer (no VIP, no backend) or
belong to a client flow of a service, or to its backend's replies. For those
this path does what the per-packet path (process.PacketRun) does, with the
same state reads and writes in the same order, only cheaper: a packet's role
(to a VIP, from a backend, neither), its keys and a new flow's Maglev pick
come from a cache per 5-tuple, and the rewrite is only noted, to be written
for the whole batch at once (bulk.py). Every other packet (to a VIP with an
empty pool, a reply whose flow moved, expired or is gone, a fragment, IPv6,
odd offsets) goes to PacketRun's own methods in its place in the batch; this
path writes nothing before it knows it takes the packet.
"""

from __future__ import annotations

from itertools import count
from typing import Any

from snf.core.contract import Decisions, triage
from snf.core.reasons import MALFORMED
from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch
from snf.packet.headers import FRAG_LATER, KIND_IP, Headers

from .bulk import Rewrites
from .maglev import flow5_hash
from .net import conn_key, side_key
from .process import (
    ACK,
    ANSWERED,
    FIN,
    MOVED,
    NEW,
    RST,
    SYN,
    TCP,
    TO_BACKEND,
    TO_CLIENT,
    UDP,
    Balancer,
    PacketRun,
    Service,
    client_hash,
    key_hashes,
    opening_bits,
)

__all__ = ["Roles", "cached_key_hashes", "process_fast"]

NONE, REQUEST, REPLY = 0, 1, 2  # what a 5-tuple is to the load balancer
_CACHE_MAX = 1 << 16
_UNKNOWN = -1  # not in the key cache (a cached key may be None)
_FIN_RST = FIN | RST

FiveTuple = tuple[int, bytes, int, bytes, int]
# (NONE,) | (REQUEST, service, conn key, Pick or None) | (REPLY, back key, source hex)
Facts = tuple[Any, ...]
# A new flow's backend (Maglev, a pure function of the 5-tuple and the pool):
# (backend hex, port, back key, back value, backend endpoint as address + port bytes)
Pick = tuple[str, int, bytes, list[Any], bytes]


def _pick(svc: Service, key: FiveTuple) -> Pick | None:
    """PacketRun.request's choice for a new flow of `key` (None: an empty pool)."""
    if not svc.table:
        return None
    p, s, sp, _, dp = key
    slot = flow5_hash(p, s, sp, svc.vip, dp) % svc.size
    addr, port = svc.members[svc.table[slot]]
    back = side_key(p, addr, port, s, sp)
    return (addr.hex(), port, back, [svc.vip.hex(), dp], addr + port.to_bytes(2, "big"))


class Roles:
    """5-tuple -> its Facts, a back entry's link -> (conn key, VIP endpoint), and
    5-tuple -> key hash; what a packet is to us depends on its 5-tuple only."""

    __slots__ = (
        "_facts",
        "_links",
        "addrs",
        "backend_addrs",
        "backends",
        "get",
        "keys",
        "services",
        "vip_addrs",
    )

    def __init__(self, lb: Balancer) -> None:
        self.services = lb.services
        self.backends = lb.backends
        # A packet to none of these addresses and from none of those is nothing to us.
        self.vip_addrs = frozenset(addr for _, addr, _ in lb.services)
        self.backend_addrs = frozenset(addr for _, addr, _ in lb.backends)
        self.addrs = self.vip_addrs | self.backend_addrs
        self.keys: dict[FiveTuple, int | None] = {}  # cached_key_hashes' answers
        self._facts: dict[FiveTuple, Facts] = {}
        self._links: dict[tuple[int, bytes, int, str, int], tuple[bytes, bytes | None]] = {}
        self.get = self._facts.get

    def learn(self, key: FiveTuple) -> Facts:
        p, s, sp, d, dp = key
        svc = self.services.get((p, d, dp))
        if svc is not None:
            facts: Facts = (REQUEST, svc, conn_key(p, s, sp, svc.vip, dp), _pick(svc, key))
        elif (p, s, sp) in self.backends:
            facts = (REPLY, side_key(p, s, sp, d, dp), s.hex())
        else:
            facts = (NONE,)
        if len(self._facts) >= _CACHE_MAX:
            self._facts.clear()
        self._facts[key] = facts
        return facts

    def link(self, p: int, client: bytes, cport: int, vip_hex: str, vport: int) -> Any:
        """(conn key, VIP endpoint as 6 bytes or None when not IPv4) of a back entry."""
        key = (p, client, cport, vip_hex, vport)
        found = self._links.get(key) if vport.__class__ is int else None
        if found is None:
            vip = bytes.fromhex(vip_hex)
            ends = vip + vport.to_bytes(2, "big")
            found = (conn_key(p, client, cport, vip, vport), ends if len(vip) == 4 else None)
            if vport.__class__ is not int:  # state we never write (80.0 would find 80's)
                return found
            if len(self._links) >= _CACHE_MAX:
                self._links.clear()
            self._links[key] = found
        return found


def cached_key_hashes(lb: Balancer, roles: Roles, h: Headers) -> list[int | None]:
    """process.key_hashes, its answer remembered per 5-tuple (a pure function of it)."""
    keys = roles.keys
    if any(len(c) != len(h) for c in (h.frag, h.proto, h.src, h.sport, h.dst, h.dport)):
        return key_hashes(lb, h)  # zip would stop at the shortest column
    known = keys.get
    ours = roles.addrs  # a packet with a client end has one end among these
    out: list[int | None] = []
    for kind, fr, p, s, sp, d, dp in zip(
        h.kind, h.frag, h.proto, h.src, h.sport, h.dst, h.dport, strict=True
    ):
        if (
            kind != KIND_IP
            or fr == FRAG_LATER
            or (p != TCP and p != UDP)
            or (s not in ours and d not in ours)
        ):
            out.append(None)
            continue
        five = (p, s, sp, d, dp)
        value = known(five, _UNKNOWN)
        if value == _UNKNOWN:
            value = client_hash(lb, p, s, sp, d, dp)
            if len(keys) >= _CACHE_MAX:
                keys.clear()
            keys[five] = value
        out.append(value)
    return out


def process_fast(
    lb: Balancer, roles: Roles, batch: PacketBatch, h: Headers, state: BatchState
) -> Decisions:
    """The Decisions of one batch, as process.process_batch gives them."""
    run = PacketRun(lb, batch, h, state)
    columns = (h.kind, h.version, h.frag, h.proto, h.src, h.sport, h.dst, h.dport, h.l3_off)
    if any(len(c) != len(h) for c in (*columns, h.l4_off, h.tcp_flags)):
        return run.run()  # the per-packet path: zip would stop at the shortest column
    return _Fast(lb, roles, run).run()


class _Fast:
    """One batch on the batch path, over a PacketRun for the rest."""

    def __init__(self, lb: Balancer, roles: Roles, run: PacketRun) -> None:
        self.lb, self.roles, self.run_ = lb, roles, run
        self.h = run.h
        self.conn_get, self.conn_set, self.retime = run.conn.get, run.conn.set, run.retime
        self.back_get, self.back_set, self.back_delete = run.back.get, run.back.set, run.back.delete
        self.rw = Rewrites(run.batch, run.h, run.replaced)
        self.to_backend = self.to_client = self.new = self.moved = 0

    def run(self) -> Decisions:
        h, run = self.h, self.run_
        decisions, _ = triage(h)
        ports, reasons = decisions.ports, decisions.reasons
        facts_of, learn = self.roles.get, self.roles.learn
        vips, backends = self.roles.vip_addrs, self.roles.backend_addrs
        request, reply = self.request, self.reply
        version, sport, dport, l3_off, l4_off = h.version, h.sport, h.dport, h.l3_off, h.l4_off
        offsets, ts = run.batch.offsets, run.ts
        for i, kind, fr, p, s, d in zip(count(), h.kind, h.frag, h.proto, h.src, h.dst):
            if kind != KIND_IP:
                continue  # decided by triage()
            if fr != FRAG_LATER and (
                (p != TCP and p != UDP) or (d not in vips and s not in backends)
            ):
                continue  # nothing to a load balancer: neither to a VIP nor from a backend
            try:
                if fr == FRAG_LATER:
                    reason = run.later_fragment(i)
                else:
                    key = (p, s, sport[i], d, dport[i])
                    facts = facts_of(key) or learn(key)
                    role = facts[0]
                    if role == NONE:
                        continue
                    l3, l4, size = l3_off[i], l4_off[i], offsets[i + 1] - offsets[i]
                    plain = version[i] == 4 and not fr and 0 <= l3 <= l4 - 20 <= size - 24
                    if role == REQUEST:
                        reason = (
                            request(i, p, ts[i], facts) if plain else run.request(i, p, facts[1])
                        )
                    else:
                        reason = reply(i, p, ts[i], facts) if plain else run.reply(i, p)
            except Exception:  # crafted content broke an assumption: drop, never raise
                run.replaced.pop(i, None)
                reason = MALFORMED
            if reason:
                ports[i], reasons[i] = "drop", reason
        for i in self.rw.apply():  # none unless the batch's offsets overrun its bytes
            ports[i], reasons[i] = "drop", MALFORMED
        metrics = run.metrics
        metrics[TO_BACKEND] += self.to_backend
        metrics[TO_CLIENT] += self.to_client
        metrics[NEW] += self.new
        metrics[MOVED] += self.moved
        decisions.replaced = run.replaced
        decisions.metrics = +run.metrics  # without zero counts, as the per-packet path
        return decisions

    def request(self, i: int, p: int, t: int, facts: Facts) -> str:
        """PacketRun.request, but for an empty pool (left to it)."""
        _, svc, ck, pick = facts
        entry = self.conn_get(ck)
        flags = self.h.tcp_flags[i] if p == TCP else 0
        if entry is not None:
            bhex, bport, last, fins = entry
            ends = svc.ends.get((bhex, bport))
            if (
                ends is not None  # the backend is still in the pool
                and t - last <= self.run_.timeout(p, fins)
                and not (fins & 3 == 3 and flags & (SYN | ACK) == SYN)  # a new connection
            ):
                value = [bhex, bport, t if t > last else last, fins | _fin_bits(flags, 1)]
                if value != entry:
                    self.conn_set(ck, value)
                    if value[3] != fins:  # a FIN or RST: its due may come earlier
                        self.retime(ck, value, fins)
                self.rw.index[1].append(i)
                self.rw.new[1].append(ends)
                self.to_backend += 1
                return ""
        if pick is None:
            return self.run_.request(i, p, svc)  # no backend: it forgets the flow
        return self.new_flow(i, p, t, ck, entry, flags, svc, pick)

    def new_flow(
        self, i: int, p: int, t: int, ck: bytes, entry: Any, flags: int, svc: Service, pick: Pick
    ) -> str:
        """PacketRun.request's pick, its writes in the same order."""
        bhex, bport, bk, want, ends = pick
        value = [bhex, bport, t, opening_bits(flags)]
        self.new += 1
        if entry is not None and (entry[0], entry[1]) not in svc.by_hex:
            self.moved += 1
        self.run_.store(ck, value, entry)  # may evict from a full table first
        if entry is not None and (entry[0], entry[1]) != (bhex, bport):
            h = self.h
            old = side_key(p, bytes.fromhex(entry[0]), entry[1], h.src[i], h.sport[i])
            self.back_delete(old)
        if self.back_get(bk) != want:
            self.back_set(bk, list(want))
        self.rw.index[1].append(i)
        self.rw.new[1].append(ends)
        self.to_backend += 1
        return ""

    def reply(self, i: int, p: int, t: int, facts: Facts) -> str:
        """PacketRun.reply for a flow whose recorded backend sent it (else itself)."""
        _, bk, src_hex = facts
        link = self.back_get(bk)
        if link is None:
            return ""  # no recorded flow: untouched
        h = self.h
        ck, ends = self.roles.link(p, h.dst[i], h.dport[i], link[0], link[1])
        entry = self.conn_get(ck)
        if (
            ends is None
            or entry is None
            or entry[1] != h.sport[i]
            or entry[0] != src_hex
            or t - entry[2] > self.run_.timeout(p, entry[3])
        ):
            return self.run_.reply(i, p)  # moved, gone or expired: it forgets them
        bhex, bport, last, fins = entry
        flags = h.tcp_flags[i] if p == TCP else 0
        value = [bhex, bport, t if t > last else last, (fins | _fin_bits(flags, 2)) & ANSWERED]
        if value != entry:
            self.conn_set(ck, value)
            if value[3] != fins:  # answered, or a FIN or RST
                self.retime(ck, value, fins)
        self.rw.index[0].append(i)
        self.rw.new[0].append(ends)
        self.to_client += 1
        return ""


def _fin_bits(flags: int, bit: int) -> int:
    """process._fin_bits: `bit` for a FIN, both for a RST."""
    if not flags & _FIN_RST:
        return 0
    return 3 if flags & RST else bit
