"""IDS tunnel decapsulation (functions/ids/tunnels.py): every encapsulation, nesting, limits.

Frames are crafted with scapy. The offset of an inner packet is checked against
where scapy put it (the frame ends with it), its 5-tuple against what was built,
and every frame cut at every byte (and randomly damaged) must give packets or a
TunnelError, never any other exception.
"""

from __future__ import annotations

import random
import re

import pytest
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III, ERSPAN_PlatformSpecific
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, GRE, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from snf.functions.ids.tunnels import (
    GENEVE_PORT,
    MAX_DEPTH,
    VXLAN_PORT,
    FiveTuple,
    Inner,
    TunnelError,
    decapsulate,
    five_tuple,
    ipv6_chain,
)
from snf.packet.headers import FRAG_FIRST, FRAG_LATER, FRAG_NONE

OUTER4 = IP(src="192.0.2.1", dst="192.0.2.2")
OUTER6 = IPv6(src="2001:db8::1", dst="2001:db8::2")
INNER4 = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80, flags="S") / Raw(b"GET")
INNER6 = IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=5353, dport=53) / Raw(b"q")
ETHER = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def frame_of(pkt: Packet) -> bytes:
    return bytes(ETHER / pkt)


def only(frame: bytes) -> Inner:
    (packet,) = decapsulate(frame, 14)
    return packet


def check_inner(frame: bytes, packet: Inner, inner: Packet) -> None:
    """The frame ends with `inner`, and the Inner points at it."""
    raw = bytes(inner)
    assert packet.l3 == len(frame) - len(raw) and packet.end == len(frame)
    assert frame[packet.l3 : packet.end] == raw
    expected = (4, 6) if IP in inner else (6, 17)
    assert (packet.version, packet.proto) == expected
    tuple_ = five_tuple(frame, packet)
    if IP in inner:
        assert tuple_ == FiveTuple(b"\n\x00\x00\x01", b"\n\x00\x00\x02", 6, 1234, 80)
    else:
        assert tuple_.alert_fields() == {
            "proto": "UDP", "src": "fd00::1", "sport": 5353, "dst": "fd00::2", "dport": 53,
        }  # fmt: skip


# -- each encapsulation ---------------------------------------------------------------


@pytest.mark.parametrize("outer", [OUTER4, OUTER6], ids=["over4", "over6"])
@pytest.mark.parametrize("inner", [INNER4, INNER6], ids=["ipip", "ip6ip"])
def test_ip_in_ip(outer: Packet, inner: Packet) -> None:
    frame = frame_of(outer / inner)
    packet = only(frame)
    check_inner(frame, packet, inner)
    (layer,) = packet.layers
    assert layer.type == ("ipip" if IP in inner else "ip6ip")
    assert layer.proto == (4 if IP in inner else 41)
    assert packet.tunnel["proto"] == ("IPv4" if IP in inner else "IPv6")


@pytest.mark.parametrize(
    "gre",
    [
        GRE(), GRE(chksum_present=1), GRE(key_present=1, key=0xDEADBEEF),
        GRE(seqnum_present=1, sequence_number=9),
        GRE(chksum_present=1, key_present=1, key=7, seqnum_present=1),
    ],
    ids=["plain", "checksum", "key", "sequence", "all"],
)  # fmt: skip
@pytest.mark.parametrize("outer", [OUTER4, OUTER6], ids=["over4", "over6"])
@pytest.mark.parametrize("inner", [INNER4, INNER6], ids=["v4", "v6"])
def test_gre(gre: Packet, outer: Packet, inner: Packet) -> None:
    frame = frame_of(outer / gre / inner)
    packet = only(frame)
    check_inner(frame, packet, inner)
    (layer,) = packet.layers
    assert (layer.type, layer.proto) == ("gre", 47)
    assert layer.key == (gre.key if gre.key_present else None)
    assert ("key" in layer.as_dict()) == bool(gre.key_present)


def test_gre_transparent_ethernet_with_vlan_tags() -> None:
    for inner_eth in (ETHER, ETHER / Dot1Q(vlan=7), ETHER / Dot1AD(vlan=1) / Dot1Q(vlan=2)):
        frame = frame_of(OUTER4 / GRE(proto=0x6558) / inner_eth / INNER4)
        check_inner(frame, only(frame), INNER4)


