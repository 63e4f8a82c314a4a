"""NAT44: source NAT with port forwards (RFC 4787, RFC 5382, RFC 5508).

Summary
    Outbound packets (source inside, destination outside) get a public source
    endpoint. Mapping is endpoint-independent: one internal (proto, IP, port)
    has one public (IP, port) whatever the destination, and two internal
    endpoints never share one. Pooling is paired: an internal IP always gets
    the same public IP. Replies to a public endpoint go back to the internal
    endpoint when `filtering` admits their remote. Port forwards are static
    bindings. ICMP echo identifiers are mapped like ports; ICMP errors about
    a translated flow are translated, quote included. Checksums are updated
    incrementally (RFC 1624, snf.packet.rewrite). Time is packet time.
    Packets of a forward or a live binding take a batch path (fastpath.py,
    bulk.py: rewrites a batch at a time) with the per-packet path's results.

Ports
    pass    translated packets, and untouched ones: IPv6, non-IP, traffic
            between inside hosts, traffic between outside hosts
    drop    reasons: "no_binding" (inbound to a public endpoint without a
            live binding or forward, or from outside straight to an inside
            address; an ICMP error about no live binding, either way),
            "filtered" (the binding's filter refuses the remote),
            "ports_exhausted" (every port of the partition held by a live
            binding), "table_full" (max_entries bindings, none half-open),
            "unsupported" (outbound protocol other than TCP, UDP, ICMP echo
            and ICMP errors: it cannot be translated and must not leak the
            inside address), "fragment" (a later fragment of a translated
            datagram whose first fragment was not seen in the last 30 s),
            "malformed"

Config (NatConfig, functions/nat/config.py)
    inside        IPv4 CIDRs of the inside networks
    public_ips    public IPv4 addresses (paired pooling over them)
    ports         dynamic port / ICMP identifier range, default "1024-65535"
    port_forwards [{proto: tcp|udp, public: "IP:port", inside: "IP:port"}]
    timeouts      seconds: tcp 7440, tcp_transitory 240, udp 300, icmp 60
    filtering     endpoint-independent | address-dependent |
                  address-and-port-dependent (default)
    max_entries   bindings per partition, 1,000,000; sweep_interval 1 s

State (functions/nat/bindings.py)
    bind  internal endpoint -> [pub IP hex, pub port, last_seen_ns, tcp_bits, remotes]
    rev   public endpoint -> [internal IP hex, internal port]
    frag  version byte + src + dst + proto + 4-byte IP id of a translated first
          fragment -> [ts_ns, reason, "src"|"dst"|"", new address hex]; 30 s
    Sweeps (every sweep_interval of packet time) delete expired bindings and
    frag entries; packets also treat them as absent. A new binding takes the
    first free port of its partition from a hashed start, else the port of
    the binding that expired first (portsets.py: O(1) whatever the fill).
    Forwards need no state. Keys are written on change only.

Partitioning
    key "custom" (flow-consistent): outbound by the internal endpoint,
    inbound by the public endpoint (a forward's: by its inside endpoint),
    ICMP errors by the endpoint of the quoted flow. Public ports are chosen
    to land on their internal endpoint's partition. See docs/functions/nat.md.

Metrics
    the engine's counters: "in", "pass", "drop:<reason>", "evicted" (half-open
    TCP bindings evicted at max_entries).

Example
    - type: nat
      inside: [10.0.0.0/8]
      public_ips: [198.51.100.1, 198.51.100.2]
      port_forwards: [{proto: tcp, public: "198.51.100.1:443", inside: "10.0.0.5:8443"}]
      filtering: address-dependent
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import count
from typing import ClassVar

from snf.core.contract import (
    EVICTED,
    TABLE_FULL,
    Decisions,
    FunctionConfig,
    KeyKind,
    NetworkFunction,
    Record,
    SweepContext,
    triage,
)
from snf.core.reasons import MALFORMED
from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch
from snf.packet.fragments import FRAG_TTL_NS, datagram_key_of
from snf.packet.headers import FRAG_FIRST, FRAG_LATER, KIND_IP, Headers
from snf.packet.rewrite import set_ipv4_addr, set_ipv4_endpoint

from .bindings import Bindings
from .config import NatConfig, NatTimeouts, PortForward, compile_config
from .fastpath import process_batch
from .flows import IN, NO, OUT, PASS, Classes, Flows
from .icmp import ERROR_TYPES, quote_of, rewrite_quote
from .outcome import (
    FILTERED,
    FRAGMENT,
    NO_BINDING,
    PASSED,
    PORTS_EXHAUSTED,
    UNSUPPORTED,
    Outcome,
    drop,
)
from .ports import EndpointHasher
from .state import Derived, FragView

__all__ = ["Nat", "NatConfig", "NatTimeouts", "PortForward"]

_UNKNOWN = -1  # not in the key cache (a cached key may be None)
_CACHE_MAX = 1 << 16

MIN_ENDPOINTS_PER_PARTITION = 64


class Nat(NetworkFunction):
    """NAT44 core; see the module docstring."""

    kind: ClassVar[str] = "nat"
    ports: ClassVar[tuple[str, ...]] = ("pass", "drop")
    reasons: ClassVar[tuple[str, ...]] = (
        MALFORMED,
        NO_BINDING,
        FILTERED,
        PORTS_EXHAUSTED,
        UNSUPPORTED,
        FRAGMENT,
        TABLE_FULL,
    )
    metrics: ClassVar[tuple[str, ...]] = (EVICTED,)
    tables: ClassVar[tuple[str, ...]] = ("bind", "rev", "frag")
    Config: ClassVar[type[FunctionConfig]] = NatConfig
    key: KeyKind = "custom"
    key_flow_consistent: bool = True

    def __init__(self, config: NatConfig) -> None:
        super().__init__(config)
        self.config: NatConfig = config
        self.c = compile_config(config)
        self._class = Classes(self.c)
        self.flows = Flows(self.c, self._class)
        self._ep = EndpointHasher()
        self._keys: dict[tuple[int, bytes, int, bytes, int], int | None] = {}
        self.derived = Derived(self.c, self._ep, config.max_entries)
        # The batch path (fastpath.py); False: every packet through decide(), as
        # before it, which the equivalence tests compare it with.
        self.fast_path = True

    def partition_problem(self, partitions: int) -> str | None:
        # Each partition owns the public endpoints that hash to it (replies must
        # land there), so every partition needs a fair share of them.
        endpoints = (self.c.hi - self.c.lo + 1) * len(self.c.public_ips)
        if endpoints < MIN_ENDPOINTS_PER_PARTITION * partitions:
            most = max(1, endpoints // MIN_ENDPOINTS_PER_PARTITION)
            return (
                f"{endpoints} public endpoints (ports x public_ips) give each of {partitions} "
                f"partitions fewer than {MIN_ENDPOINTS_PER_PARTITION}; use at most {most} "
                "partitions or widen ports"
            )
        return None

    # -- classification and keys ----------------------------------------------

    def _public_hash(self, p: int, ip: bytes, port: int) -> int:
        """Key of a public endpoint: a forward's is its inside endpoint's."""
        fwd = self.c.fwd_public.get((p, ip, port))
        return self._ep(p, *fwd) if fwd is not None else self._ep(p, ip, port)

    def key_hashes(self, batch: PacketBatch, headers: Headers) -> Sequence[int | None]:
        h = headers
        columns = (h.kind, h.version, h.frag, h.proto, h.src, h.sport, h.dst, h.dport)
        if not self.fast_path or any(len(c) != len(h) for c in (*columns, h.icmp_type)):
            return self.key_hashes_each(batch, h)
        # A key is a function of the 5-tuple, remembered; an ICMP error's is its quote's.
        keys, known = self._keys, self._keys.get
        out: list[int | None] = []
        for i, kind, v, fr, p, s, sp, d, dp in zip(count(), *columns):
            if kind != KIND_IP or v != 4 or fr == FRAG_LATER:
                out.append(None)
                continue
            try:
                if p == 1 and h.icmp_type[i] in ERROR_TYPES:
                    out.append(self._key(batch, h, i))
                    continue
                five = (p, s, sp, d, dp)
                value = known(five, _UNKNOWN)
                if value == _UNKNOWN:
                    value = self._key(batch, h, i)
                    if len(keys) >= _CACHE_MAX:
                        keys.clear()
                    keys[five] = value
                out.append(value)
            except Exception:  # damaged headers: no preference
                out.append(None)
        return out

    def key_hashes_each(self, batch: PacketBatch, headers: Headers) -> list[int | None]:
        """key_hashes packet by packet, nothing remembered (the reference)."""
        out: list[int | None] = []
        h = headers
        for i in range(len(h)):
            if h.kind[i] != KIND_IP or h.version[i] != 4 or h.frag[i] == FRAG_LATER:
                out.append(None)
                continue
            try:
                out.append(self._key(batch, h, i))
            except Exception:  # damaged headers: no preference
                out.append(None)
        return out

    def _key(self, batch: PacketBatch, h: Headers, i: int) -> int | None:
        s, d, p, sp, dp = h.src[i], h.dst[i], h.proto[i], h.sport[i], h.dport[i]
        cls = self._class(s, d)
        if p == 1 and h.icmp_type[i] in ERROR_TYPES and cls in (OUT, IN):
            q = quote_of(batch.packet(i), h.l3_off[i], h.l4_off[i])
            if q is not None and q.sport >= 0:
                if cls == OUT:
                    return self._ep(q.proto, q.dst, q.dport)
                return self._public_hash(q.proto, q.src, q.sport)
        if cls == OUT:
            return self._ep(p, s, sp)
        if cls == IN:
            return self._public_hash(p, d, dp)
        if cls == NO:
            return self._ep(p, d, dp)
        return self._public_hash(p, s, sp) if self._class.is_public(s) else None

    # -- processing ------------------------------------------------------------

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        if self.fast_path:
            return process_batch(self, batch, headers, state)
        return self.process_each(batch, headers, state)

    def bindings(self, state: BatchState) -> Bindings:
        return self.derived.bindings(state, self.partitions)

    def frag(self, state: BatchState) -> FragView:
        return self.derived.frag(state)

    def forget(self, partition: int) -> None:
        self.derived.forget(partition)

    def sweep(self, state: BatchState, ctx: SweepContext) -> dict[str, list[Record]]:
        self.derived.sweep(state, ctx, self.partitions)
        return {}

    def process_each(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        """Every IP packet through decide(), one by one (the reference of the batch path)."""
        decisions, ip = triage(headers)
        ports, reasons, replaced = decisions.ports, decisions.reasons, decisions.replaced
        ts = batch.records["ts_ns"].tolist()
        b = self.bindings(state)
        frag = self.frag(state)
        decide = self.decide
        for i in ip:
            try:
                reason, pkt, _, _ = decide(batch, headers, i, ts[i], b, frag)
            except Exception:  # crafted content broke an assumption: drop, never raise
                reason, pkt = MALFORMED, None
            if reason:
                ports[i], reasons[i] = "drop", reason
            elif pkt is not None:
                replaced[i] = bytes(pkt)
        if b.evicted:
            decisions.metrics[EVICTED] = b.evicted
        return decisions

    def decide(
        self, batch: PacketBatch, h: Headers, i: int, t: int, b: Bindings, frag: FragView
    ) -> Outcome:
        """An IP packet's outcome (the prelude, triage(), took the others)."""
        if h.version[i] != 4:
            return PASSED
        s, d = h.src[i], h.dst[i]
        cls = self._class(s, d)
        if cls == PASS:
            return PASSED
        if cls == NO:
            return drop(NO_BINDING)
        if h.frag[i] == FRAG_LATER:
            return self._later(batch, h, i, t, frag)
        off = batch.offsets
        if not 0 <= h.l3_off[i] < h.l4_off[i] <= off[i + 1] - off[i] - 4:
            return drop(MALFORMED)  # headers inconsistent with the bytes
        if h.proto[i] == 1 and h.icmp_type[i] in ERROR_TYPES:
            outcome = self._error(batch, h, i, t, b, cls)
        elif cls == OUT:
            outcome = self._outbound(batch, h, i, t, b)
        else:
            outcome = self._inbound(batch, h, i, t, b)
        if h.frag[i] == FRAG_FIRST:
            reason, _, which, addr = outcome
            fkey = datagram_key_of(h, i)
            value = [t, reason, which, addr.hex()]
            if frag.get(fkey) != value:
                frag.set(fkey, value)
        return outcome

    @staticmethod
    def _translatable(h: Headers, i: int) -> bool:
        p = h.proto[i]
        return p == 6 or p == 17 or (p == 1 and h.icmp_type[i] in (0, 8))

    def _outbound(self, batch: PacketBatch, h: Headers, i: int, t: int, b: Bindings) -> Outcome:
        if not self._translatable(h, i):
            return drop(UNSUPPORTED)
        p, s, sp = h.proto[i], h.src[i], h.sport[i]
        mapped = self.c.fwd_inside.get((p, s, sp))
        if mapped is None:
            flags = h.tcp_flags[i] if p == 6 else 0
            mapped = b.outbound(p, s, sp, h.dst[i], h.dport[i], flags, t)
            if isinstance(mapped, str):
                return drop(mapped)  # ports_exhausted, table_full
        return self._rewrite(batch, h, i, "src", *mapped)

    def _inbound(self, batch: PacketBatch, h: Headers, i: int, t: int, b: Bindings) -> Outcome:
        if not self._translatable(h, i):
            return drop(NO_BINDING)
        p, d, dp = h.proto[i], h.dst[i], h.dport[i]
        mapped = self.c.fwd_public.get((p, d, dp))
        if mapped is None:
            found = b.public(p, d, dp, t)
            if found is None:
                return drop(NO_BINDING)
            key, entry = found
            if not b.admits(entry, p, h.src[i], h.sport[i]):
                return drop(FILTERED)
            b.inbound(key, entry, p, h.tcp_flags[i] if p == 6 else 0, t)
            mapped = (key[1:5], int.from_bytes(key[5:7], "big"))
        return self._rewrite(batch, h, i, "dst", *mapped)

    @staticmethod
    def _rewrite(
        batch: PacketBatch, h: Headers, i: int, which: str, ip: bytes, port: int
    ) -> Outcome:
        pkt = bytearray(batch.packet(i))
        l3, l4, p = h.l3_off[i], h.l4_off[i], h.proto[i]
        set_ipv4_endpoint(pkt, l3, l4, p, which, ip, port)
        return ("", pkt, which, ip)

    def _error(
        self, batch: PacketBatch, h: Headers, i: int, t: int, b: Bindings, cls: int
    ) -> Outcome:
        """An ICMP error: translate it when its quote belongs to a live binding."""
        l3, l4 = h.l3_off[i], h.l4_off[i]
        pkt = bytearray(batch.packet(i))
        q = quote_of(pkt, l3, l4)
        if q is None:
            return drop(MALFORMED)
        if q.sport < 0:
            return drop(NO_BINDING)
        if cls == IN:  # the quote is an outbound packet as we sent it: src is public
            mapped = self.c.fwd_public.get((q.proto, q.src, q.sport))
            if mapped is None:
                found = b.public(q.proto, q.src, q.sport, t)
                if found is None:
                    return drop(NO_BINDING)
                key, entry = found
                if not b.admits(entry, q.proto, q.dst, q.dport):
                    return drop(FILTERED)
                mapped = (key[1:5], int.from_bytes(key[5:7], "big"))
            outer, inner = "dst", "src"
        else:  # from inside, about an inbound packet: the quote's dst is internal
            mapped = self.c.fwd_inside.get((q.proto, q.dst, q.dport))
            if mapped is None:
                mapped = b.internal(q.proto, q.dst, q.dport, t)
                if mapped is None:
                    return drop(NO_BINDING)
            outer, inner = "src", "dst"
        set_ipv4_addr(pkt, l3, l4, 1, outer, mapped[0])
        rewrite_quote(pkt, l4, q, inner, *mapped)
        return ("", pkt, outer, mapped[0])

    @staticmethod
    def _later(batch: PacketBatch, h: Headers, i: int, t: int, frag: FragView) -> Outcome:
        """A non-first fragment of a datagram that needs translation."""
        fkey = datagram_key_of(h, i)
        entry = frag.get(fkey)
        if entry is None or t - entry[0] > FRAG_TTL_NS:
            if entry is not None:
                frag.delete(fkey)
            return drop(FRAGMENT)
        reason, which, addr = entry[1], entry[2], bytes.fromhex(entry[3])
        if reason:
            return drop(reason)
        pkt = bytearray(batch.packet(i))
        set_ipv4_addr(pkt, h.l3_off[i], -1, h.proto[i], which, addr)
        return ("", pkt, which, addr)
