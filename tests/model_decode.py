"""Frame decoding shared by the independent models (firewall, flowmon, ratelimit).

Written from the protocol specs, not from snf.packet.parse: the models must not
inherit the parser's mistakes.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import dpkt

__all__ = ["ECHO", "L4", "PORT_HEADER", "ip_layer", "read_l4"]

IP_TYPES = (dpkt.ethernet.ETH_TYPE_IP, dpkt.ethernet.ETH_TYPE_IP6)

# Protocols with ports -> the smallest header that holds what we read.
PORT_HEADER = {6: 20, 17: 8, 33: 12, 132: 12, 136: 8}
ECHO = {(1, 0), (1, 8), (58, 128), (58, 129)}  # (proto, type) of echo request/reply


class L4(NamedTuple):
    sport: int | None  # None: the protocol has no ports
    dport: int | None
    flags: int  # TCP flags, else 0
    echo_id: int | None  # ICMP/ICMPv6 echo identifier


NO_L4 = L4(None, None, 0, None)


def read_l4(proto: int, payload: Any) -> L4 | str:
    """Ports, TCP flags and echo id of an L4 header, or "malformed" if cut short."""
    if proto == 59:  # IPv6 "no next header"
        return NO_L4
    l4 = payload if isinstance(payload, bytes) else bytes(payload)
    if proto in PORT_HEADER:
        if len(l4) < PORT_HEADER[proto]:
            return "malformed"
        sport, dport = struct.unpack_from("!HH", l4)
        return L4(sport, dport, l4[13] if proto == 6 else 0, None)
    if proto in (1, 58):
        echo = len(l4) >= 1 and (proto, l4[0]) in ECHO
        if len(l4) < (8 if echo else 4):
            return "malformed"
        return L4(None, None, 0, l4[4] << 8 | l4[5] if echo else None)
    return NO_L4


def ip_layer(frame: bytes) -> dpkt.ip.IP | dpkt.ip6.IP6 | str:
    """The IP packet in an Ethernet frame (through VLAN tags and MPLS pseudowires),
    or "non_ip", or "malformed" (an IP header cut short or inconsistent)."""
    try:
        eth = dpkt.ethernet.Ethernet(frame)
    except dpkt.UnpackError:
        return "malformed"
    while isinstance(eth.data, dpkt.ethernet.Ethernet):  # Ethernet carried over MPLS
        eth = eth.data
    ip = eth.data
    if isinstance(ip, dpkt.ip.IP) and ip.v == 4:
        hl = ip.hl * 4
        if len(ip.opts) != hl - 20 or ip.len < hl:
            return "malformed"  # header cut short, or a total length shorter than it
        return ip
    if isinstance(ip, dpkt.ip6.IP6) and ip.v == 6:
        return ip
    # dpkt leaves the payload undecoded when an IP header is cut short.
    return "malformed" if getattr(eth, "_next_type", eth.type) in IP_TYPES else "non_ip"