def test_erspan_types() -> None:
    type1 = OUTER4 / GRE(proto=0x88BE) / ETHER / INNER4
    type2 = OUTER4 / GRE(seqnum_present=1) / ERSPAN_II(session_id=513) / ETHER / INNER4
    type3 = OUTER4 / GRE(seqnum_present=1) / ERSPAN_III(session_id=77) / ETHER / INNER6
    platform = ERSPAN_III(session_id=5, o=1) / ERSPAN_PlatformSpecific(platf_id=3)
    type3o = OUTER6 / GRE(key_present=1, key=4) / platform / ETHER / INNER4
    for pkt, inner, session in ((type1, INNER4, None), (type2, INNER4, 513),
                                (type3, INNER6, 77), (type3o, INNER4, 5)):  # fmt: skip
        frame = frame_of(pkt)
        packet = only(frame)
        check_inner(frame, packet, inner)
        assert packet.layers[0].type == "erspan" and packet.layers[0].session == session
    assert only(frame_of(type3o)).layers[0].key == 4


def test_erspan_iii_ip_frame_type() -> None:
    frame = frame_of(OUTER4 / GRE(proto=0x22EB) / ERSPAN_III(ft=2) / INNER6)
    check_inner(frame, only(frame), INNER6)
    assert decapsulate(frame_of(OUTER4 / GRE(proto=0x22EB) / ERSPAN_III(ft=1) / INNER4), 14) == ()


@pytest.mark.parametrize("inner", [INNER4, INNER6], ids=["v4", "v6"])
def test_vxlan(inner: Packet) -> None:
    frame = frame_of(
        OUTER4 / UDP(sport=4242, dport=VXLAN_PORT) / VXLAN(vni=0xABCDEF) / ETHER / inner
    )
    packet = only(frame)
    check_inner(frame, packet, inner)
    assert packet.layers[0].vni == 0xABCDEF
    assert packet.tunnel == {
        "src_ip": "192.0.2.1", "src_port": 4242, "dest_ip": "192.0.2.2", "dest_port": 4789,
        "proto": "UDP", "depth": 1,
        "layers": [{"type": "vxlan", "src_ip": "192.0.2.1", "dest_ip": "192.0.2.2",
                    "proto": "UDP", "src_port": 4242, "dest_port": 4789, "vni": 0xABCDEF}],
    }  # fmt: skip


def test_vxlan_over_ipv6_with_vlan() -> None:
    frame = frame_of(OUTER6 / UDP(dport=VXLAN_PORT) / VXLAN(vni=1) / ETHER / Dot1Q() / INNER4)
    check_inner(frame, only(frame), INNER4)


@pytest.mark.parametrize(
    ("geneve", "inner"),
    [
        (GENEVE(vni=5, proto=0x6558) / ETHER, INNER4),
        (GENEVE(vni=5, proto=0x0800), INNER4),
        (GENEVE(vni=5, proto=0x86DD), INNER6),
        (GENEVE(vni=5, proto=0x6558, options=[GeneveOptions(length=2, data=b"12345678")]) / ETHER,
         INNER6),
    ],
    ids=["ethernet", "ipv4", "ipv6", "options"],
)  # fmt: skip
def test_geneve(geneve: Packet, inner: Packet) -> None:
    frame = frame_of(OUTER4 / UDP(dport=GENEVE_PORT) / geneve / inner)
    packet = only(frame)
    check_inner(frame, packet, inner)
    assert (packet.layers[0].type, packet.layers[0].vni) == ("geneve", 5)


# -- nesting -----------------------------------------------------------------------------


def test_nested_tunnels_outermost_first() -> None:
    vxlan = UDP(dport=VXLAN_PORT) / VXLAN(vni=9) / ETHER
    frame = frame_of(OUTER4 / GRE(key_present=1, key=1) / OUTER6 / vxlan / IP() / INNER6)
    found = decapsulate(frame, 14)
    assert [p.depth for p in found] == [1, 2, 3]
    assert [layer.type for layer in found[-1].layers] == ["gre", "vxlan", "ip6ip"]
    assert [p.version for p in found] == [6, 4, 6]
    check_inner(frame, found[-1], INNER6)
    tunnel = found[-1].tunnel
    assert (tunnel["src_ip"], tunnel["proto"], tunnel["depth"]) == ("192.0.2.1", "GRE", 3)
    assert [layer["type"] for layer in tunnel["layers"]] == ["gre", "vxlan", "ip6ip"]


def nest(depth: int) -> Packet:
    pkt = INNER4
    for _ in range(depth):
        pkt = OUTER4 / GRE() / pkt
    return pkt


def test_depth_limit() -> None:
    frame = frame_of(nest(MAX_DEPTH))
    assert len(decapsulate(frame, 14)) == MAX_DEPTH
    check_inner(frame, decapsulate(frame, 14)[-1], INNER4)
    with pytest.raises(TunnelError, match=f"tunnel nesting deeper than {MAX_DEPTH}") as info:
        decapsulate(frame_of(nest(MAX_DEPTH + 1)), 14)
    assert info.value.reason == f"tunnel nesting deeper than {MAX_DEPTH}"
    assert len(decapsulate(frame_of(nest(2)), 14, max_depth=2)) == 2
    with pytest.raises(TunnelError):
        decapsulate(frame_of(nest(3)), 14, max_depth=2)


