"""ICMPv4 error translation (RFC 5508) for the NAT (a helper of snf.functions.nat).

An ICMP error (destination unreachable 3, source quench 4, time exceeded 11,
parameter problem 12) quotes the IP header and at least 8 bytes of the
packet that caused it. When that packet was translated, the NAT translates
the quote too. Every changed 16-bit word is folded into the checksums that
cover it, incrementally (RFC 1624):

* the quoted IPv4 header checksum (address change);
* the quoted TCP/UDP checksum when the quote reaches it (address and port
  change; a zero UDP checksum stays zero), or the quoted ICMP echo checksum
  (identifier change). A quote is often truncated, so this checksum can
  rarely be verified, but updating it incrementally keeps it exactly as
  right as it was;
* the outer ICMP checksum, which covers the whole ICMP message: every change
  above, the quoted checksums included.

The outer IP address is changed with snf.packet.rewrite.set_ipv4_addr (IP header
checksum only: ICMP has no pseudo-header).
"""

from __future__ import annotations

from typing import NamedTuple

from snf.packet.rewrite import csum_adjust

__all__ = ["ERROR_TYPES", "Quote", "quote_of", "rewrite_quote"]

ERROR_TYPES = frozenset({3, 4, 11, 12})


class Quote(NamedTuple):
    """The packet quoted by an ICMP error."""

    l3: int  # offset of the quoted IPv4 header
    l4: int  # offset of its L4 header
    end: int  # end of the ICMP message within the captured bytes
    proto: int
    src: bytes
    dst: bytes
    sport: int  # TCP/UDP port or ICMP echo identifier; -1 when it has none
    dport: int


def quote_of(pkt: bytes | bytearray, l3: int, l4: int) -> Quote | None:
    """The quoted packet of the ICMPv4 error at l4, or None when the quote is cut
    short or is not IPv4. A quote without ports has sport = dport = -1."""
    end = min(len(pkt), l3 + ((pkt[l3 + 2] << 8) | pkt[l3 + 3]))
    ql3 = l4 + 8
    if end - ql3 < 20 or pkt[ql3] >> 4 != 4:
        return None
    ihl = (pkt[ql3] & 0x0F) * 4
    ql4 = ql3 + ihl
    if ihl < 20 or ql4 > end:
        return None
    proto = pkt[ql3 + 9]
    src, dst = bytes(pkt[ql3 + 12 : ql3 + 16]), bytes(pkt[ql3 + 16 : ql3 + 20])
    sport = dport = -1
    later = ((pkt[ql3 + 6] & 0x1F) << 8) | pkt[ql3 + 7]  # fragment offset
    if not later:
        if proto in (6, 17) and ql4 + 4 <= end:
            sport = (pkt[ql4] << 8) | pkt[ql4 + 1]
            dport = (pkt[ql4 + 2] << 8) | pkt[ql4 + 3]
        elif proto == 1 and ql4 + 6 <= end and pkt[ql4] in (0, 8):
            sport = dport = (pkt[ql4 + 4] << 8) | pkt[ql4 + 5]
    return Quote(ql3, ql4, end, proto, src, dst, sport, dport)


def _put(
    pkt: bytearray, off: int, new: bytes, sums: list[int], udp_sum: int, icmp_sum: int
) -> None:
    """Write `new` at off; adjust each checksum at `sums` and the ICMP checksum,
    and fold each changed checksum field into the ICMP checksum too."""
    old = bytes(pkt[off : off + len(new)])
    if old == new:
        return
    pkt[off : off + len(new)] = new
    _adjust(pkt, icmp_sum, old, new)
    for c in sums:
        old_c = bytes(pkt[c : c + 2])
        value = csum_adjust(int.from_bytes(old_c, "big"), old, new)
        if c == udp_sum and value == 0:
            value = 0xFFFF  # a computed zero is sent as all ones (RFC 768)
        new_c = value.to_bytes(2, "big")
        pkt[c : c + 2] = new_c
        _adjust(pkt, icmp_sum, old_c, new_c)


def _adjust(pkt: bytearray, c: int, old: bytes, new: bytes) -> None:
    pkt[c : c + 2] = csum_adjust(int.from_bytes(pkt[c : c + 2], "big"), old, new).to_bytes(2, "big")


def rewrite_quote(pkt: bytearray, l4: int, q: Quote, which: str, addr: bytes, port: int) -> None:
    """Set the quoted packet's `which` ("src"/"dst") address and port (or echo id)."""
    icmp_sum = l4 + 2
    ip_sum = q.l3 + 10
    l4_sum = udp_sum = -1
    if q.proto == 6 and q.l4 + 18 <= q.end:
        l4_sum = q.l4 + 16
    elif q.proto == 17 and q.l4 + 8 <= q.end and (pkt[q.l4 + 6] or pkt[q.l4 + 7]):
        l4_sum = udp_sum = q.l4 + 6  # a zero UDP checksum means none: left alone
    addr_sums = [ip_sum] if l4_sum < 0 else [ip_sum, l4_sum]
    _put(pkt, q.l3 + (12 if which == "src" else 16), addr, addr_sums, udp_sum, icmp_sum)
    new_port = port.to_bytes(2, "big")
    if q.proto == 1:  # echo identifier, covered by the quoted ICMP checksum when quoted
        echo_sum = [q.l4 + 2] if q.l4 + 4 <= q.end else []
        _put(pkt, q.l4 + 4, new_port, echo_sum, -1, icmp_sum)
    else:
        port_sums = [] if l4_sum < 0 else [l4_sum]
        _put(pkt, q.l4 + (0 if which == "src" else 2), new_port, port_sums, udp_sum, icmp_sum)
