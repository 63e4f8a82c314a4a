"""The NAT's batch path (a helper of snf.functions.nat).

Most packets belong to a forward or to a binding that exists and is live.
For those this path does what the per-packet path (Nat.decide) does, with
the same state reads and writes in the same order, only cheaper: the
packet's class and keys come from the per-5-tuple cache (flows.py), the
TCP timeout from a table, and its rewrite is only noted, to be written for
the whole batch at once (bulk.py). Every other packet (a new or expired
binding, a stale rev entry, an ICMP error, a fragment, odd offsets or
protocols) goes to Nat.decide itself, in its place in the batch, so both
see the same state: this path writes nothing before it knows it takes the
packet.
"""

from __future__ import annotations

from itertools import count
from typing import Protocol

from snf.core.contract import EVICTED, Decisions, triage
from snf.core.reasons import MALFORMED
from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch
from snf.packet.headers import KIND_IP, Headers

from .bindings import IN as IN_BIT
from .bindings import MAX_REMOTES, Bindings, tcp_bits
from .bindings import OUT as OUT_BIT
from .bulk import Rewrites
from .config import CompiledNat
from .flows import NO, OUT, PASS, SLOW, FlowFacts, Flows
from .outcome import FILTERED, NO_BINDING, Outcome
from .state import FragView

__all__ = ["Core", "process_batch"]

TCP, UDP, ICMP = 6, 17, 1
_ECHO = (0, 8)
_L4 = (TCP, UDP)
_FIN_SYN_RST = 0x07  # without these, a TCP packet only adds its direction's bit


class Core(Protocol):
    """What the batch path needs of the Nat."""

    c: CompiledNat
    flows: Flows

    def bindings(self, state: BatchState) -> Bindings: ...

    def frag(self, state: BatchState) -> FragView: ...

    def process_each(self, batch: PacketBatch, h: Headers, state: BatchState) -> Decisions: ...

    def decide(
        self, batch: PacketBatch, h: Headers, i: int, t: int, b: Bindings, frag: FragView
    ) -> Outcome: ...


