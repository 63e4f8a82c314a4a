"""Reference model of the firewall, written from its semantics alone.

An independent check of `functions/firewall.py` (see docs/functions/firewall.md):
it decodes frames with dpkt, matches rules with `ipaddress`, and keeps one
global state in capture order: no partitions, no batches, no write-on-change.
It imports nothing from snf. Slow and plain on purpose: tests compare the
pipeline's output with `model_verdicts` on real captures.

Semantics modelled
    * Non-IP frames: `non_ip`. Frames that claim IP but whose IP or L4 header
      is cut short or inconsistent: dropped. VLAN tags and MPLS labels are
      looked through by dpkt's Ethernet decoder.
    * A packet whose flow has a live entry passes, in either direction, and
      refreshes it. Live: `now - last_seen <= timeout` (packet time).
    * Otherwise the first matching rule decides, else `default`. An allowed
      packet creates an entry ("loose" pickup); a dropped one creates nothing.
    * TCP: an allowed RST removes the entry. After a FIN from both ends the
      timeout is `tcp_closing`, and a bare SYN (no ACK) is a new connection
      that the rules decide (as Linux conntrack in TIME_WAIT).
    * Flows: protocols with ports by (proto, {(src, sport), (dst, dport)});
      ICMP/ICMPv6 echo by (proto, identifier, {src, dst}); anything else by
      (proto, {src, dst}).
    * A non-first fragment takes the verdict of its datagram's first fragment
      (same src, dst, proto, IP id) seen at most `fragment` seconds earlier,
      else it is dropped. It never touches the flow entries.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import dpkt

from tests.model_decode import ip_layer, read_l4

__all__ = ["Packet", "decode", "model_verdicts"]

NS = 1_000_000_000
PROTO_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
# Protocols with ports (TCP, UDP, DCCP, SCTP, UDP-Lite) -> bytes of their fixed header.
TIMEOUTS = {"tcp": 3600, "tcp_closing": 10, "udp": 60, "icmp": 30, "other": 60, "fragment": 30}
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class Packet:
    """What the firewall may look at in one IP packet."""

    proto: int
    src: Address
    dst: Address
    sport: int | None = None  # None: no ports (ICMP, port-less protocols, later fragments)
    dport: int | None = None
    flags: int = 0  # TCP flags
    echo_id: int | None = None  # ICMP/ICMPv6 echo identifier
    datagram: tuple[Any, ...] | None = None  # (src, dst, proto, IP id) when a fragment
    later: bool = False  # a non-first fragment: no L4 header

    @property
    def flow(self) -> tuple[Any, ...]:
        """The bidirectional connection key."""
        if self.sport is not None:
            return (self.proto, frozenset({(self.src, self.sport), (self.dst, self.dport)}))
        if self.echo_id is not None:
            return (self.proto, "echo", self.echo_id, frozenset({self.src, self.dst}))
        return (self.proto, frozenset({self.src, self.dst}))

    def __str__(self) -> str:
        ports = f" {self.sport} -> {self.dport}" if self.sport is not None else ""
        return f"proto {self.proto} {self.src} -> {self.dst}{ports}"


def decode(frame: bytes) -> Packet | str:
    """An Ethernet frame's Packet, or "non_ip", or "malformed"."""
    ip = ip_layer(frame)
    if isinstance(ip, str):
        return ip
    src, dst = ipaddress.ip_address(ip.src), ipaddress.ip_address(ip.dst)
    if ip.v == 4:
        datagram = (src, dst, ip.p, ip.id) if ip.mf or ip.offset else None
        return _transport(ip.p, src, dst, ip.data, datagram, ip.offset > 0)
    # (dpkt reads ESP as an extension header; no capture here has IPv6 ESP.)
    datagram, later = None, False
    for ext in ip.all_extension_headers:
        if isinstance(ext, dpkt.ip6.IP6FragmentHeader) and (ext.frag_off or ext.m_flag):
            datagram, later = (src, dst, ip.p, ext.id), ext.frag_off > 0
    return _transport(ip.p, src, dst, ip.data, datagram, later)


