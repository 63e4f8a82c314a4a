"""Tunnel decapsulation for IDS inspection (a helper of snf.functions.ids).

decapsulate(frame, l3) looks through the tunnels of the IP packet at frame[l3]:

    IP-in-IP      IPv4 protocol 4 ("ipip") and 41 ("ip6ip"), over IPv4 or IPv6
    GRE           RFC 2784/2890 (checksum, key, sequence): IPv4 0x0800, IPv6
                  0x86DD, transparent Ethernet 0x6558 ("gre"); ERSPAN type I/II
                  0x88BE and type III 0x22EB ("erspan")
    VXLAN         UDP destination port 4789, inner Ethernet ("vxlan")
    Geneve        UDP destination port 6081, options skipped, inner Ethernet
                  0x6558 or IPv4/IPv6 ("geneve")

nested up to MAX_DEPTH layers, with VLAN tags in inner Ethernet frames. Each
decapsulated packet is an Inner: offsets into `frame` as it is (nothing is
copied), its protocol, and the layers around it, from which Inner.tunnel makes
Suricata's EVE `tunnel` object. Every read is bounded by the end of the
enclosing packet and every loop by a constant. Input bytes raise nothing but
TunnelError, whose reason the caller routes as malformed. Fragments are not
decapsulated, nor is anything docs/functions/ids-headers-tunnels.md lists.
"""

from __future__ import annotations

import ipaddress
from typing import Any, NamedTuple

from snf.packet.headers import FRAG_FIRST, FRAG_LATER, FRAG_NONE

__all__ = [
    "GENEVE_PORT",
    "MAX_DEPTH",
    "VXLAN_PORT",
    "FiveTuple",
    "Inner",
    "Layer",
    "TunnelError",
    "carries_tunnel",
    "decapsulate",
    "five_tuple",
    "ipv6_chain",
]

