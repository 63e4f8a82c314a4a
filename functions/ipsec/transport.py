"""Transport-mode framing (RFC 4303 §3.1.1): ESP between an IP header and its payload.

The IP header stays: addresses, TTL / hop limit, IPv4 id and flags, DSCP and
ECN, IPv4 options. Only the byte naming what follows it changes (to 50 when
sealing, back to the carried protocol when opening), with the length fields
and the IPv4 header checksum.

Where ESP goes in IPv6 (RFC 4303 §3.1.1 leaves destination options open):
after hop-by-hop, routing, and destination options that come before a
routing header or without one, as Linux and scapy place it; destination
options after a routing header are for the final destination and go inside.
A fragment header is never crossed: transport mode protects whole datagrams
only, so such a packet is dropped (`fragment`).
"""

from __future__ import annotations

from snf.packet.headers import FRAG_NONE, KIND_IP
from snf.packet.linktypes import LINKTYPE_RAW
from snf.packet.rewrite import checksum
from snf.packet.scalar import parse_packet

from .tunnel import PORTED

__all__ = ["frame", "opened_tuple", "split"]

_HOP, _ROUTING, _FRAGMENT, _DEST, _AH = 0, 43, 44, 60, 51


def _ext_len(nh: int, ext: bytes, off: int) -> int:
    """Length of the IPv6 extension header of type `nh` at `ext[off]`."""
    if nh == _AH:
        return (ext[off + 1] + 2) * 4
    return 8 if nh == _FRAGMENT else (ext[off + 1] + 1) * 8


def split(ip: bytes) -> tuple[int, int] | None:
    """(where ESP goes in the IP packet `ip`, the protocol found there); None when
    an IPv6 fragment header comes first."""
    if ip[0] >> 4 == 4:
        return (ip[0] & 0x0F) * 4, ip[9]
    field, off, routed = 6, 40, False
    while True:  # the parser bounded the chain; a cut one raises IndexError (malformed)
        nh = ip[field]
        if nh == _FRAGMENT:
            return None
        if nh not in (_HOP, _ROUTING, _DEST) or (nh == _DEST and routed):
            return off, nh
        routed = routed or nh == _ROUTING
        field, off = off, off + _ext_len(nh, ip, off)


def frame(head: bytes, proto: int, body: bytes) -> bytes:
    """`head` (an IP header, IPv6 with its extension headers) followed by `body`, the
    last next-header field set to `proto`, lengths and the IPv4 checksum fixed."""
    out = bytearray(head)
    if head[0] >> 4 == 4:
        out[9] = proto
        out[2:4] = (len(head) + len(body)).to_bytes(2, "big")
        out[10:12] = b"\x00\x00"
        out[10:12] = checksum(out).to_bytes(2, "big")
    else:
        field, off = 6, 40
        while off < len(head):
            field, off = off, off + _ext_len(head[field], head, off)
        out[field] = proto
        out[4:6] = (len(head) - 40 + len(body)).to_bytes(2, "big")
    return bytes(out + body)


def opened_tuple(ip: bytes) -> tuple[int, int, bytes, bytes, int, int] | str:
    """(version, proto, src, dst, sport, dport) of an opened packet, read by the parser
    that read the sealed side's packets (ports 0 unless TCP, UDP, SCTP, UDP-Lite);
    or why it is dropped: a fragment (never protected) or a malformed packet."""
    parsed = parse_packet(LINKTYPE_RAW, ip)
    kind, version, proto, src, dst, sport, dport = parsed[:7]
    if kind != KIND_IP:
        return "malformed"
    if parsed[9] != FRAG_NONE:
        return "fragment"
    if proto not in PORTED:  # as the outbound policy reads ports
        sport = dport = 0
    return version, proto, src, dst, sport, dport
