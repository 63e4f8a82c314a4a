"""Stateful firewall: ordered rules plus connection tracking.

Summary
    Packets of a tracked, live connection pass in both directions. Every other
    packet is matched against the rules in order (first match wins); when no
    rule matches, `default` decides. An allowed packet starts tracking its
    connection ("loose" pickup, as Linux conntrack: any allowed packet, not
    only a SYN), so replies pass even when the rules alone would drop them.
    Non-first IPv4/IPv6 fragments inherit the verdict of their datagram's
    first fragment. Time is packet time (the capture timestamp), never the
    wall clock, so a replay decides exactly as the live run did.

Ports
    pass    allowed packets, unchanged
    drop    dropped packets; reason "rule:<i>" (the i-th rule, 0-based, said
            drop), "default", "fragment" (non-first fragment whose first
            fragment was not seen or has expired), "non_ip", "malformed"

Config (FirewallConfig)
    default   allow|drop, default drop: packets with no live connection and
              no matching rule (a firewall fails closed)
    non_ip    allow|drop, default allow: frames that carry no IP (ARP, LLDP...)
    rules     ordered list of {action, proto, src, dst, sport, dport}; a
              missing field matches anything; matched against the packet as
              it travels (its own source and destination)
    timeouts  seconds: tcp 3600, tcp_syn 120 (half-open), tcp_closing 10
              (after FIN both ways), udp 60, icmp 30 (ICMP and ICMPv6),
              other 60, fragment 30
    max_entries     conn entries per partition, default 1,000,000
    sweep_interval  seconds of packet time between sweeps, default 1 (0: none)

State
    conn  key: the canonical bidirectional flow key (Headers.flow)
          value: [last_seen_ns, fin_mask] (bit d set: FIN seen in direction d)
          expiry: an entry older than its class timeout (tcp_syn while
          half-open: state bit 2+d, opened by a bare SYN from direction d, no
          reply yet) counts as absent; the sweep deletes it (snf.core.expiry),
          and a full table (max_entries) evicts half-open entries first
          and is overwritten (packet allowed) or deleted (packet dropped); a
          passing RST deletes its entry
    frag  key: version byte + src + dst + proto byte + 4-byte IP id
          value: [first_fragment_ts_ns, allowed 0|1, reason]
          expiry: after `timeouts.fragment`, lazily and by the sweep
    A key is written only when its value changes, and the batch view writes
    it at most once per batch.

Metrics
    the engine's counters: "in", "pass", "drop:<reason>" (e.g. "drop:rule:2");
    "evicted" (conn entries evicted from a full table).

Example
    - type: firewall
      default: drop
      rules:
        - {action: drop, src: 10.66.0.0/16}
        - {action: allow, proto: tcp, src: 10.0.0.0/8, dport: [80, 443]}
        - {action: allow, proto: udp, dport: 53}
        - {action: allow, proto: icmp}
      timeouts: {udp: 30}
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator

from snf.core.cidr import parse_cidrs
from snf.core.contract import (
    EVICTED,
    BoundedStateConfig,
    Decisions,
    FunctionConfig,
    NetworkFunction,
    Record,
    SweepContext,
    triage,
)
from snf.core.expiry import ExpiryIndex, PartitionIndexes
from snf.core.limits import Seconds
from snf.core.reasons import MALFORMED, NON_IP, numbered
from snf.core.tables import BatchState, TableView
from snf.packet.batch import PacketBatch
from snf.packet.fragments import FRAG_TTL_NS, datagram_key_of
from snf.packet.headers import FRAG_FIRST, FRAG_LATER, Headers

from .rules import CompiledRule, compile_rule, match_rules, parse_ports, parse_proto

__all__ = ["Firewall", "FirewallConfig", "FirewallRule", "FirewallTimeouts"]

_FIN = 0x01
_SYN = 0x02
_RST = 0x04
_ACK = 0x10
_SYN_ACK = _SYN | _ACK
_HALF_OPEN = 0x0C  # state bits 2+d: opened by a bare SYN from direction d, no reply yet
_NS = 1_000_000_000
DEFAULT = "default"  # no live connection, no matching rule, default drop
FRAGMENT = "fragment"  # a later fragment whose first fragment was not seen (or expired)
RULE = "rule"  # numbered: rule:<i>, the i-th rule (0-based) said drop

PortSpec = int | str | list[int | str]


class FirewallRule(BaseModel, extra="forbid"):
    """One rule; every field but `action` is optional and absent matches anything."""

    action: Literal["allow", "drop"] = Field(description="What to do with a matching packet.")
    proto: str | int | None = Field(
        default=None,
        description="tcp, udp, icmp, icmpv6, a protocol number 0..255, or any.",
    )
    src: str | list[str] | None = Field(
        default=None,
        description="Source CIDR or list of CIDRs, v4 or v6; a bare address is /32 or /128.",
    )
    dst: str | list[str] | None = Field(
        default=None, description="Destination CIDR or list of CIDRs, as for src."
    )
    sport: PortSpec | None = Field(
        default=None,
        description="Source port, 'lo-hi' range, or a list of those; only packets with "
        "ports (TCP, UDP, SCTP, DCCP, UDP-Lite) match, never ICMP.",
    )
    dport: PortSpec | None = Field(default=None, description="Destination port(s), as for sport.")

    # "before" validators see the raw value, so a bool is not taken for a port or proto.
    @field_validator("proto", mode="before")
    @classmethod
    def _check_proto(cls, value: Any) -> Any:
        if value is not None:
            parse_proto(value)
            if isinstance(value, str):
                return value.strip().lower()
        return value

    @field_validator("src", "dst", mode="before")
    @classmethod
    def _check_cidrs(cls, value: Any) -> Any:
        if value is not None:
            parse_cidrs(value)
        return value

    @field_validator("sport", "dport", mode="before")
    @classmethod
    def _check_ports(cls, value: Any) -> Any:
        if value is not None:
            parse_ports(value)
        return value


class FirewallTimeouts(BaseModel, extra="forbid"):
    """Idle lifetimes in seconds (packet time) of tracked state."""

    tcp: Seconds = Field(default=3600, description="TCP connection idle timeout.")
    tcp_syn: Seconds = Field(
        default=120,
        description="TCP connection opened by a bare SYN that has seen no reply yet "
        "(half-open; Linux conntrack's syn_sent).",
    )
    tcp_closing: Seconds = Field(
        default=10, description="TCP connection after a FIN was seen in both directions."
    )
    udp: Seconds = Field(default=60, description="UDP flow idle timeout.")
    icmp: Seconds = Field(default=30, description="ICMP and ICMPv6 idle timeout.")
    other: Seconds = Field(default=60, description="Any other IP protocol.")
    fragment: float = Field(
        default=30,
        gt=0,
        le=FRAG_TTL_NS / _NS,
        description="How long a first fragment's verdict is remembered for the later "
        "fragments of its datagram. At most 30 s: the capture agent keeps a datagram's "
        "fragments on one partition for 30 s of packet time (snf.packet.fragments.FRAG_TTL_NS).",
    )


class FirewallConfig(BoundedStateConfig):
    """Config of the firewall function."""

    default: Literal["allow", "drop"] = Field(
        default="drop",
        description="Verdict for packets with no live connection and no matching rule; "
        "drop by default so that a firewall fails closed.",
    )
    non_ip: Literal["allow", "drop"] = Field(
        default="allow", description="Verdict for frames that carry no IP (ARP, LLDP, ...)."
    )
    rules: list[FirewallRule] = Field(
        default_factory=list, description="Ordered rules; the first match wins."
    )
    timeouts: FirewallTimeouts = Field(
        default_factory=FirewallTimeouts, description="Idle timeouts in seconds."
    )


class Firewall(NetworkFunction):
    """Stateful firewall core; see the module docstring."""

    kind: ClassVar[str] = "firewall"
    ports: ClassVar[tuple[str, ...]] = ("pass", "drop")
    reasons: ClassVar[tuple[str, ...]] = (MALFORMED, NON_IP, DEFAULT, FRAGMENT, numbered(RULE))
    metrics: ClassVar[tuple[str, ...]] = (EVICTED,)
    key: ClassVar[str] = "flow"
    tables: ClassVar[tuple[str, ...]] = ("conn", "frag")
    Config: ClassVar[type[FunctionConfig]] = FirewallConfig

    def __init__(self, config: FirewallConfig) -> None:
        super().__init__(config)
        self.config: FirewallConfig = config
        self.rules: list[CompiledRule] = [
            compile_rule(r.action, r.proto, r.src, r.dst, r.sport, r.dport) for r in config.rules
        ]
        self._rule_reasons = [
            "" if rule.allow else numbered(RULE, i) for i, rule in enumerate(self.rules)
        ]
        t = config.timeouts
        self._tcp_ns = round(t.tcp * _NS)
        self._syn_ns = round(t.tcp_syn * _NS)
        self._closing_ns = round(t.tcp_closing * _NS)
        self._other_ns = round(t.other * _NS)
        self._frag_ns = round(t.fragment * _NS)
        icmp_ns = round(t.icmp * _NS)
        # Non-TCP timeout by protocol number; TCP is handled apart (FIN state).
        self._timeout_ns: dict[int, int] = {17: round(t.udp * _NS), 1: icmp_ns, 58: icmp_ns}
        # Per partition, when each conn and frag entry expires (snf.core.expiry).
        self._conn_due = PartitionIndexes("conn", self._conn_entry_due)
        self._frag_due = PartitionIndexes("frag", self._frag_entry_due)

    def _timeout(self, proto: int, fins: int) -> int:
        if proto != 6:
            return self._timeout_ns.get(proto, self._other_ns)
        if fins & 3 == 3:
            return self._closing_ns
        return self._syn_ns if fins & _HALF_OPEN else self._tcp_ns

    def _conn_entry_due(self, key: bytes, value: Any) -> tuple[int, bool]:
        """(due, embryonic) of a conn entry: the lazy path treats it as absent from due."""
        fins = value[1]
        return value[0] + self._timeout(key[1], fins) + 1, bool(fins & _HALF_OPEN)

    def _frag_entry_due(self, key: bytes, value: Any) -> tuple[int, bool]:
        return value[0] + self._frag_ns + 1, False

    def _indexes(self, state: BatchState) -> tuple[ExpiryIndex, ExpiryIndex]:
        """This partition's indexes, rebuilt from its tables after forget()."""
        return self._conn_due.of(state), self._frag_due.of(state)

    def forget(self, partition: int) -> None:
        self._conn_due.forget(partition)
        self._frag_due.forget(partition)

    def sweep(self, state: BatchState, ctx: SweepContext) -> dict[str, list[Record]]:
        """Delete the conn and frag entries expired by ctx.now_ns, earliest first."""
        for name, index in zip(("conn", "frag"), self._indexes(state), strict=True):
            view = state.table(name)
            for key in index.expired(ctx.now_ns, ctx.limit):
                view.delete(key)
                index.discard(key)
        return {}

    def _rule_verdict(self, h: Headers, i: int, proto: int) -> tuple[bool, str]:
        """(allowed, reason) from the rules, or from `default` when none matches."""
        index = match_rules(
            self.rules, h.version[i], proto, h.src[i], h.dst[i], h.sport[i], h.dport[i]
        )
        if index < 0:
            allow = self.config.default == "allow"
            return allow, "" if allow else DEFAULT
        return self.rules[index].allow, self._rule_reasons[index]

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        decisions, ip = triage(headers, drop_non_ip=self.config.non_ip == "drop")
        ports, reasons = decisions.ports, decisions.reasons
        ts = batch.records["ts_ns"].tolist()
        conn_due, frag_due = self._indexes(state)
        conn = state.table("conn")
        frags = state.table("frag")
        conn_get, frag_get, frag_set = conn.get, frags.get, frags.set
        frag, proto, flow = headers.frag, headers.proto, headers.flow
        tcp_flags, direction = headers.tcp_flags, headers.direction
        timeout, frag_ns = self._timeout, self._frag_ns
        rule_verdict, later_fragment, track = self._rule_verdict, self._later_fragment, self._track
        evicted = 0

        for i in ip:
            try:
                if frag[i] == FRAG_LATER:
                    allow, reason = later_fragment(headers, i, ts[i], frags, frag_due)
                else:
                    t = ts[i]
                    p = proto[i]
                    ckey = flow[i]
                    flags = tcp_flags[i] if p == 6 else 0
                    first_key = datagram_key_of(headers, i) if frag[i] == FRAG_FIRST else None
                    entry = conn_get(ckey)
                    live = expired = False
                    if entry is not None:
                        fins = entry[1]
                        expired = t - entry[0] > timeout(p, fins)
                        # After FIN both ways a bare SYN opens a new connection on
                        # the same ports, which the rules must admit (conntrack does
                        # the same in TIME_WAIT); other packets ride the old entry.
                        live = not expired and not (fins & 3 == 3 and flags & (_SYN | _ACK) == _SYN)
                    if live:
                        allow, reason = True, ""
                    else:
                        allow, reason = rule_verdict(headers, i, p)
                    # State changes come last, so a failure above writes nothing.
                    if allow or expired:
                        evicted += track(
                            conn, conn_due, ckey, entry, live, allow, t, flags, direction[i]
                        )
                    if first_key is not None:
                        value = [t, 1 if allow else 0, reason]
                        if frag_get(first_key) != value:  # a repeated first fragment renews it
                            frag_set(first_key, value)
                            frag_due.set(first_key, t + frag_ns + 1)
            except Exception:  # crafted content broke an assumption: drop, never raise
                allow, reason = False, MALFORMED
            if not allow:
                ports[i], reasons[i] = "drop", reason
        if evicted:
            decisions.metrics[EVICTED] = evicted
        return decisions

    def _track(
        self,
        conn: TableView,
        due: ExpiryIndex,
        ckey: bytes,
        entry: list[int] | None,
        live: bool,
        allow: bool,
        t: int,
        flags: int,
        d: int,
    ) -> int:
        """Conntrack after a verdict (allowed, or an expired entry found); returns
        the number of entries evicted to make room (0 or 1)."""
        if not allow or flags & _RST:
            if entry is not None:
                conn.delete(ckey)  # expired and dropped, or reset: the entry goes
                due.discard(ckey)
            return 0
        if live:
            assert entry is not None
            last, fins = entry[0], entry[1]
            new_last = t if t > last else last  # packet time may step back
            new_fins = fins | (1 << d) if flags & _FIN else fins
            if new_fins & _HALF_OPEN and not new_fins & (4 << d):
                new_fins &= ~_HALF_OPEN  # the other side answered
            if new_last == last and new_fins == fins:
                return 0
            value = [new_last, new_fins]
        else:
            value = [
                t,
                ((1 << d) if flags & _FIN else 0) | (4 << d if flags & _SYN_ACK == _SYN else 0),
            ]
        evicted = 0
        if entry is None and len(due) >= self.config.max_entries:
            victim = due.victim()  # full: half-open first, then the closest to expiry
            if victim is not None:
                conn.delete(victim)
                due.discard(victim)
                evicted = 1
        conn.set(ckey, value)
        due.set(ckey, *self._conn_entry_due(ckey, value))
        return evicted

    def _later_fragment(
        self, h: Headers, i: int, t: int, frags: TableView, due: ExpiryIndex
    ) -> tuple[bool, str]:
        """A non-first fragment has no L4 header: it inherits its first fragment's
        verdict (stored reason included), and never touches conntrack."""
        fkey = datagram_key_of(h, i)
        fentry = frags.get(fkey)
        if fentry is not None and t - fentry[0] <= self._frag_ns:
            return fentry[1] == 1, fentry[2]
        if fentry is not None:
            frags.delete(fkey)  # expired
            due.discard(fkey)
        return False, FRAGMENT
