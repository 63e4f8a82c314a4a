"""snf.packet.parse: every link type, tags and labels, IP and L4 cases, malformed input,
agreement with dpkt on the real captures, and the numpy path == the scalar path."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snf.packet import vectorised as fastparse
from snf.packet.batch import PacketBatch
from snf.packet.flowkey import MALFORMED_KEY, flow_hash, flow_key, non_ip_key
from snf.packet.headers import (
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    KIND_IP,
    KIND_MALFORMED,
    KIND_NON_IP,
    Headers,
)
from snf.packet.linktypes import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from snf.packet.parse import parse_batch, parse_packet_batch
from snf.packet.scalar import ROW_FIELDS, parse_scalar
from tests.packets import (
    arp,
    ether,
    fragments4,
    fragments6,
    icmp4_echo,
    icmp4_error,
    icmp6_echo,
    ip4,
    ip6,
    llc,
    loopback,
    raw_ip,
    read_pcap,
    sll,
    sll2,
    tcp4,
    tcp6,
    udp4,
    udp6,
)

ALL_LINKTYPES = [0, 1, 101, 108, 113, 228, 229, 276, 147]  # 147: a link type snf does not know
A4, B4 = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
A6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
B6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
MAC = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"  # dst, src


def one(frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> dict:
    """The parsed fields of a single packet, as a dict."""
    h = parse_batch(linktype, [frame])
    assert len(h) == 1
    return {name: getattr(h, name)[0] for name in ROW_FIELDS}


def assert_consistent(h: Headers, n: int) -> None:
    for name in ROW_FIELDS:
        assert len(getattr(h, name)) == n, name
    for i in range(n):
        assert h.flow_hash[i] == flow_hash(h.flow[i])
        if h.kind[i] == KIND_IP:
            args = (h.version[i], h.proto[i], h.src[i], h.dst[i], h.sport[i], h.dport[i])
            assert (h.flow[i], h.direction[i]) == flow_key(*args)
        elif h.kind[i] == KIND_NON_IP:
            assert h.flow[i] == non_ip_key(h.ethertype[i])
        else:
            assert h.flow[i] == MALFORMED_KEY and h.error[i]


def test_row_layout_is_the_headers_layout() -> None:
    assert Headers.__slots__ == ROW_FIELDS


def test_tcp4_fields() -> None:
    p = one(tcp4("10.0.0.1", "10.0.0.2", 1234, 80, "SA", b"hello", ip_id=77))
    assert p["kind"] == KIND_IP and p["error"] == ""
    assert (p["version"], p["proto"], p["src"], p["dst"]) == (4, 6, A4, B4)
    assert (p["sport"], p["dport"], p["tcp_flags"], p["icmp_type"]) == (1234, 80, 0x12, -1)
    assert (p["frag"], p["ip_id"], p["l3_off"], p["l4_off"], p["ethertype"]) == (
        0,
        77,
        14,
        34,
        0x800,
    )
    assert p["flow"] == struct.pack("!BB4s4sHH", 4, 6, A4, B4, 1234, 80) and p["direction"] == 0
    back = one(tcp4("10.0.0.2", "10.0.0.1", 80, 1234, "A"))
    assert back["flow"] == p["flow"] and back["flow_hash"] == p["flow_hash"]
    assert back["direction"] == 1


# -- link types ----------------------------------------------------------------

V4 = tcp4("10.0.0.1", "10.0.0.2", 1234, 80, "S", ether=False)
V6 = udp6("2001:db8::1", "2001:db8::2", 5353, 53, b"q", ether=False)


@pytest.mark.parametrize(
    ("linktype", "frame", "l3"),
    [
        (LINKTYPE_ETHERNET, ether(V4), 14),
        (LINKTYPE_LINUX_SLL, sll(V4), 16),
        (LINKTYPE_LINUX_SLL2, sll2(V4), 20),
        (LINKTYPE_RAW, raw_ip(V4), 0),
        (LINKTYPE_IPV4, V4, 0),
        (LINKTYPE_NULL, loopback(V4), 4),
        (LINKTYPE_LOOP, loopback(V4, big_endian=True), 4),
    ],
)
def test_ipv4_on_every_link_type(linktype: int, frame: bytes, l3: int) -> None:
    p = one(frame, linktype)
    assert (p["kind"], p["version"], p["src"], p["dst"], p["sport"], p["dport"]) == (
        KIND_IP, 4, A4, B4, 1234, 80,
    )  # fmt: skip
    assert (p["l3_off"], p["l4_off"], p["ethertype"]) == (l3, l3 + 20, 0x0800)
    assert p["flow"] == one(ether(V4))["flow"]


@pytest.mark.parametrize(
    ("linktype", "frame", "l3"),
    [
        (LINKTYPE_ETHERNET, ether(V6, 0x86DD), 14),
        (LINKTYPE_LINUX_SLL, sll(V6), 16),
        (LINKTYPE_LINUX_SLL2, sll2(V6), 20),
        (LINKTYPE_RAW, raw_ip(V6), 0),
        (LINKTYPE_IPV6, V6, 0),
        (LINKTYPE_NULL, loopback(V6, af=24), 4),
        (LINKTYPE_NULL, loopback(V6, af=28), 4),
        (LINKTYPE_LOOP, loopback(V6, af=10, big_endian=True), 4),
    ],
)
def test_ipv6_on_every_link_type(linktype: int, frame: bytes, l3: int) -> None:
    p = one(frame, linktype)
    assert (p["kind"], p["version"], p["proto"], p["src"], p["dst"]) == (KIND_IP, 6, 17, A6, B6)
    assert (p["sport"], p["dport"], p["l3_off"], p["l4_off"]) == (5353, 53, l3, l3 + 40)
    assert p["ethertype"] == 0x86DD


def test_unknown_link_type_is_non_ip() -> None:
    h = parse_batch(147, [ether(V4), b"", b"\x45"])
    assert h.kind == [KIND_NON_IP] * 3 and h.ethertype == [0] * 3
    assert h.flow == [non_ip_key(0)] * 3


def test_loopback_other_family_and_sll_non_ip() -> None:
    assert one(loopback(V4, af=7), LINKTYPE_NULL)["kind"] == KIND_NON_IP
    p = one(sll(bytes(28), protocol=0x0806), LINKTYPE_LINUX_SLL)
    assert (p["kind"], p["ethertype"]) == (KIND_NON_IP, 0x0806)
    assert one(sll2(bytes(28), protocol=0x0004), LINKTYPE_LINUX_SLL2)["kind"] == KIND_NON_IP


# -- VLAN and MPLS ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "l3", "ethertype"),
    [
        (tcp4(vlan=100), 18, 0x0800),
        (tcp4(vlan=[10, 20]), 22, 0x0800),  # QinQ: 802.1ad outer, 802.1Q inner
        (tcp4(vlan=[1, 2, 3, 4]), 30, 0x0800),
        (tcp4(mpls=16), 18, 0x8847),
        (tcp4(mpls=[16, 17]), 22, 0x8847),
        (tcp4(vlan=[5, 6], mpls=[16, 17]), 30, 0x8847),
        (tcp6(vlan=7), 18, 0x86DD),
        (tcp6(mpls=[1, 2]), 22, 0x8847),
    ],
)
def test_tags_and_labels_are_looked_through(frame: bytes, l3: int, ethertype: int) -> None:
    p = one(frame)
    plain = one(tcp6() if p["version"] == 6 else tcp4())
    assert p["kind"] == KIND_IP and (p["l3_off"], p["ethertype"]) == (l3, ethertype)
    for name in ("version", "proto", "src", "dst", "sport", "dport", "flow", "flow_hash"):
        assert p[name] == plain[name], name


def test_vlan_tpid_9100_and_mpls_multicast_ethertype() -> None:
    v4 = tcp4(ether=False)
    frame = MAC + struct.pack("!HHH", 0x9100, 3, 0x0800) + v4
    assert one(frame)["l3_off"] == 18
    frame = MAC + struct.pack("!HI", 0x8848, (16 << 12) | 0x100 | 64) + v4
    p = one(frame)
    assert (p["kind"], p["ethertype"], p["l3_off"]) == (KIND_IP, 0x8848, 18)


def test_mpls_non_ip_payload_is_non_ip() -> None:
    # Neither IP (nibble 4/6) nor a control word (nibble 0): an unknown payload.
    p = one(MAC + b"\x88\x47" + _label(1) + b"\x80" + bytes(59))
    assert (p["kind"], p["ethertype"]) == (KIND_NON_IP, 0x8847)


def test_mpls_ethernet_pseudowire_is_looked_through() -> None:
    # RFC 4448: labels, a zero control word, then an Ethernet frame (here with a VLAN tag).
    inner = tcp4("10.1.0.1", "10.1.0.2", 1234, 80, vlan=1)
    p = one(MAC + b"\x88\x47" + _label(16, bottom=False) + _label(1) + bytes(4) + inner)
    plain = one(tcp4("10.1.0.1", "10.1.0.2", 1234, 80))
    assert (p["kind"], p["ethertype"], p["sport"], p["dport"]) == (KIND_IP, 0x0800, 1234, 80)
    assert p["l3_off"] == 14 + 8 + 4 + 18
    assert p["flow"] == plain["flow"]
    empty = one(MAC + b"\x88\x47" + _label(1) + bytes(60))  # a zeroed inner frame
    assert (empty["kind"], empty["ethertype"]) == (KIND_NON_IP, 0)


def _label(label: int, bottom: bool = True) -> bytes:
    return struct.pack("!I", (label << 12) | (bottom << 8) | 64)


# -- IP layer --------------------------------------------------------------------


def test_ipv4_options_move_l4() -> None:
    p = one(udp4(sport=7, dport=9, options=b"\x94\x04\x00\x00" + b"\x01" * 8))  # RA + NOPs
    assert (p["l4_off"], p["sport"], p["dport"]) == (14 + 32, 7, 9)


def test_ipv6_extension_headers_are_walked() -> None:
    hop = (0, bytes(7))
    routing = (43, b"\x02\x00\x00\x00\x00\x00\x00" + A6)  # len 2 -> 24 bytes
    dst = (60, b"\x00" + bytes(6))
    ah = (51, b"\x02" + bytes(14))  # len 2 -> (2+2)*4 = 16 bytes
    p = one(tcp6(sport=1, dport=2, flags="PA", ext=[hop, routing, dst, ah]))
    assert (p["kind"], p["proto"], p["sport"], p["dport"], p["tcp_flags"]) == (
        KIND_IP,
        6,
        1,
        2,
        0x18,
    )
    assert p["l4_off"] == 14 + 40 + 8 + 24 + 8 + 16


def test_ipv6_esp_and_no_next_header_stop_the_walk() -> None:
    p = one(ether(ip6("2001:db8::1", "2001:db8::2", 50, bytes(16), ext=[(0, bytes(7))]), 0x86DD))
    assert (p["kind"], p["proto"], p["l4_off"], p["sport"]) == (KIND_IP, 50, 62, 0)
    p = one(ether(ip6("2001:db8::1", "2001:db8::2", 59, b""), 0x86DD))
    assert (p["kind"], p["proto"], p["l4_off"]) == (KIND_IP, 59, -1)


def test_ipv4_fragments() -> None:
    first, middle, last = fragments4(
        "10.0.0.1", "10.0.0.2", 1000, 53, bytes(40), ip_id=9, frag_size=16
    )
    h = parse_batch(LINKTYPE_ETHERNET, [first, middle, last])
    assert h.frag == [FRAG_FIRST, FRAG_LATER, FRAG_LATER] and h.ip_id == [9, 9, 9]
    assert h.sport == [1000, 0, 0] and h.dport == [53, 0, 0]
    assert h.l4_off == [34, -1, -1] and h.kind == [KIND_IP] * 3 and h.proto == [17] * 3
    assert h.flow[0] == flow_key(4, 17, A4, B4, 1000, 53)[0]
    assert h.flow[1] == h.flow[2] == flow_key(4, 17, A4, B4, 0, 0)[0]


def test_ipv6_fragments() -> None:
    frames = fragments6(sport=1000, dport=53, payload=bytes(100), ident=0xDEADBEEF, frag_size=48)
    h = parse_batch(LINKTYPE_ETHERNET, frames)
    assert h.frag == [FRAG_FIRST, FRAG_LATER, FRAG_LATER] and h.ip_id == [0xDEADBEEF] * 3
    assert h.sport == [1000, 0, 0] and h.proto == [17] * 3 and h.l4_off == [62, -1, -1]
    # offset 0 and M clear: an "atomic" fragment is not a fragment
    atomic = ip6("2001:db8::1", "2001:db8::2", 6, tcp6(ether=False)[40:], ext=[(44, bytes(7))])
    assert one(ether(atomic, 0x86DD))["frag"] == FRAG_NONE


def test_l4_protocols() -> None:
    icmp = one(icmp4_echo(ident=0x99))
    reply = one(icmp4_echo("10.0.0.2", "10.0.0.1", ident=0x99, reply=True))
    assert (icmp["proto"], icmp["icmp_type"], icmp["sport"], icmp["dport"]) == (1, 8, 0x99, 0x99)
    assert reply["icmp_type"] == 0 and reply["flow"] == icmp["flow"]
    assert reply["direction"] != icmp["direction"]
    err = one(icmp4_error(original=tcp4(ether=False)))
    assert (err["icmp_type"], err["sport"], err["dport"], err["kind"]) == (3, 0, 0, KIND_IP)
    v6 = one(icmp6_echo(ident=5))
    v6r = one(icmp6_echo("2001:db8::2", "2001:db8::1", ident=5, reply=True))
    assert (v6["proto"], v6["icmp_type"], v6["sport"], v6r["icmp_type"]) == (58, 128, 5, 129)
    assert v6["flow"] == v6r["flow"]
    for proto, size in ((132, 12), (33, 12), (136, 8)):
        p = one(ether(ip4("10.0.0.1", "10.0.0.2", proto, struct.pack("!HH", 11, 22) + bytes(size))))
        assert (p["proto"], p["sport"], p["dport"], p["tcp_flags"]) == (proto, 11, 22, 0)
    gre = one(ether(ip4("10.0.0.1", "10.0.0.2", 47, bytes(8))))
    assert (gre["kind"], gre["proto"], gre["sport"], gre["l4_off"]) == (KIND_IP, 47, 0, 34)


def test_total_length_bounds_l4_and_snaplen_is_fine() -> None:
    frame = udp4(payload=bytes(100)) + bytes(20)  # Ethernet trailer after the datagram
    assert one(frame)["kind"] == KIND_IP
    assert one(tcp4(payload=bytes(1000))[:60])["kind"] == KIND_IP  # cut by snaplen
    short = bytearray(tcp4())
    short[16:18] = struct.pack("!H", 20 + 10)  # IP says 10 bytes of TCP, 20 are captured
    assert one(bytes(short))["error"] == "truncated tcp header"


# -- non-IP and malformed --------------------------------------------------------


def test_non_ip_frames() -> None:
    lldp = b"\x01\x80\xc2\x00\x00\x0e" + MAC[6:] + b"\x88\xcc" + bytes(30)
    h = parse_batch(LINKTYPE_ETHERNET, [arp(), llc(), lldp, arp(vlan=4)])
    assert h.kind == [KIND_NON_IP] * 4
    assert h.ethertype == [0x0806, len(llc()) - 14, 0x88CC, 0x0806]
    assert h.flow[0] == h.flow[3] == b"\x00L2\x08\x06" and h.direction == [0] * 4
    assert h.version == [0] * 4 and h.src == [b""] * 4 and h.l3_off == [-1] * 4


def _set(frame: bytes, at: int, value: bytes) -> bytes:
    return frame[:at] + value + frame[at + len(value) :]


MALFORMED = [
    (LINKTYPE_ETHERNET, b"\x00" * 13, "truncated ethernet header"),
    (LINKTYPE_LINUX_SLL, sll(V4)[:15], "truncated sll header"),
    (LINKTYPE_LINUX_SLL2, sll2(V4)[:19], "truncated sll2 header"),
    (LINKTYPE_NULL, b"\x02\x00", "truncated loopback header"),
    (LINKTYPE_RAW, b"", "truncated ip header"),
    (LINKTYPE_RAW, b"\x50" + bytes(30), "bad ip version"),
    (LINKTYPE_IPV4, V6, "ip version mismatch"),
    (LINKTYPE_IPV6, V4 + bytes(40), "ip version mismatch"),
    (LINKTYPE_ETHERNET, tcp4(vlan=3)[:16], "truncated vlan tag"),
    (LINKTYPE_ETHERNET, MAC + b"\x81\x00\x00\x01" * 9 + bytes(40), "too many vlan tags"),
    (LINKTYPE_ETHERNET, MAC + b"\x88\x47" + _label(1, False), "truncated mpls label stack"),
    (LINKTYPE_ETHERNET, MAC + b"\x88\x47" + _label(1, False) * 9 + bytes(40),
     "mpls label stack too deep"),
    (LINKTYPE_ETHERNET, MAC + b"\x88\x47" + _label(1), "truncated mpls payload"),
    (LINKTYPE_ETHERNET, tcp4()[:33], "truncated ipv4 header"),
    (LINKTYPE_ETHERNET, ether(V6, 0x0800), "ip version mismatch"),
    (LINKTYPE_ETHERNET, ether(V4[:30], 0x86DD), "truncated ipv6 header"),
    (LINKTYPE_ETHERNET, ether(V4 + bytes(40), 0x86DD), "ip version mismatch"),
    (LINKTYPE_ETHERNET, _set(tcp4(), 14, b"\x44"), "bad ipv4 header length"),
    (LINKTYPE_ETHERNET, _set(tcp4(), 14, b"\x4f")[:60], "truncated ipv4 header"),
    (LINKTYPE_ETHERNET, _set(tcp4(), 16, b"\x00\x13"), "bad ipv4 total length"),
    (LINKTYPE_ETHERNET, tcp4()[:14 + 20 + 13], "truncated tcp header"),
    (LINKTYPE_ETHERNET, udp4()[:14 + 20 + 7], "truncated udp header"),
    (LINKTYPE_ETHERNET, ether(ip4("1.1.1.1", "2.2.2.2", 132, bytes(8))), "truncated sctp header"),
    (LINKTYPE_ETHERNET, ether(ip4("1.1.1.1", "2.2.2.2", 1, b"\x08")), "truncated icmp header"),
    (LINKTYPE_ETHERNET, icmp4_echo(payload=b"")[:14 + 20 + 6], "truncated icmp echo header"),
    (LINKTYPE_ETHERNET, tcp6(ext=[(0, bytes(7))])[:14 + 40 + 4], "truncated ipv6 extension header"),
    (LINKTYPE_ETHERNET, udp6(ext=[(44, bytes(7))])[:14 + 40 + 5], "truncated ipv6 fragment header"),
    (LINKTYPE_ETHERNET, udp6(ext=[(60, bytes(7))] * 9), "too many ipv6 extension headers"),
    # a first fragment too short to hold the TCP header (the "tiny fragment" attack)
    (LINKTYPE_ETHERNET, ether(ip4("1.1.1.1", "2.2.2.2", 6, bytes(8), mf=True)),
     "truncated tcp header"),
]  # fmt: skip


@pytest.mark.parametrize(("linktype", "frame", "error"), MALFORMED, ids=[m[2] for m in MALFORMED])
def test_malformed(linktype: int, frame: bytes, error: str) -> None:
    p = one(frame, linktype)
    assert (p["kind"], p["error"]) == (KIND_MALFORMED, error)
    assert (p["flow"], p["direction"], p["sport"], p["l4_off"]) == (MALFORMED_KEY, 0, 0, -1)


def test_malformed_keeps_what_parsed_before_the_fault() -> None:
    p = one(ether(ip4("10.0.0.1", "10.0.0.2", 6, bytes(8), mf=True, ip_id=5)))
    assert (p["version"], p["proto"], p["src"], p["dst"]) == (4, 6, A4, B4)
    assert (p["frag"], p["ip_id"], p["l3_off"]) == (FRAG_FIRST, 5, 14)


# -- real captures: agree with dpkt, numpy == scalar ------------------------------


def _captures(traffic_dir: Path) -> list[tuple[str, int, list[bytes]]]:
    out = []
    for path in sorted(traffic_dir.glob("*.pcap")):
        linktype, records = read_pcap(path)
        out.append((path.name, linktype, [frame for _, frame in records]))
    assert out, f"no captures in {traffic_dir}"
    return out


def test_real_captures_agree_with_dpkt(traffic_dir: Path) -> None:
    checked = 0
    for name, linktype, frames in _captures(traffic_dir):
        assert linktype == LINKTYPE_ETHERNET
        h = parse_batch(linktype, frames)
        assert_consistent(h, len(frames))
        for i, frame in enumerate(frames):
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                continue
            l4 = ip.data
            if not isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
                continue
            where = f"{name} packet {i}"
            assert h.kind[i] == KIND_IP, (where, h.error[i])
            assert h.proto[i] == (6 if isinstance(l4, dpkt.tcp.TCP) else 17), where
            assert (h.src[i], h.dst[i]) == (ip.src, ip.dst), where
            assert (h.sport[i], h.dport[i]) == (l4.sport, l4.dport), where
            if isinstance(l4, dpkt.tcp.TCP):
                assert h.tcp_flags[i] == l4.flags & 0xFF, where
            checked += 1
    assert checked > 1200  # of 1305 packets


def test_real_captures_non_ip_fragments_and_vlan(traffic_dir: Path) -> None:
    caps = {name: parse_batch(lt, frames) for name, lt, frames in _captures(traffic_dir)}
    frag = caps["zeek-ipv4-fragmented.pcap"]  # one datagram, its first fragment sent twice
    assert frag.frag == [FRAG_FIRST, FRAG_LATER, FRAG_FIRST] and len(set(frag.ip_id)) == 1
    vlan = caps["zeek-http-vlan.pcap"]
    assert set(vlan.kind) == {KIND_IP} and set(vlan.l3_off) == {18}
    assert KIND_NON_IP in caps["tcpreplay-test.pcap"].kind  # ARP, LLC
    assert 0x8847 in caps["tcpreplay-test.pcap"].ethertype  # MPLS


def test_vectorised_path_equals_scalar(traffic_dir: Path) -> None:
    frames = [f for _, _, fs in _captures(traffic_dir) for f in fs]
    frames += [tcp4(), udp4(), tcp4()[:40], tcp4()[:47], tcp4()[:48], udp4()[:41], udp4()[:42]]
    frames += [*fragments4(), tcp4(options=b"\x01" * 4), icmp4_echo(), arp(), b"", bytes(20)]
    frames += [_set(tcp4(), 16, b"\x00\x10"), _set(tcp4(), 16, b"\x00\x21")]  # short totals
    for cut in (1, 64, 65, 1000, len(frames)):
        scalar = parse_scalar(LINKTYPE_ETHERNET, frames[:cut])
        assert fastparse.parse_ethernet_ipv4(frames[:cut]) == scalar
        assert parse_batch(LINKTYPE_ETHERNET, frames[:cut]) == scalar
    assert_consistent(parse_batch(LINKTYPE_ETHERNET, frames), len(frames))


def test_parse_packet_batch() -> None:
    frames = [tcp4(), arp(), b"\x00"]
    batch = PacketBatch.from_rows(1, [(i, len(f), f, 1, i, "") for i, f in enumerate(frames)])
    assert parse_packet_batch(batch) == parse_batch(LINKTYPE_ETHERNET, frames)


# -- fuzz: never raises, lists stay parallel --------------------------------------

SEEDS = [
    tcp4(), udp4(vlan=[1, 2]), tcp4(mpls=[3, 4]), tcp6(ext=[(0, bytes(7))]), icmp4_echo(),
    icmp6_echo(), *fragments6(payload=bytes(40), frag_size=16), tcp4(options=bytes(8)),
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid frame, cut and with a few bytes overwritten: reaches the deep branches."""
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    skip = draw(st.sampled_from([0, 0, 0, 14, 16, 18, 20]))  # re-frame for other link types
    return bytes(frame[skip : draw(st.integers(0, len(frame)))])


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.sampled_from(ALL_LINKTYPES), st.lists(st.binary(max_size=120), max_size=20))
def test_fuzz_random_bytes_never_raise(linktype: int, frames: list[bytes]) -> None:
    h = parse_batch(linktype, frames)
    assert_consistent(h, len(frames))


@FUZZ
@given(st.sampled_from(ALL_LINKTYPES), st.lists(mutated(), min_size=1, max_size=20))
def test_fuzz_mutated_frames_never_raise(linktype: int, frames: list[bytes]) -> None:
    h = parse_batch(linktype, frames)
    assert_consistent(h, len(frames))
    if linktype == LINKTYPE_ETHERNET:
        assert fastparse.parse_ethernet_ipv4(frames * 4) == parse_scalar(linktype, frames * 4)