def process_batch(nat: Core, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
    """The Decisions of one batch, as Nat.process_each gives them."""
    h = headers
    columns = (h.version, h.frag, h.proto, h.src, h.sport, h.dst, h.dport, h.l3_off, h.l4_off)
    if any(len(c) != len(h) for c in (*columns, h.icmp_type, h.tcp_flags)):
        return nat.process_each(batch, h, state)  # zip would stop at the shortest
    return _Run(nat, batch, h, state).run()


class _Run:
    """One batch: its tables, packet times and pending rewrites."""

    def __init__(self, nat: Core, batch: PacketBatch, h: Headers, state: BatchState) -> None:
        self.nat = nat
        self.batch = batch
        self.h = h
        self.ts: list[int] = batch.records["ts_ns"].tolist()
        self.b = b = nat.bindings(state)
        self.frag = nat.frag(state)
        self.bind_get, self.bind_set, self.rev_get = b.bind.get, b.bind.set, b.rev.get
        self.flows = nat.flows
        self.tcp_ns = [b.timeout(TCP, bits) for bits in range(32)]  # by bits & 31
        self.udp_ns, self.icmp_ns = nat.c.udp_ns, nat.c.icmp_ns
        self.replaced: dict[int, bytes] = {}
        self.rw = rw = Rewrites(batch, h, self.replaced)
        (self.out_i, self.in_i), (self.out_new, self.in_new) = rw.index, rw.new

    def run(self) -> Decisions:
        h = self.h
        decisions, _ = triage(h)
        decisions.replaced = self.replaced
        ports, reasons = decisions.ports, decisions.reasons
        facts_of, learn = self.flows.get, self.flows.learn
        outbound, inbound, slow = self.outbound, self.inbound, self.slow
        icmp_type = h.icmp_type
        offsets = self.batch.offsets
        for i, kind, v, fr, p, s, sp, d, dp, l3, l4, start, end, t in zip(
            count(), h.kind, h.version, h.frag, h.proto, h.src, h.sport, h.dst, h.dport,
            h.l3_off, h.l4_off, offsets, offsets[1:], self.ts,
        ):  # fmt: skip
            if kind != KIND_IP:  # decided by triage()
                continue
            try:
                if v != 4:
                    continue
                key = (p, s, sp, d, dp)
                facts = facts_of(key) or learn(key)
                cls = facts[0]
                if cls == PASS:
                    continue
                if cls == NO:
                    ports[i], reasons[i] = "drop", NO_BINDING
                    continue
                size = end - start
                if (
                    cls == SLOW
                    or fr
                    or not 0 <= l3 <= l4 - 20 <= size - 24
                    or not (p in _L4 or (p == ICMP and icmp_type[i] in _ECHO and l4 + 8 <= size))
                ):
                    reason = slow(i)
                elif cls == OUT:
                    reason = outbound(i, p, t, facts)
                else:
                    reason = inbound(i, p, t, facts)
            except Exception:  # crafted content broke an assumption: drop, never raise
                reason = MALFORMED
            if reason:
                ports[i], reasons[i] = "drop", reason
        for i in self.rw.apply():  # none unless the batch's offsets overrun its bytes
            ports[i], reasons[i] = "drop", MALFORMED
        if self.b.evicted:
            decisions.metrics[EVICTED] = self.b.evicted
        return decisions

    def slow(self, i: int) -> str:
        """The per-packet path's decision for packet i."""
        reason, pkt, _, _ = self.nat.decide(self.batch, self.h, i, self.ts[i], self.b, self.frag)
        if not reason and pkt is not None:
            self.replaced[i] = bytes(pkt)
        return reason

    def outbound(self, i: int, p: int, t: int, facts: FlowFacts) -> str:
        """Bindings.outbound for a live binding (else the slow path), then the rewrite."""
        _, fwd, key, remote = facts
        if fwd is not None:
            self.out_i.append(i)
            self.out_new.append(fwd)
            return ""
        entry = self.bind_get(key)
        if entry is None:
            return self.slow(i)
        last, bits = entry[2], entry[3]
        if p == TCP:
            if t - last > self.tcp_ns[bits & 31]:  # the timeout reads bits 0..4 only
                return self.slow(i)  # expired: a new allocation
            flags = self.h.tcp_flags[i]
            if flags & _FIN_SYN_RST:
                new_bits = tcp_bits(bits, flags, True)
                if new_bits != bits:
                    self.b.retimed(p, entry, last if last > t else t, new_bits)
            else:
                new_bits = bits | OUT_BIT
        else:
            if t - last > (self.udp_ns if p == UDP else self.icmp_ns):
                return self.slow(i)
            new_bits = 0
        remotes = entry[4]
        if remote is not None and remote not in remotes:
            remotes = [*remotes[-(MAX_REMOTES - 1) :], remote]
        new_last = last if last > t else t
        if new_last != last or new_bits != bits or remotes is not entry[4]:
            self.bind_set(key, [entry[0], entry[1], new_last, new_bits, remotes])
        new = self.flows.endpoint(entry[0], entry[1])
        if new is None:  # state no NAT wrote: as the per-packet path does it
            self.rw.one(i, 0, bytes.fromhex(entry[0]), entry[1])
        else:
            self.out_i.append(i)
            self.out_new.append(new)
        return ""

    def inbound(self, i: int, p: int, t: int, facts: FlowFacts) -> str:
        """Bindings.public, admits and inbound for a live binding (else the slow
        path), then the rewrite."""
        _, fwd, rkey, pub_hex, pub_port, remote = facts
        if fwd is not None:
            self.in_i.append(i)
            self.in_new.append(fwd)
            return ""
        owner = self.rev_get(rkey)
        if owner is None:
            return NO_BINDING
        key, new = self.flows.owner(p, owner[0], owner[1])
        entry = self.bind_get(key)
        if entry is None or entry[0] != pub_hex or entry[1] != pub_port:
            return self.slow(i)  # stale rev entry: the slow path deletes it
        last, bits = entry[2], entry[3]
        if p == TCP:
            if t - last > self.tcp_ns[bits & 31]:
                return self.slow(i)  # expired: the slow path deletes it
            flags = self.h.tcp_flags[i]
            if flags & _FIN_SYN_RST:
                new_bits = tcp_bits(bits, flags, False)
                if new_bits != bits:
                    self.b.retimed(p, entry, last if last > t else t, new_bits)
            else:
                new_bits = bits | IN_BIT
        else:
            if t - last > (self.udp_ns if p == UDP else self.icmp_ns):
                return self.slow(i)
            new_bits = 0
        if remote is not None and remote not in entry[4]:
            return FILTERED
        new_last = last if last > t else t
        if new_last != last or new_bits != bits:
            self.bind_set(key, [entry[0], entry[1], new_last, new_bits, entry[4]])
        if new is None:
            self.rw.one(i, 1, key[1:5], int.from_bytes(key[5:7], "big"))
        else:
            self.in_i.append(i)
            self.in_new.append(new)
        return ""
