"""Endpoints, state keys and address rewriting (a helper of snf.functions.loadbalancer).

Endpoints are written "IP:port" ("10.0.0.1:80") or "[IPv6]:port"
("[2001:db8::1]:443"); they are parsed once, when the config is validated.
Rewriting uses incremental checksum updates (RFC 1624):

* nat_rewrite (every rewritten packet): address and TCP/UDP port of one end
  in one go, with the checksum deltas of each (old, new) endpoint pair
  computed once and cached; IPv4 and IPv6 (no IPv6 header checksum, only the
  TCP/UDP pseudo-header covers the addresses). Same bytes as snf.packet.rewrite.
* set_addr (non-first fragments: no L4 header): the address only, IPv4
  through snf.packet.rewrite.set_ipv4_addr, IPv6 here.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from snf.packet.rewrite import csum_adjust, set_ipv4_addr, set_u16

__all__ = ["Endpoint", "conn_key", "nat_rewrite", "parse_endpoint", "set_addr", "side_key"]

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


# -- the hot path: one endpoint (address and port) rewritten in one go ----------

_UNPACK = {4: struct.Struct("!2H").unpack, 16: struct.Struct("!8H").unpack}
_ADDR_OFF = {(4, "src"): 12, (4, "dst"): 16, (6, "src"): 8, (6, "dst"): 24}
_DELTAS: dict[tuple[bytes, int, bytes, int], tuple[int, int]] = {}
_DELTAS_MAX = 1 << 16


def _deltas(old: bytes, old_port: int, new: bytes, new_port: int) -> tuple[int, int]:
    """RFC 1624 eqn. 3 partial sums (sum of ~m + m') for the address words, and for
    the address and port words: the same for every packet of a flow, so cached."""
    key = (old, old_port, new, new_port)
    found = _DELTAS.get(key)
    if found is None:
        unpack = _UNPACK[len(old)]
        d_addr = 0xFFFF * (len(old) // 2) - sum(unpack(old)) + sum(unpack(new))
        d_l4 = d_addr + 0xFFFF - old_port + new_port
        if len(_DELTAS) >= _DELTAS_MAX:
            _DELTAS.clear()
        found = _DELTAS[key] = (d_addr, d_l4)
    return found


def _apply(pkt: bytearray, at: int, delta: int, udp: bool) -> None:
    cur = (pkt[at] << 8) | pkt[at + 1]
    if udp and cur == 0:
        return  # UDP without checksum stays without
    total = (~cur & 0xFFFF) + delta
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    fixed = ~total & 0xFFFF
    if udp and fixed == 0:
        fixed = 0xFFFF
    pkt[at] = fixed >> 8
    pkt[at + 1] = fixed & 0xFF


def nat_rewrite(
    frame: bytes, version: int, l3: int, l4: int, proto: int, which: str, addr: bytes, port: int
) -> bytes:
    """`frame` with its source or destination address and TCP/UDP port set to
    addr:port, IPv4 header and TCP/UDP checksums updated incrementally.

    Same result as snf.packet.rewrite's set_ipv4_addr + set_l4_port (a test checks
    it), with the checksum deltas computed once per (old, new) endpoint pair.
    """
    pkt = bytearray(frame)
    a = l3 + _ADDR_OFF[version, which]
    p = l4 if which == "src" else l4 + 2
    n = len(addr)
    d_addr, d_l4 = _deltas(bytes(pkt[a : a + n]), (pkt[p] << 8) | pkt[p + 1], addr, port)
    pkt[a : a + n] = addr
    pkt[p] = port >> 8
    pkt[p + 1] = port & 0xFF
    if version == 4:
        _apply(pkt, l3 + 10, d_addr, False)
    at = l4 + _L4_CSUM_OFF[proto]
    if at + 2 <= len(pkt):
        _apply(pkt, at, d_l4, proto == 17)
    return bytes(pkt)
