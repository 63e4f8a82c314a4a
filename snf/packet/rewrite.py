"""In-place header rewriting with incremental checksum updates (RFC 1624).

Used by every function that changes a packet (nat, loadbalancer, ratelimit's
DSCP mark). Offsets come from snf.packet.headers.Headers (l3_off, l4_off), so
nothing here parses. Each setter updates the IPv4 header checksum and the
TCP/UDP/ICMP checksum that covers the changed bytes:

* IPv4 addresses are in the TCP/UDP pseudo-header, so changing one adjusts
  the L4 checksum too (not the ICMP checksum, which has no pseudo-header).
* A UDP checksum of zero means "none" (IPv4) and stays zero.
* Non-first fragments carry no L4 header: pass l4=-1 and only the IP
  header changes; the L4 checksum lives in the first fragment.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

__all__ = [
    "checksum",
    "csum_adjust",
    "ipv4_header_ok",
    "l4_checksum_ok",
    "set_dscp",
    "set_ipv4_addr",
    "set_ipv4_endpoint",
    "set_l4_port",
    "set_u16",
]

TCP, UDP, ICMP = 6, 17, 1
_L4_CSUM_OFF = {TCP: 16, UDP: 6}


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of `data`, as stored in a header."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def csum_adjust(csum: int, old: bytes, new: bytes) -> int:
    """HC' = ~(~HC + ~m + m') (RFC 1624 eqn. 3) over 16-bit words of old/new.

    The sum of ~m over n words is n * 0xFFFF - sum(m), so two struct unpacks
    and one fold do it (old and new have the same even length).
    """
    unpack = _WORDS.get(len(old))
    if unpack is None:
        unpack = _WORDS[len(old)] = struct.Struct(f"!{len(old) // 2}H").unpack
    words_old = unpack(old)
    total = (~csum & 0xFFFF) + len(words_old) * 0xFFFF - sum(words_old) + sum(unpack(new))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


_WORDS: dict[int, Callable[[bytes], tuple[int, ...]]] = {}


def _get16(pkt: bytearray, off: int) -> int:
    return (pkt[off] << 8) | pkt[off + 1]


def set_u16(pkt: bytearray, off: int, value: int) -> None:
    pkt[off] = (value >> 8) & 0xFF
    pkt[off + 1] = value & 0xFF


def _fix_l4(pkt: bytearray, l4: int, proto: int, old: bytes, new: bytes) -> None:
    """Adjust the TCP/UDP checksum for a change of covered bytes old -> new."""
    off = _L4_CSUM_OFF.get(proto)
    if off is None or l4 < 0 or len(pkt) < l4 + off + 2:
        return
    cur = _get16(pkt, l4 + off)
    if proto == UDP and cur == 0:
        return  # no checksum: stays zero
    fixed = csum_adjust(cur, old, new)
    if proto == UDP and fixed == 0:
        fixed = 0xFFFF  # a computed zero is sent as all ones (RFC 768)
    set_u16(pkt, l4 + off, fixed)


def set_ipv4_addr(pkt: bytearray, l3: int, l4: int, proto: int, which: str, addr: bytes) -> None:
    """Set the IPv4 source ("src") or destination ("dst") address to `addr`."""
    off = l3 + (12 if which == "src" else 16)
    old = bytes(pkt[off : off + 4])
    if old == addr:
        return
    pkt[off : off + 4] = addr
    set_u16(pkt, l3 + 10, csum_adjust(_get16(pkt, l3 + 10), old, addr))
    _fix_l4(pkt, l4, proto, old, addr)


def set_l4_port(pkt: bytearray, l4: int, proto: int, which: str, port: int) -> None:
    """Set the TCP/UDP source or destination port, or the ICMP echo identifier.

    For ICMP (proto 1) `which` is ignored: the identifier sits at l4+4 and the
    ICMP checksum (no pseudo-header) is adjusted.
    """
    if proto == ICMP:
        off = l4 + 4
        old = bytes(pkt[off : off + 2])
        new = port.to_bytes(2, "big")
        if old != new:
            pkt[off : off + 2] = new
            set_u16(pkt, l4 + 2, csum_adjust(_get16(pkt, l4 + 2), old, new))
        return
    off = l4 + (0 if which == "src" else 2)
    old = bytes(pkt[off : off + 2])
    new = port.to_bytes(2, "big")
    if old == new:
        return
    pkt[off : off + 2] = new
    _fix_l4(pkt, l4, proto, old, new)


def set_ipv4_endpoint(
    pkt: bytearray, l3: int, l4: int, proto: int, which: str, addr: bytes, port: int
) -> None:
    """set_ipv4_addr then set_l4_port, in one pass: one IPv4 header adjust and
    one L4 adjust over the 6 changed bytes (address and port), which is what a
    NAT does to every packet it translates."""
    if proto not in _L4_CSUM_OFF or l4 < 0:
        set_ipv4_addr(pkt, l3, l4, proto, which, addr)
        set_l4_port(pkt, l4, proto, which, port)
        return
    aoff = l3 + (12 if which == "src" else 16)
    poff = l4 + (0 if which == "src" else 2)
    old = bytes(pkt[aoff : aoff + 4]) + bytes(pkt[poff : poff + 2])
    new = addr + port.to_bytes(2, "big")
    if old == new:
        return
    if old[:4] != addr:
        pkt[aoff : aoff + 4] = addr
        set_u16(pkt, l3 + 10, csum_adjust(_get16(pkt, l3 + 10), old[:4], addr))
    pkt[poff : poff + 2] = new[4:]
    _fix_l4(pkt, l4, proto, old, new)


def set_dscp(pkt: bytearray, l3: int, version: int, dscp: int) -> None:
    """Set the DSCP (top 6 bits of IPv4 TOS / IPv6 traffic class), keeping ECN."""
    if version == 4:
        old = bytes(pkt[l3 : l3 + 2])
        pkt[l3 + 1] = (dscp << 2) | (pkt[l3 + 1] & 0x03)
        set_u16(pkt, l3 + 10, csum_adjust(_get16(pkt, l3 + 10), old, bytes(pkt[l3 : l3 + 2])))
    elif version == 6:
        # Traffic class spans bits 4..11 of the first 32-bit word; no checksum.
        tc = ((pkt[l3] & 0x0F) << 4) | (pkt[l3 + 1] >> 4)
        tc = (dscp << 2) | (tc & 0x03)
        pkt[l3] = (pkt[l3] & 0xF0) | (tc >> 4)
        pkt[l3 + 1] = ((tc & 0x0F) << 4) | (pkt[l3 + 1] & 0x0F)


def ipv4_header_ok(pkt: bytes | bytearray, l3: int) -> bool:
    """True when the IPv4 header checksum verifies."""
    ihl = (pkt[l3] & 0x0F) * 4
    return checksum(pkt[l3 : l3 + ihl]) == 0


def l4_checksum_ok(pkt: bytes | bytearray, l3: int, l4: int) -> bool:
    """True when the TCP/UDP (pseudo-header) or ICMP checksum of an unfragmented IPv4
    packet verifies; a zero UDP checksum counts as valid."""
    proto = pkt[l3 + 9]
    total_len = _get16(bytearray(pkt[l3 : l3 + 4]), 2)
    segment = bytes(pkt[l4 : l3 + total_len])
    if proto == ICMP:
        return checksum(segment) == 0
    if proto == UDP and _get16(bytearray(segment), 6) == 0:
        return True
    pseudo = bytes(pkt[l3 + 12 : l3 + 20]) + bytes((0, proto)) + len(segment).to_bytes(2, "big")
    return checksum(pseudo + segment) == 0