# -- what is not decapsulated --------------------------------------------------------------


@pytest.mark.parametrize(
    "pkt",
    [
        INNER4, INNER6, OUTER4 / ICMP(), OUTER4 / UDP(dport=53) / Raw(b"x" * 20),
        OUTER4 / UDP(sport=VXLAN_PORT, dport=9) / VXLAN() / ETHER / INNER4,
        OUTER4 / UDP(dport=VXLAN_PORT) / VXLAN(flags=0) / ETHER / INNER4,
        OUTER4 / UDP(dport=VXLAN_PORT) / VXLAN() / ETHER / ARP(),
        OUTER4 / GRE(version=1) / INNER4, OUTER4 / GRE(routing_present=1) / INNER4,
        OUTER4 / GRE(strict_route_source=1) / INNER4, OUTER4 / GRE(proto=0x880B) / INNER4,
        OUTER4 / GRE(proto=0x8847) / INNER4,
        OUTER4 / UDP(dport=GENEVE_PORT) / GENEVE(version=1, proto=0x0800) / INNER4,
        OUTER4 / UDP(dport=GENEVE_PORT) / GENEVE(proto=0x8847) / INNER4,
        OUTER6 / IPv6ExtHdrHopByHop() / UDP(),
    ],
    ids=lambda p: p.summary(),
)  # fmt: skip
def test_not_tunnels(pkt: Packet) -> None:
    assert decapsulate(frame_of(pkt), 14) == ()


def test_outer_fragments_are_not_decapsulated() -> None:
    for outer in (IP(flags="MF"), IP(frag=10), IPv6() / IPv6ExtHdrFragment(m=1)):
        assert decapsulate(frame_of(outer / GRE() / INNER4), 14) == ()
    frame = frame_of(OUTER6 / IPv6ExtHdrFragment(offset=4) / GRE() / INNER4)
    assert decapsulate(frame, 14) == ()


def test_inner_fragments_are_inspected_not_decapsulated() -> None:
    first = IP(flags="MF", src="10.0.0.1", dst="10.0.0.2") / GRE() / INNER4
    (packet,) = decapsulate(frame_of(OUTER4 / GRE() / first), 14)
    assert (packet.frag, packet.proto, packet.l4 is not None) == (FRAG_FIRST, 47, True)
    later = IP(frag=3, proto=6, src="10.0.0.1", dst="10.0.0.2") / Raw(b"x" * 16)
    frame = frame_of(OUTER4 / GRE() / later)
    (packet,) = decapsulate(frame, 14)
    assert (packet.frag, packet.l4) == (FRAG_LATER, None)
    assert five_tuple(frame, packet).sport is None
    v6 = IPv6() / IPv6ExtHdrFragment(offset=2, nh=6) / Raw(b"y" * 16)
    assert only(frame_of(OUTER4 / v6)).frag == FRAG_LATER


def test_inner_ipv6_extension_headers_and_icmp() -> None:
    inner = IPv6() / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest(id=3)
    frame = frame_of(OUTER4 / inner)
    packet = only(frame)
    assert (packet.proto, packet.frag, packet.l4) == (58, FRAG_NONE, len(frame) - 8)
    assert five_tuple(frame, packet).alert_fields()["proto"] == "IPv6-ICMP"
    assert five_tuple(frame, packet).sport is None


def test_inner_end_stops_at_the_outer_packet() -> None:
    pkt = OUTER4 / GRE() / INNER4
    frame = frame_of(pkt) + b"\x00" * 18  # Ethernet padding after the IP packet
    packet = only(frame)
    assert packet.end == len(frame) - 18
    short = bytearray(frame_of(OUTER4 / INNER4))  # the outer total length cuts the inner one
    short[14 + 2 : 14 + 4] = (20 + 20 + 21).to_bytes(2, "big")
    packet = only(bytes(short))
    assert packet.end == 14 + 61 and packet.l4 == 14 + 40


def test_ipv6_chain() -> None:
    frame = bytes(IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(m=1, offset=0) / TCP())
    assert ipv6_chain(frame, 0, len(frame)) == (6, 56, 1)
    later = bytes(IPv6() / IPv6ExtHdrFragment(offset=3) / TCP())
    assert ipv6_chain(later, 0, len(later)) == (6, -1, 3 << 3)
    assert ipv6_chain(frame, 0, 45) == (0, -1, -1)  # cut in the hop-by-hop header


# -- malformed input -------------------------------------------------------------------------