MAX_DEPTH = 4  # tunnel layers looked through; one more is a TunnelError, not a silent stop
VXLAN_PORT = 4789
GENEVE_PORT = 6081
_MAX_TAGS = 8  # VLAN tags in an inner Ethernet frame (as snf.packet.scalar)
_MAX_EXT = 8  # IPv6 extension headers (as snf.packet.scalar)
_V6_EXT = frozenset({0, 43, 60, 51})  # hop-by-hop, routing, destination options, AH
_VLAN = frozenset({0x8100, 0x88A8, 0x9100})
_GRE_DISCARD = 0x4C07  # routing, strict source route, recursion msb, version: RFC 2784 drops
_MIN_L4 = {6: (20, "tcp"), 17: (8, "udp"), 136: (8, "udplite"), 132: (12, "sctp")}
_MIN_L4 |= {33: (12, "dccp"), 1: (4, "icmp"), 58: (4, "icmpv6")}
_ECHO = frozenset({(1, 0), (1, 8), (58, 128), (58, 129)})
_PORT_PROTOS = frozenset({6, 17, 33, 132, 136})  # as the IDS alert records
_PROTO_NAMES = {1: "ICMP", 4: "IPv4", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE", 58: "IPv6-ICMP"}


class TunnelError(ValueError):
    """A tunnel, or the packet inside it, cut short or inconsistent; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Layer(NamedTuple):
    """One encapsulation, described by the packet that carries it."""

    type: str  # ipip | ip6ip | gre | erspan | vxlan | geneve
    src: bytes  # the carrying packet's addresses, 4 or 16 bytes
    dst: bytes
    proto: int  # the carrying packet's IP protocol: 4, 41, 47 or 17
    sport: int = 0  # its UDP ports (VXLAN, Geneve); 0 for the others
    dport: int = 0
    vni: int | None = None  # VXLAN and Geneve network identifier
    key: int | None = None  # GRE key (RFC 2890), for gre and erspan
    session: int | None = None  # ERSPAN type II/III session id

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "src_ip": _text(self.src)}
        out |= {"dest_ip": _text(self.dst), "proto": _proto_name(self.proto)}
        if self.proto == 17:
            out |= {"src_port": self.sport, "dest_port": self.dport}
        for name, value in (("vni", self.vni), ("key", self.key), ("session_id", self.session)):
            if value is not None:
                out[name] = value
        return out


class Inner(NamedTuple):
    """A decapsulated IP packet; offsets are into the frame given to decapsulate()."""

    l3: int  # its IP header
    l4: int | None  # its upper-layer header; None for a non-first fragment or no next header
    version: int  # 4 or 6
    proto: int  # upper-layer protocol, after IPv6 extension headers
    end: int  # where it ends: its own length, bounded by the packet around it
    frag: int  # snf.packet.headers FRAG_NONE, FRAG_FIRST or FRAG_LATER
    layers: tuple[Layer, ...]  # the tunnels around it, outermost first

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def tunnel(self) -> dict[str, Any]:
        """Suricata's EVE `tunnel`: the outermost packet's 5-tuple and the depth.

        Suricata adds pcap_cnt and pkt_src from its capture; the caller adds what it
        has. `layers` is ours: every layer's Layer.as_dict(), outermost first.
        """
        outer = self.layers[0]
        return {
            "src_ip": _text(outer.src), "src_port": outer.sport,
            "dest_ip": _text(outer.dst), "dest_port": outer.dport,
            "proto": _proto_name(outer.proto), "depth": len(self.layers),
            "layers": [layer.as_dict() for layer in self.layers],
        }  # fmt: skip


class FiveTuple(NamedTuple):
    src: bytes
    dst: bytes
    proto: int
    sport: int | None  # TCP, UDP, UDP-Lite, SCTP and DCCP with their header; else None
    dport: int | None

    def alert_fields(self) -> dict[str, Any]:
        """The packet part of an IDS alert record (proto, src, sport, dst, dport)."""
        return {
            "proto": _proto_name(self.proto), "src": _text(self.src), "sport": self.sport,
            "dst": _text(self.dst), "dport": self.dport,
        }  # fmt: skip


def _text(address: bytes) -> str:
    return str(ipaddress.ip_address(address))


def _proto_name(proto: int) -> str:
    return _PROTO_NAMES.get(proto, str(proto))


def _u16(frame: bytes, at: int) -> int:
    return frame[at] << 8 | frame[at + 1]


def _u24(frame: bytes, at: int) -> int:
    return frame[at] << 16 | frame[at + 1] << 8 | frame[at + 2]


# -- the packets ---------------------------------------------------------------------


def carries_tunnel(proto: int, dport: int) -> bool:
    """Whether a packet of this protocol and destination port (snf.packet.headers
    Headers.proto and .dport) may be a tunnel: the cheap test before decapsulate()."""
    return proto in (4, 41, 47) or (proto == 17 and dport in (VXLAN_PORT, GENEVE_PORT))


def decapsulate(
    frame: bytes, l3: int, max_depth: int = MAX_DEPTH, limit: int | None = None
) -> tuple[Inner, ...]:
    """Every packet inside the tunnels of the IP packet at frame[l3], outermost first.

    The last one is the innermost; the ones before are inspected too, as Suricata
    inspects every layer. () when the packet is not a tunnel that is decapsulated.
    `limit` is where the packet's bytes end (len(frame) by default, so a batch
    buffer can be given as it is). Raises TunnelError for a tunnel or inner packet
    cut short or inconsistent, and for a nesting deeper than `max_depth`.
    """
    end = len(frame) if limit is None else min(limit, len(frame))
    packet = _ip(frame, l3, end, 0, ())
    found: list[Inner] = []
    while packet.frag == FRAG_NONE and packet.l4 is not None:  # a fragment: not looked into
        step = _layer(frame, packet)
        if step is None:
            break
        if len(packet.layers) >= max_depth:
            raise TunnelError(f"tunnel nesting deeper than {max_depth}")
        layer, at, stop, version = step
        packet = _ip(frame, at, stop, version, (*packet.layers, layer))
        found.append(packet)
    return tuple(found)


def five_tuple(frame: bytes, inner: Inner) -> FiveTuple:
    """The addresses, protocol and ports of a packet decapsulate() returned."""
    at = inner.l3 + (12 if inner.version == 4 else 8)
    size = 4 if inner.version == 4 else 16
    src, dst = frame[at : at + size], frame[at + size : at + 2 * size]
    l4 = inner.l4
    if l4 is not None and inner.proto in _PORT_PROTOS and inner.end - l4 >= 4:
        return FiveTuple(src, dst, inner.proto, _u16(frame, l4), _u16(frame, l4 + 2))
    return FiveTuple(src, dst, inner.proto, None, None)


def ipv6_chain(frame: bytes, l3: int, end: int) -> tuple[int, int, int]:
    """(upper protocol, its offset, fragment word) of the IPv6 packet at `l3`.

    At most 8 extension headers within `end`. The offset is -1 for a chain cut
    short or too long (the protocol is then the unread header's) and for a
    non-first fragment. The fragment word is the Fragment header's offset/M
    field as on the wire, -1 without one. (Header keywords use it too.)
    """
    proto, at, frag = frame[l3 + 6], l3 + 40, -1
    for _ in range(_MAX_EXT):
        if proto == 44:
            if end - at < 8:
                return proto, -1, frag
            frag = _u16(frame, at + 2)
            proto, at = frame[at], at + 8
            if frag & 0xFFF8:  # a later fragment: what follows is not a header
                return proto, -1, frag
        elif proto in _V6_EXT:
            if end - at < 2:
                return proto, -1, frag
            size = (frame[at + 1] + 2) << 2 if proto == 51 else (frame[at + 1] + 1) << 3
            if end - at < size:
                return proto, -1, frag
            proto, at = frame[at], at + size
        else:
            return proto, at, frag
    return proto, -1, frag


def _ip(frame: bytes, l3: int, limit: int, want: int, layers: tuple[Layer, ...]) -> Inner:
    """The IP packet at frame[l3], within `limit`; `want` is its version (0: either)."""
    where = "inner " if layers else ""
    if l3 < 0 or limit - l3 < 1:
        raise TunnelError(f"truncated {where}ip header")
    version = frame[l3] >> 4
    if version not in (4, 6) or (want and version != want):
        raise TunnelError(f"{where}ip version mismatch")
    if version == 4:
        ihl = (frame[l3] & 15) << 2
        if limit - l3 < 20 or limit - l3 < ihl:
            raise TunnelError(f"truncated {where}ipv4 header")
        total = _u16(frame, l3 + 2)
        if ihl < 20 or total < ihl:
            raise TunnelError(f"bad {where}ipv4 header length")
        end, proto, at = min(l3 + total, limit), frame[l3 + 9], l3 + ihl
        word = _u16(frame, l3 + 6)
        frag = FRAG_LATER if word & 0x1FFF else FRAG_FIRST if word & 0x2000 else FRAG_NONE
    else:
        if limit - l3 < 40:
            raise TunnelError(f"truncated {where}ipv6 header")
        plen = _u16(frame, l3 + 4)
        end = min(l3 + 40 + plen, limit) if plen else limit  # 0: a jumbogram
        proto, at, word = ipv6_chain(frame, l3, end)
        if word < 0 or not word & 0xFFF9:  # no Fragment header, or an atomic fragment
            frag = FRAG_NONE
        else:
            frag = FRAG_LATER if word & 0xFFF8 else FRAG_FIRST
        if at < 0 and frag != FRAG_LATER:
            raise TunnelError(f"bad {where}ipv6 extension headers (cut short or over 8)")
    l4 = None if frag == FRAG_LATER or proto == 59 else at
    if l4 is not None and layers:  # the outer packet was checked by snf.packet's parser
        _check_l4(frame, l4, end, proto)
    return Inner(l3, l4, version, proto, end, frag, layers)


def _check_l4(frame: bytes, l4: int, end: int, proto: int) -> None:
    """The same L4 lengths snf.packet.scalar requires of an outer packet."""
    need, name = _MIN_L4.get(proto, (0, ""))
    if end - l4 < need:
        raise TunnelError(f"truncated inner {name} header")
    if need == 4 and (proto, frame[l4]) in _ECHO and end - l4 < 8:
        raise TunnelError("truncated inner icmp echo header")


# -- the layers ------------------------------------------------------------------------

# What _layer finds: the layer, the inner IP header's offset, the end of the bytes
# it may use, and its IP version (0: by its first nibble).
Step = tuple[Layer, int, int, int]


def _layer(frame: bytes, packet: Inner) -> Step | None:
    """The tunnel that `packet` carries, if it is one that is decapsulated."""
    proto, at, end = packet.proto, -1 if packet.l4 is None else packet.l4, packet.end
    if at < 0:
        return None
    size = 4 if packet.version == 4 else 16
    where = packet.l3 + (12 if size == 4 else 8)
    src, dst = frame[where : where + size], frame[where + size : where + 2 * size]
    if proto == 4 or proto == 41:
        layer = Layer("ipip" if proto == 4 else "ip6ip", src, dst, proto)
        return layer, at, end, 4 if proto == 4 else 6
    if proto == 47:
        return _gre(frame, at, end, src, dst)
    if proto == 17 and end - at >= 8 and _u16(frame, at + 2) in (VXLAN_PORT, GENEVE_PORT):
        sport, dport, length = _u16(frame, at), _u16(frame, at + 2), _u16(frame, at + 4)
        if length < 8:
            raise TunnelError("bad udp length")
        end = min(end, at + length)
        if dport == VXLAN_PORT:
            return _vxlan(frame, at + 8, end, Layer("vxlan", src, dst, 17, sport, dport))
        return _geneve(frame, at + 8, end, Layer("geneve", src, dst, 17, sport, dport))
    return None


def _gre(frame: bytes, at: int, end: int, src: bytes, dst: bytes) -> Step | None:
    if end - at < 4:
        raise TunnelError("truncated gre header")
    flags, ptype = _u16(frame, at), _u16(frame, at + 2)
    if flags & _GRE_DISCARD:  # RFC 1701 routing or a version other than 0 (PPTP)
        return None
    checksum, keyed, sequenced = flags & 0x8000, flags & 0x2000, flags & 0x1000
    size = 4 + 4 * ((checksum > 0) + (keyed > 0) + (sequenced > 0))
    if end - at < size:
        raise TunnelError("truncated gre header")
    key_at = at + (8 if checksum else 4)
    key = (_u16(frame, key_at) << 16 | _u16(frame, key_at + 2)) if keyed else None
    layer, body = Layer("gre", src, dst, 47, key=key), at + size
    if ptype == 0x0800 or ptype == 0x86DD:
        return layer, body, end, 4 if ptype == 0x0800 else 6
    if ptype == 0x6558:
        return _ether(frame, body, end, layer)
    if ptype == 0x88BE and not sequenced:  # ERSPAN type I: no ERSPAN header
        return _ether(frame, body, end, layer._replace(type="erspan"))
    if ptype == 0x88BE or ptype == 0x22EB:
        return _erspan(frame, body, end, layer, 1 if ptype == 0x88BE else 2)
    return None


def _erspan(frame: bytes, at: int, end: int, layer: Layer, version: int) -> Step | None:
    """ERSPAN type II (version 1, 8 bytes) or III (version 2, 12 bytes and maybe 8 more)."""
    size = 8 if version == 1 else 12
    if end - at < size:
        raise TunnelError("truncated erspan header")
    if frame[at] >> 4 != version:
        raise TunnelError("bad erspan version")  # a fixed reason: never a value from the wire
    layer = layer._replace(type="erspan", session=(frame[at + 2] & 3) << 8 | frame[at + 3])
    frame_type = 0
    if version == 2:
        frame_type = frame[at + 10] >> 2 & 0x1F  # 0 Ethernet, 2 IP
        if frame[at + 11] & 1:  # O: a platform-specific subheader follows
            size += 8
            if end - at < size:
                raise TunnelError("truncated erspan header")
    if frame_type == 0:
        return _ether(frame, at + size, end, layer)
    return (layer, at + size, end, 0) if frame_type == 2 else None


def _vxlan(frame: bytes, at: int, end: int, layer: Layer) -> Step | None:
    if end - at < 8:
        raise TunnelError("truncated vxlan header")
    if not frame[at] & 0x08:  # the I flag: without it there is no VNI (RFC 7348)
        return None
    return _ether(frame, at + 8, end, layer._replace(vni=_u24(frame, at + 4)))


def _geneve(frame: bytes, at: int, end: int, layer: Layer) -> Step | None:
    if end - at < 8:
        raise TunnelError("truncated geneve header")
    if frame[at] >> 6:  # a version other than 0 (RFC 8926)
        return None
    size = 8 + ((frame[at] & 0x3F) << 2)
    if end - at < size:
        raise TunnelError("truncated geneve options")
    ptype, layer = _u16(frame, at + 2), layer._replace(vni=_u24(frame, at + 4))
    if ptype == 0x6558:
        return _ether(frame, at + size, end, layer)
    if ptype == 0x0800 or ptype == 0x86DD:
        return layer, at + size, end, 4 if ptype == 0x0800 else 6
    return None


def _ether(frame: bytes, at: int, end: int, layer: Layer) -> Step | None:
    """The IP packet in an inner Ethernet frame (None when it carries something else)."""
    if end - at < 14:
        raise TunnelError("truncated inner ethernet header")
    etype, at = _u16(frame, at + 12), at + 14
    for _ in range(_MAX_TAGS):
        if etype not in _VLAN:
            break
        if end - at < 4:
            raise TunnelError("truncated inner vlan tag")
        etype, at = _u16(frame, at + 2), at + 4
    if etype in _VLAN:
        raise TunnelError(f"more than {_MAX_TAGS} inner vlan tags")
    if etype == 0x0800 or etype == 0x86DD:
        return layer, at, end, 4 if etype == 0x0800 else 6
    return None
