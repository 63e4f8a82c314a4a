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
    timeouts  seconds: tcp 3600, tcp_closing 10 (after FIN both ways),
              udp 60, icmp 30 (ICMP and ICMPv6), other 60, fragment 30

State
    conn  key: the canonical bidirectional flow key (Headers.flow)
          value: [last_seen_ns, fin_mask] (bit d set: FIN seen in direction d)
          expiry: lazy; an entry older than its class timeout counts as absent
          and is overwritten (packet allowed) or deleted (packet dropped); a
          passing RST deletes its entry
    frag  key: version byte + src + dst + proto byte + 4-byte IP id
          value: [first_fragment_ts_ns, allowed 0|1, reason]
          expiry: lazy, after `timeouts.fragment`
    A key is written only when its value changes, and the batch view writes
    it at most once per batch.

Metrics
    the engine's counters: "in", "pass", "drop:<reason>" (e.g. "drop:rule:2").

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
from snf.core.contract import Decisions, FunctionConfig, NetworkFunction, triage
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

    tcp: float = Field(default=3600, gt=0, description="TCP connection idle timeout.")
    tcp_closing: float = Field(
        default=10, gt=0, description="TCP connection after a FIN was seen in both directions."
    )
    udp: float = Field(default=60, gt=0, description="UDP flow idle timeout.")
    icmp: float = Field(default=30, gt=0, description="ICMP and ICMPv6 idle timeout.")
    other: float = Field(default=60, gt=0, description="Any other IP protocol.")
    fragment: float = Field(
        default=30,
        gt=0,
        le=FRAG_TTL_NS / _NS,
        description="How long a first fragment's verdict is remembered for the later "
        "fragments of its datagram. At most 30 s: the capture agent keeps a datagram's "
        "fragments on one partition for 30 s of packet time (snf.packet.fragments.FRAG_TTL_NS).",
    )


class FirewallConfig(FunctionConfig):
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
        self._closing_ns = round(t.tcp_closing * _NS)
        self._other_ns = round(t.other * _NS)
        self._frag_ns = round(t.fragment * _NS)
        icmp_ns = round(t.icmp * _NS)
        # Non-TCP timeout by protocol number; TCP is handled apart (FIN state).
        self._timeout_ns: dict[int, int] = {17: round(t.udp * _NS), 1: icmp_ns, 58: icmp_ns}

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
        conn = state.table("conn")
        frags = state.table("frag")
        conn_get, conn_set, conn_del = conn.get, conn.set, conn.delete
        frag_get, frag_set = frags.get, frags.set
        frag, proto, flow = headers.frag, headers.proto, headers.flow
        tcp_flags, direction = headers.tcp_flags, headers.direction
        timeout_get = self._timeout_ns.get
        tcp_ns, closing_ns, other_ns = self._tcp_ns, self._closing_ns, self._other_ns
        rule_verdict, later_fragment = self._rule_verdict, self._later_fragment

        for i in ip:
            try:
                if frag[i] == FRAG_LATER:
                    allow, reason = later_fragment(headers, i, ts[i], frags)
                else:
                    t = ts[i]
                    p = proto[i]
                    ckey = flow[i]
                    flags = tcp_flags[i] if p == 6 else 0
                    first_key = datagram_key_of(headers, i) if frag[i] == FRAG_FIRST else None
                    entry = conn_get(ckey)
                    live = expired = False
                    if entry is not None:
                        last, fins = entry[0], entry[1]
                        if p != 6:
                            timeout = timeout_get(p, other_ns)
                        else:
                            timeout = closing_ns if fins == 3 else tcp_ns
                        expired = t - last > timeout
                        # After FIN both ways a bare SYN opens a new connection on
                        # the same ports, which the rules must admit (conntrack does
                        # the same in TIME_WAIT); other packets ride the old entry.
                        live = not expired and not (fins == 3 and flags & (_SYN | _ACK) == _SYN)
                    if live:
                        allow, reason = True, ""
                    else:
                        allow, reason = rule_verdict(headers, i, p)
                    # State changes come last, so a failure above writes nothing.
                    if allow:
                        if flags & _RST:
                            if entry is not None:
                                conn_del(ckey)
                        elif live:
                            new_last = t if t > last else last  # packet time may step back
                            new_fins = fins | (1 << direction[i]) if flags & _FIN else fins
                            if new_last != last or new_fins != fins:
                                conn_set(ckey, [new_last, new_fins])
                        else:
                            conn_set(ckey, [t, (1 << direction[i]) if flags & _FIN else 0])
                    elif expired:
                        conn_del(ckey)  # stale entry; dropped packets create nothing
                    if first_key is not None:
                        value = [t, 1 if allow else 0, reason]
                        if frag_get(first_key) != value:  # a repeated first fragment renews it
                            frag_set(first_key, value)
            except Exception:  # crafted content broke an assumption: drop, never raise
                allow, reason = False, MALFORMED
            if not allow:
                ports[i], reasons[i] = "drop", reason
        return decisions

    def _later_fragment(self, h: Headers, i: int, t: int, frags: TableView) -> tuple[bool, str]:
        """A non-first fragment has no L4 header: it inherits its first fragment's
        verdict (stored reason included), and never touches conntrack."""
        fkey = datagram_key_of(h, i)
        fentry = frags.get(fkey)
        if fentry is not None and t - fentry[0] <= self._frag_ns:
            return fentry[1] == 1, fentry[2]
        if fentry is not None:
            frags.delete(fkey)  # expired
        return False, FRAGMENT
