"""Reference model of the IDS, written from its semantics alone (docs/functions/ids.md).

An independent check of `functions/ids.py`: rules come as plain dicts, not
rule text (the tests render the same dicts to Snort syntax for the core),
frames are decoded with dpkt, addresses matched with `ipaddress`, and contents
with Python's `bytes.__contains__` on a slice, one rule at a time. It imports
nothing from snf. Slow and plain on purpose.

Rule dict
    {"action": "alert"|"drop"|"pass", "proto": "tcp"|"udp"|"icmp"|"ip",
     "src": spec, "sport": spec, "dir": "->"|"<>", "dst": spec, "dport": spec,
     "sid": int, "rev": int, "msg": str,
     "contents": [{"pattern": bytes, "nocase": bool, "offset": int|None, "depth": int|None}]}
Spec
    "any" | "10.0.0.0/8" (address) | 80 or "1024:" or ":1023" or "1:9" (port)
    | ("!", spec) | [spec, ...] | ("$", NAME) (looked up in `vars`, specs too)
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

import dpkt

__all__ = ["ModelPacket", "decode", "model_run"]

PROTOS = {"tcp": {6}, "udp": {17}, "icmp": {1, 58}}
MIN_L4 = {6: 20, 17: 8, 33: 12, 132: 12, 136: 8}  # parse.py calls shorter headers malformed
ECHO = {(1, 0), (1, 8), (58, 128), (58, 129)}
IP_TYPES = (dpkt.ethernet.ETH_TYPE_IP, dpkt.ethernet.ETH_TYPE_IP6)
EVE_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "IPv6-ICMP"}


class _RawIP(dpkt.ip.IP):
    _protosw: dict[int, Any] = {}  # keep the L4 bytes as they are


class _RawIP6(dpkt.ip6.IP6):
    _protosw: dict[int, Any] = {}


class _Ethernet(dpkt.ethernet.Ethernet):
    _typesw = {**dpkt.ethernet.Ethernet._typesw, IP_TYPES[0]: _RawIP, IP_TYPES[1]: _RawIP6}


_Ethernet._typesw[dpkt.ethernet.ETH_TYPE_TEB] = _Ethernet  # Ethernet over MPLS (pseudowire)


@dataclass
class ModelPacket:
    proto: int
    src: Any  # ipaddress address
    dst: Any
    sport: int | None  # TCP/UDP (also SCTP/DCCP/UDP-Lite) ports, else None
    dport: int | None
    payload: bytes
    later: bool  # a non-first fragment


def decode(frame: bytes) -> ModelPacket | str:
    """An Ethernet frame's ModelPacket, or "non_ip", or "malformed"."""
    try:
        eth = _Ethernet(frame)
    except dpkt.UnpackError:
        return "malformed"
    while isinstance(eth.data, dpkt.ethernet.Ethernet):
        eth = eth.data
    ip = eth.data
    later = False
    if isinstance(ip, _RawIP) and ip.v == 4:
        hl = ip.hl * 4
        if len(ip.opts) != hl - 20 or ip.len < hl:
            return "malformed"
        later = ip.offset > 0
    elif isinstance(ip, _RawIP6) and ip.v == 6:
        for ext in ip.all_extension_headers:
            if isinstance(ext, dpkt.ip6.IP6FragmentHeader) and ext.frag_off > 0:
                later = True
    else:
        return "malformed" if getattr(eth, "_next_type", eth.type) in IP_TYPES else "non_ip"
    src, dst = ipaddress.ip_address(ip.src), ipaddress.ip_address(ip.dst)
    pkt = ModelPacket(ip.p, src, dst, None, None, b"", later)
    if later or ip.p == 59:
        return pkt
    l4 = bytes(ip.data)
    if len(l4) < MIN_L4.get(ip.p, 0):
        return "malformed"
    if ip.p == 6:
        try:
            tcp = dpkt.tcp.TCP(l4)
        except dpkt.UnpackError:
            return "malformed"  # data offset under 20 bytes
        if len(tcp.opts) != tcp.off * 4 - 20:
            return "malformed"  # data offset past the segment
        pkt.sport, pkt.dport, pkt.payload = tcp.sport, tcp.dport, tcp.data
    elif ip.p == 17:
        udp = dpkt.udp.UDP(l4)
        pkt.sport, pkt.dport, pkt.payload = udp.sport, udp.dport, udp.data
    elif ip.p in (1, 58):
        if len(l4) < 4 or ((ip.p, l4[0]) in ECHO and len(l4) < 8):
            return "malformed"
        pkt.payload = l4[8:]
    else:
        pkt.payload = l4
        if ip.p in MIN_L4:  # SCTP, DCCP, UDP-Lite: ports for the alert record
            pkt.sport, pkt.dport = struct.unpack_from("!HH", l4)
    return pkt


