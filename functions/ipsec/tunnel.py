"""Tunnel-mode framing: the outer IP header, the link header, the inner tuple,
and the ICMP answer to a packet that would not fit the path MTU (RFC 4301 §8).

Everything here is deterministic: the outer IPv4 id is the low 16 bits of the
sequence number, TTL / hop limit 64, DSCP and ECN copied from the inner
header (RFC 4301 §5.1.2.1, RFC 6040's normal mode), DF set (this gateway does
path MTU itself and never fragments).
"""

from __future__ import annotations

import struct

from snf.packet.linktypes import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
)
from snf.packet.rewrite import checksum

__all__ = [
    "ETHERTYPE",
    "OUTER_LEN",
    "PORTED",
    "decap_ecn",
    "icmp_too_big",
    "inner_tos",
    "inner_tuple",
    "link_prefix",
    "outer_header",
]

ETHERTYPE = {4: b"\x08\x00", 6: b"\x86\xdd"}
OUTER_LEN = {4: 20, 6: 40}
ESP = 50
PORTED = frozenset((6, 17, 132, 136))  # TCP, UDP, SCTP, UDP-Lite: ports at offset 0
_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")
_PORTS = struct.Struct("!HH")
_WORDS = struct.Struct("!10H")
_ICMP6_MIN_MTU = 1280


def inner_tos(inner: bytes) -> int:
    """The inner header's DSCP + ECN byte (0 when there is none)."""
    if len(inner) < 2:
        return 0
    if inner[0] >> 4 == 4:
        return inner[1]
    return ((inner[0] & 0x0F) << 4) | (inner[1] >> 4)


def decap_ecn(inner: bytes, outer_tos: int) -> bytes | None:
    """The inner packet after RFC 6040's decapsulation (normal mode): a CE mark
    on the outer header is carried to an ECN-capable inner one; None when the
    inner packet is not ECN-capable (RFC 6040 §4.2: drop it)."""
    if outer_tos & 3 != 3:
        return inner
    ecn = inner_tos(inner) & 3
    if ecn == 0:
        return None
    if ecn == 3:
        return inner
    out = bytearray(inner)
    if inner[0] >> 4 == 4:
        out[1] |= 3
        out[10:12] = b"\x00\x00"
        out[10:12] = checksum(out[: (inner[0] & 0x0F) * 4]).to_bytes(2, "big")
    else:
        out[1] |= 0x30  # the traffic class's ECN bits, in the second byte's top nibble
    return bytes(out)


def outer_header(
    version: int, src: bytes, dst: bytes, payload_len: int, tos: int, ident: int
) -> bytes:
    """The outer IPv4 / IPv6 header of an ESP packet of `payload_len` bytes."""
    if version == 4:
        head = _V4.pack(0x45, tos, 20 + payload_len, ident & 0xFFFF, 0x4000, 64, ESP, 0, src, dst)
        total = sum(_WORDS.unpack(head))  # RFC 1071 over ten words: a C-level sum
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        return head[:10] + (~total & 0xFFFF).to_bytes(2, "big") + head[12:]
    return _V6.pack(0x60000000 | tos << 20, payload_len, ESP, 64, src, dst)


def inner_tuple(inner: bytes) -> tuple[int, int, bytes, bytes, int, int] | None:
    """(version, proto, src, dst, sport, dport) of a decrypted inner packet; ports 0
    when it has none (a later fragment, an unported protocol). None: not IP."""
    n = len(inner)
    if n >= 20 and inner[0] >> 4 == 4:
        ihl = (inner[0] & 0x0F) * 4
        proto, src, dst = inner[9], inner[12:16], inner[16:20]
        later = int.from_bytes(inner[6:8], "big") & 0x1FFF
        off = ihl
    elif n >= 40 and inner[0] >> 4 == 6:
        proto, src, dst, later, off = inner[6], inner[8:24], inner[24:40], 0, 40
    else:
        return None
    version = inner[0] >> 4
    if proto in PORTED and not later and n >= off + 4:
        sport, dport = _PORTS.unpack_from(inner, off)
        return version, proto, src, dst, sport, dport
    return version, proto, src, dst, 0, 0


def link_prefix(prefix: bytes, linktype: int, version: int) -> bytes | None:
    """The link header `prefix` for a packet of IP `version`: the EtherType before
    the IP header is set where the link type has one there. None when the link
    type fixes one IP version (LINKTYPE_IPV4 / IPV6) and it is the other."""
    if linktype in (LINKTYPE_IPV4, LINKTYPE_IPV6):
        return prefix if linktype == (LINKTYPE_IPV4 if version == 4 else LINKTYPE_IPV6) else None
    if not prefix:
        return prefix  # raw IP: the version nibble says it all
    known = prefix[-2:] in (b"\x08\x00", b"\x86\xdd")
    if linktype in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL) and known:
        return prefix[:-2] + ETHERTYPE[version]
    return prefix


def _reply_prefix(prefix: bytes, linktype: int) -> bytes:
    """The link header of a packet sent back to where `prefix`'s packet came from."""
    if linktype == LINKTYPE_ETHERNET and len(prefix) >= 12:
        return prefix[6:12] + prefix[0:6] + prefix[12:]
    return prefix


def icmp_too_big(
    prefix: bytes, linktype: int, inner: bytes, source: bytes, mtu: int
) -> bytes | None:
    """ICMP 'fragmentation needed' (IPv4, type 3 code 4) or ICMPv6 'packet too big'
    (type 2) from `source` to the inner packet's source, saying `mtu`; None when
    `source` is not of the inner packet's IP version."""
    version = inner[0] >> 4
    if len(source) != (4 if version == 4 else 16):
        return None
    if version == 4:
        ihl = (inner[0] & 0x0F) * 4
        quote = inner[: ihl + 8]
        body = struct.pack("!BBHHH", 3, 4, 0, 0, mtu & 0xFFFF) + quote
        body = body[:2] + checksum(body).to_bytes(2, "big") + body[4:]
        tos = inner[1] & 0xFC
        head = outer_header(4, source, inner[12:16], len(body), tos, 0)
        head = head[:9] + b"\x01" + head[10:]  # protocol ICMP; fix the checksum below
        head = head[:10] + b"\x00\x00" + head[12:]
        head = head[:10] + checksum(head).to_bytes(2, "big") + head[12:]
    else:
        quote = inner[: _ICMP6_MIN_MTU - 48]
        dst = inner[8:24]
        body = struct.pack("!BBHI", 2, 0, 0, max(mtu, _ICMP6_MIN_MTU)) + quote
        pseudo = source + dst + len(body).to_bytes(4, "big") + b"\x00\x00\x00\x3a"
        body = body[:2] + checksum(pseudo + body).to_bytes(2, "big") + body[4:]
        head = _V6.pack(0x60000000, len(body), 58, 64, source, dst)
    link = link_prefix(_reply_prefix(prefix, linktype), linktype, version)
    return None if link is None else link + head + body