SAMPLES = [
    OUTER4 / INNER4, OUTER6 / INNER6,
    OUTER4 / GRE(chksum_present=1, key_present=1, seqnum_present=1) / INNER6,
    OUTER6 / GRE(proto=0x6558) / ETHER / Dot1Q() / Dot1Q() / INNER4,
    OUTER4 / GRE(proto=0x88BE) / ETHER / INNER4,
    OUTER4 / GRE(seqnum_present=1) / ERSPAN_II() / ETHER / INNER4,
    OUTER4 / GRE(seqnum_present=1) / ERSPAN_III(o=1) / ERSPAN_PlatformSpecific() / ETHER / INNER4,
    OUTER4 / UDP(dport=VXLAN_PORT) / VXLAN() / ETHER / INNER6,
    OUTER6 / UDP(dport=GENEVE_PORT) / GENEVE(proto=0x6558, options=[GeneveOptions()]) / ETHER
    / IPv6() / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest(),
    nest(MAX_DEPTH + 1),
]  # fmt: skip


# Every reason there is (docs/functions/ids-headers-tunnels.md): never a value from the wire.
REASONS = re.compile(
    r"truncated (inner )?(ip|ipv4|ipv6) header|(inner )?ip version mismatch"
    r"|bad (inner )?ipv4 header length|bad (inner )?ipv6 extension headers \(cut short or over 8\)"
    r"|truncated inner (tcp|udp|udplite|sctp|dccp|icmp|icmpv6|icmp echo) header"
    r"|truncated (gre|erspan|vxlan|geneve) header|bad erspan version|bad udp length"
    r"|truncated geneve options|truncated inner (ethernet header|vlan tag)"
    r"|more than 8 inner vlan tags|tunnel nesting deeper than 4"
)


@pytest.mark.parametrize("pkt", SAMPLES, ids=lambda p: p.summary())
def test_cut_at_every_byte(pkt: Packet) -> None:
    frame = frame_of(pkt)
    reasons = set()
    for cut in range(len(frame) + 1):
        try:
            alone = decapsulate(frame[:cut], 14)
        except TunnelError as exc:
            reasons.add(exc.reason)
            alone = exc.reason
        try:  # in a batch buffer, `limit` keeps it from the next packet's bytes
            assert decapsulate(frame[:cut] + frame, 14, limit=cut) == alone
        except TunnelError as exc:
            assert exc.reason == alone
    assert reasons and all(REASONS.fullmatch(reason) for reason in reasons), reasons


def test_random_damage_only_raises_tunnel_error() -> None:
    rng = random.Random(1)
    frames = [frame_of(pkt) for pkt in SAMPLES]
    for _ in range(4000):
        frame = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(14, len(frame))] = rng.randrange(256)
        try:
            for packet in decapsulate(bytes(frame), 14):
                five_tuple(bytes(frame), packet)
                assert 14 <= packet.l3 < packet.end <= len(frame)
        except TunnelError as exc:
            assert REASONS.fullmatch(exc.reason), exc.reason


@pytest.mark.parametrize(
    ("pkt", "reason"),
    [
        (OUTER4 / GRE(seqnum_present=1, proto=0x88BE) / ERSPAN_III() / ETHER / INNER4,
         "bad erspan version"),
        (OUTER4 / GRE(proto=0x0800) / IPv6() / UDP(), "inner ip version mismatch"),
        (OUTER4 / GRE(proto=0x86DD) / INNER4, "inner ip version mismatch"),
        (OUTER4 / IP(ihl=4) / UDP(), "bad inner ipv4 header length"),
        (OUTER4 / IP(proto=6) / Raw(b"x" * 10), "truncated inner tcp header"),
        (OUTER4 / IP(proto=1) / Raw(b"\x08\x00\x00\x00"), "truncated inner icmp echo header"),
        (OUTER4 / UDP(dport=VXLAN_PORT, len=6) / Raw(b"x" * 30), "bad udp length"),
        (OUTER4 / UDP(dport=GENEVE_PORT) / GENEVE(optionlen=10, proto=0x0800) / Raw(b"x" * 8),
         "truncated geneve options"),
        (OUTER4 / GRE(proto=0x6558) / Raw(b"x" * 10), "truncated inner ethernet header"),
        (OUTER4 / GRE(proto=0x6558) / Raw(bytes(12) + b"\x81\x00\x00\x00"),
         "truncated inner vlan tag"),
        (OUTER4 / GRE(proto=0x6558) / Raw(bytes(12) + b"\x81\x00" * 17 + bytes(40)),
         "more than 8 inner vlan tags"),
    ],
)  # fmt: skip
def test_reasons(pkt: Packet, reason: str) -> None:
    with pytest.raises(TunnelError) as info:
        decapsulate(frame_of(pkt), 14)
    assert info.value.reason == reason == str(info.value)
    assert REASONS.fullmatch(reason)