def _spec_has(spec: Any, value: Any, vars_: dict[str, Any], port: bool) -> bool:
    if spec == "any":
        return True
    if isinstance(spec, tuple) and spec[0] == "!":
        return not _spec_has(spec[1], value, vars_, port)
    if isinstance(spec, tuple) and spec[0] == "$":
        return _spec_has(vars_[spec[1]], value, vars_, port)
    if isinstance(spec, list):
        positive = [s for s in spec if not (isinstance(s, tuple) and s[0] == "!")]
        negative = [s for s in spec if isinstance(s, tuple) and s[0] == "!"]
        hit = any(_spec_has(s, value, vars_, port) for s in positive) if positive else True
        return hit and all(_spec_has(s, value, vars_, port) for s in negative)
    if port:
        lo, colon, hi = str(spec).partition(":")
        return int(lo or 0) <= value <= int(hi or 65535) if colon else value == int(lo)
    return value in ipaddress.ip_network(spec)  # False across IPv4/IPv6


def _side(rule: dict, addr: Any, port: Any, a_key: str, p_key: str, vars_: dict) -> bool:
    if not _spec_has(rule[a_key], addr, vars_, port=False):
        return False
    return rule[p_key] == "any" or _spec_has(rule[p_key], port, vars_, port=True)


def rule_matches(rule: dict[str, Any], pkt: ModelPacket, vars_: dict[str, Any]) -> bool:
    proto = rule["proto"]
    if proto != "ip" and pkt.proto not in PROTOS[proto]:
        return False
    contents = rule.get("contents", [])
    if pkt.later and (proto != "ip" or contents):
        return False
    forward = _side(rule, pkt.src, pkt.sport, "src", "sport", vars_) and _side(
        rule, pkt.dst, pkt.dport, "dst", "dport", vars_
    )
    backward = (
        rule["dir"] == "<>"
        and _side(rule, pkt.dst, pkt.dport, "src", "sport", vars_)
        and _side(rule, pkt.src, pkt.sport, "dst", "dport", vars_)
    )
    if not (forward or backward):
        return False
    for c in contents:
        hay, needle = pkt.payload, c["pattern"]
        if c.get("nocase"):
            hay, needle = hay.lower(), needle.lower()
        start = c.get("offset") or 0
        depth = c.get("depth")
        if needle not in hay[start : None if depth is None else start + depth]:
            return False
    return True


def model_run(
    packets: list[tuple[int, bytes, str]], rules: list[dict[str, Any]], vars_: dict | None = None
) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """(port, reason) per (ts_ns, Ethernet frame, packet id), and the alert records."""
    vars_ = vars_ or {}
    verdicts, alerts = [], []
    ordered = sorted(rules, key=lambda r: r["sid"])
    for ts, frame, packet_id in packets:
        pkt = decode(frame)
        if isinstance(pkt, str):
            verdicts.append(("pass", "") if pkt == "non_ip" else ("drop", "malformed"))
            continue
        found = [r for r in ordered if rule_matches(r, pkt, vars_)]
        if any(r["action"] == "pass" for r in found):
            verdicts.append(("pass", ""))
            continue
        drops = [r["sid"] for r in found if r["action"] == "drop"]
        verdicts.append(("drop", f"sid:{min(drops)}") if drops else ("pass", ""))
        has_ports = pkt.sport is not None
        for r in found:
            alerts.append(
                {
                    "ts": ts / 1e9,
                    "ts_ns": ts,
                    "packet_id": packet_id,
                    "sid": r["sid"],
                    "rev": r.get("rev", 1),
                    "gid": 1,
                    "msg": r.get("msg", ""),
                    "action": r["action"],
                    "proto": EVE_NAMES.get(pkt.proto, str(pkt.proto)),
                    "src": str(pkt.src),
                    "sport": pkt.sport if has_ports else None,
                    "dst": str(pkt.dst),
                    "dport": pkt.dport if has_ports else None,
                }
            )
    return verdicts, alerts