def _transport(
    proto: int, src: Address, dst: Address, payload: Any, datagram: Any, later: bool
) -> Packet | str:
    pkt = Packet(proto, src, dst, datagram=datagram, later=later)
    if later:  # no L4 header here
        return pkt
    l4 = read_l4(proto, payload)
    if isinstance(l4, str):
        return l4
    pkt.sport, pkt.dport, pkt.flags, pkt.echo_id = l4
    return pkt


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _rule_matches(rule: dict[str, Any], pkt: Packet) -> bool:
    proto = rule.get("proto")
    if proto is not None and str(proto).lower() != "any":
        number = proto if isinstance(proto, int) else PROTO_NAMES[proto.lower()]
        if number != pkt.proto:
            return False
    for name, addr in (("src", pkt.src), ("dst", pkt.dst)):
        if name in rule and not any(
            addr in ipaddress.ip_network(cidr) for cidr in _as_list(rule[name])
        ):
            return False  # (an address is never "in" a network of the other version)
    for name, port in (("sport", pkt.sport), ("dport", pkt.dport)):
        if name in rule and not (port is not None and _port_in(port, rule[name])):
            return False
    return True


def _port_in(port: int, spec: Any) -> bool:
    for item in _as_list(spec):
        lo, _, hi = str(item).partition("-")
        if int(lo) <= port <= int(hi or lo):
            return True
    return False


@dataclass
class _Conn:
    last_seen: int  # ns
    fin_from: set[Any] = field(default_factory=set)  # endpoints (addr, port) that sent a FIN


def model_verdicts(packets: list[tuple[int, bytes]], config: dict[str, Any]) -> list[bool]:
    """One verdict per (ts_ns, Ethernet frame), in order; True means the packet passes."""
    timeouts = {k: round(v * NS) for k, v in {**TIMEOUTS, **config.get("timeouts", {})}.items()}
    rules = config.get("rules", [])
    default_allow = config.get("default", "drop") == "allow"
    non_ip_allow = config.get("non_ip", "allow") == "allow"
    conns: dict[tuple[Any, ...], _Conn] = {}
    first_fragments: dict[tuple[Any, ...], tuple[int, bool]] = {}  # datagram -> (ts, verdict)

    def by_rules(pkt: Packet) -> bool:
        for rule in rules:
            if _rule_matches(rule, pkt):
                return rule["action"] == "allow"
        return default_allow

    def timeout(pkt: Packet, conn: _Conn) -> int:
        if pkt.proto == 6:
            return timeouts["tcp_closing" if len(conn.fin_from) == 2 else "tcp"]
        return timeouts[{17: "udp", 1: "icmp", 58: "icmp"}.get(pkt.proto, "other")]

    verdicts = []
    for ts, frame in packets:
        pkt = decode(frame)
        if isinstance(pkt, str):
            allow = pkt == "non_ip" and non_ip_allow
        elif pkt.later:
            first = first_fragments.get(pkt.datagram)
            allow = first is not None and ts - first[0] <= timeouts["fragment"] and first[1]
        else:
            conn = conns.get(pkt.flow)
            live = conn is not None and ts - conn.last_seen <= timeout(pkt, conn)
            if live and len(conn.fin_from) == 2 and pkt.flags & (SYN | ACK) == SYN:
                live = False  # a new connection on the ports of a closing one
            allow = live or by_rules(pkt)
            if allow and pkt.flags & RST:
                conns.pop(pkt.flow, None)
            elif allow and live:
                conn.last_seen = max(conn.last_seen, ts)
                if pkt.flags & FIN:
                    conn.fin_from.add((pkt.src, pkt.sport))
            elif allow:
                conns[pkt.flow] = _Conn(ts, {(pkt.src, pkt.sport)} if pkt.flags & FIN else set())
            if pkt.datagram is not None:
                first_fragments[pkt.datagram] = (ts, allow)
        verdicts.append(allow)
    return verdicts
