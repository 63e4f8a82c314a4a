"""Endpoints, state keys and address rewriting (a helper of functions.loadbalancer).

Endpoints are written "IP:port" ("10.0.0.1:80") or "[IPv6]:port"
("[2001:db8::1]:443"); they are parsed once, when the config is validated.
Rewriting is in place on a bytearray, with incremental checksum updates
(RFC 1624): IPv4 through snf.rewrite, IPv6 here (no header checksum; only the
TCP/UDP checksum covers the addresses, through the pseudo-header).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from snf.rewrite import csum_adjust, set_ipv4_addr, set_u16

__all__ = ["Endpoint", "conn_key", "parse_endpoint", "set_addr", "side_key"]

PROTOS = {"tcp": 6, "udp": 17}
_L4_CSUM_OFF = {6: 16, 17: 6}

# (version, address bytes, port)
Endpoint = tuple[int, bytes, int]


def parse_endpoint(text: Any) -> Endpoint:
    """ "IP:port" or "[IPv6]:port" -> (version, address bytes, port). Raises ValueError."""
    expected = "an endpoint 'IP:port' such as 10.0.0.1:80 or [2001:db8::1]:80"
    if not isinstance(text, str):
        raise ValueError(f"expected {expected}, got {text!r}")
    s = text.strip()
    if s.startswith("["):
        host, sep, port_text = s[1:].partition("]:")
    else:
        host, sep, port_text = s.rpartition(":")
        if ":" in host:
            raise ValueError(f"expected {expected} (IPv6 in brackets), got {text!r}")
    if not sep or not host:
        raise ValueError(f"expected {expected}, got {text!r}")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected {expected}, got {text!r}: {host!r} is no IP address") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"expected {expected} with a port in 1..65535, got {text!r}")
    return addr.version, addr.packed, int(port_text)


def format_endpoint(addr: bytes, port: int) -> str:
    ip = ipaddress.ip_address(addr)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def conn_key(proto: int, client: bytes, cport: int, vip: bytes, vport: int) -> bytes:
    """Key of table `conn`: the client-side flow."""
    return bytes((proto,)) + client + cport.to_bytes(2, "big") + vip + vport.to_bytes(2, "big")


def side_key(proto: int, backend: bytes, bport: int, client: bytes, cport: int) -> bytes:
    """Key of table `back`: the backend-side flow (same layout as conn_key)."""
    return conn_key(proto, backend, bport, client, cport)


def _fix_l4_v6(pkt: bytearray, l4: int, proto: int, old: bytes, new: bytes) -> None:
    off = _L4_CSUM_OFF.get(proto)
    if off is None or l4 < 0 or len(pkt) < l4 + off + 2:
        return  # no L4 header here (a later fragment) or no checksum to fix
    at = l4 + off
    cur = (pkt[at] << 8) | pkt[at + 1]
    if proto == 17 and cur == 0:
        return  # no checksum (invalid over IPv6, but not ours to invent)
    fixed = csum_adjust(cur, old, new)
    if proto == 17 and fixed == 0:
        fixed = 0xFFFF
    set_u16(pkt, at, fixed)


def set_addr(
    pkt: bytearray, version: int, l3: int, l4: int, proto: int, which: str, addr: bytes
) -> None:
    """Set the source ("src") or destination ("dst") address of an IPv4 or IPv6 packet."""
    if version == 4:
        set_ipv4_addr(pkt, l3, l4, proto, which, addr)
        return
    off = l3 + (8 if which == "src" else 24)
    old = bytes(pkt[off : off + 16])
    if old == addr:
        return
    pkt[off : off + 16] = addr
    _fix_l4_v6(pkt, l4, proto, old, addr)
