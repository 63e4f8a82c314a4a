"""Reference model of the flow monitor, written from its semantics alone.

An independent check of `functions/flowmon.py` (see docs/functions/flowmon.md):
it decodes Ethernet frames with dpkt, formats addresses with `ipaddress`, and
keeps one global table of plain dicts in capture order: no batches, no flow
key bytes, no state writes. It imports nothing from snf.

Semantics modelled
    * Frames that claim IP but whose IP or L4 header is cut short or
      inconsistent are dropped ("malformed"); everything else passes.
      Non-IP frames count in no flow.
    * A flow is (proto, {(src, sport), (dst, dport)}): ports are the TCP, UDP,
      UDP-Lite, SCTP or DCCP ports, the ICMP/ICMPv6 echo identifier in both
      slots, else 0 (other ICMP, port-less protocols, non-first fragments).
    * The initiator is the endpoint that sent the flow's first packet; its
      packets count forward, the other end's count reverse. Octets: IPv4 total
      length, IPv6 payload length + 40.
    * A packet finding its flow quiet for more than `idle` ends it ("idle
      timeout") and starts a new flow; else a flow older than `active` (from
      its first packet) is emitted ("active timeout") and continued with the
      same initiator and the FINs seen so far. A TCP RST, or FINs from both
      endpoints, ends the flow with the packet ("end of flow detected").
    * At the end every remaining flow is emitted: "idle timeout" when quiet
      for more than `idle` at the end time, else "forced end".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import dpkt

from tests.model_decode import ip_layer, read_l4

__all__ = ["FlowModel", "Packet", "decode"]

NS = 1_000_000_000
FIN, RST = 0x01, 0x04

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class Packet:
    """What the flow monitor counts of one IP packet."""

    proto: int
    src: Address
    dst: Address
    length: int  # IP-layer octets
    sport: int = 0
    dport: int = 0
    flags: int = 0

    @property
    def flow(self) -> tuple[Any, ...]:
        return (self.proto, frozenset({(self.src, self.sport), (self.dst, self.dport)}))


def decode(frame: bytes) -> Packet | str:
    """An Ethernet frame's Packet, or "non_ip", or "malformed"."""
    ip = ip_layer(frame)
    if isinstance(ip, str):
        return ip
    src, dst = ipaddress.ip_address(ip.src), ipaddress.ip_address(ip.dst)
    if ip.v == 4:
        return _transport(Packet(ip.p, src, dst, ip.len), ip.data, ip.offset > 0)
    later = any(
        isinstance(ext, dpkt.ip6.IP6FragmentHeader) and ext.frag_off > 0
        for ext in ip.all_extension_headers
    )
    return _transport(Packet(ip.p, src, dst, ip.plen + 40), ip.data, later)


def _transport(pkt: Packet, payload: Any, later: bool) -> Packet | str:
    if later:  # no L4 header here
        return pkt
    l4 = read_l4(pkt.proto, payload)
    if isinstance(l4, str):
        return l4
    if l4.sport is not None:
        pkt.sport, pkt.dport, pkt.flags = l4.sport, l4.dport or 0, l4.flags
    elif l4.echo_id is not None:
        pkt.sport = pkt.dport = l4.echo_id
    return pkt


class FlowModel:
    """Feed packets in capture order; read `records`, `verdicts`, then call finish()."""

    def __init__(self, idle: float = 15, active: float = 300) -> None:
        self.idle = round(idle * NS)
        self.active = round(active * NS)
        self.flows: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.records: list[dict[str, Any]] = []
        self.verdicts: list[tuple[str, str]] = []
        self.ip_packets = 0
        self.ip_octets = 0

    def feed(self, packets: list[tuple[int, bytes]]) -> FlowModel:
        for ts, frame in packets:
            self.packet(ts, frame)
        return self

    def packet(self, ts: int, frame: bytes) -> None:
        pkt = decode(frame)
        if pkt == "malformed":
            self.verdicts.append(("drop", "malformed"))
            return
        self.verdicts.append(("pass", ""))
        if not isinstance(pkt, Packet):
            return
        self.ip_packets += 1
        self.ip_octets += pkt.length
        flow = self.flows.get(pkt.flow)
        if flow is not None and ts - flow["last"] > self.idle:
            self._emit(flow, "idle timeout")
            flow = None
        elif flow is not None and ts - flow["start"] > self.active:
            self._emit(flow, "active timeout")
            flow = self._new(pkt.proto, ts, flow["from"], flow["to"], flow["fin_from"])
        if flow is None:
            flow = self._new(pkt.proto, ts, (pkt.src, pkt.sport), (pkt.dst, pkt.dport), set())
        self.flows[pkt.flow] = flow
        side = "fwd" if (pkt.src, pkt.sport) == flow["from"] else "rev"
        flow[side + "_pkts"] += 1
        flow[side + "_octets"] += pkt.length
        flow["last"] = max(flow["last"], ts)
        flow["flags"] |= pkt.flags
        if pkt.flags & FIN:
            flow["fin_from"].add((pkt.src, pkt.sport))
        if pkt.flags & RST or len(flow["fin_from"]) == 2:
            self._emit(flow, "end of flow detected")
            del self.flows[pkt.flow]

    def finish(self, end_ts: int) -> list[dict[str, Any]]:
        """The records of every flow still open at end_ts (in no particular order)."""
        out = []
        for flow in self.flows.values():
            reason = "idle timeout" if end_ts - flow["last"] > self.idle else "forced end"
            out.append(self._record(flow, reason))
        self.flows.clear()
        return out

    @staticmethod
    def _new(proto: int, ts: int, src: Any, dst: Any, fin_from: set[Any]) -> dict[str, Any]:
        return {
            "proto": proto, "from": src, "to": dst, "start": ts, "last": ts, "flags": 0,
            "fin_from": set(fin_from), "fwd_pkts": 0, "fwd_octets": 0, "rev_pkts": 0,
            "rev_octets": 0,
        }  # fmt: skip

    def _emit(self, flow: dict[str, Any], reason: str) -> None:
        self.records.append(self._record(flow, reason))

    def _record(self, flow: dict[str, Any], reason: str) -> dict[str, Any]:
        (src, sport), (dst, dport) = flow["from"], flow["to"]
        family = f"IPv{src.version}"
        return {
            f"source{family}Address": str(src),
            f"destination{family}Address": str(dst),
            "sourceTransportPort": sport,
            "destinationTransportPort": dport,
            "protocolIdentifier": flow["proto"],
            "flowStartNanoseconds": flow["start"],
            "flowEndNanoseconds": flow["last"],
            "packetDeltaCount": flow["fwd_pkts"],
            "octetDeltaCount": flow["fwd_octets"],
            "reversePacketDeltaCount": flow["rev_pkts"],
            "reverseOctetDeltaCount": flow["rev_octets"],
            "tcpControlBits": flow["flags"],
            "flowEndReason": reason,
            "ts_ns": flow["last"],
        }
