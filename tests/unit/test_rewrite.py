"""snf.packet.rewrite: incremental checksum updates equal a full recomputation."""

from __future__ import annotations

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st

from snf.packet.rewrite import (
    checksum,
    csum_adjust,
    ipv4_header_ok,
    l4_checksum_ok,
    set_dscp,
    set_ipv4_addr,
    set_l4_port,
)

addr = st.binary(min_size=4, max_size=4)
port = st.integers(0, 65535)


def _packet(proto: int, payload: bytes, zero_udp: bool = False) -> bytearray:
    if proto == 6:
        l4 = dpkt.tcp.TCP(sport=1234, dport=80, data=payload)
    elif proto == 17:
        l4 = dpkt.udp.UDP(sport=1234, dport=53, data=payload)
        l4.ulen = 8 + len(payload)
    else:
        l4 = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=7, seq=1, data=payload))
    ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x01", dst=b"\x08\x08\x08\x08", p=proto, data=l4)
    ip.len = 20 + len(bytes(l4))
    raw = bytearray(bytes(ip))
    if zero_udp:
        raw[26:28] = b"\x00\x00"
    return raw


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=2, max_size=64).filter(lambda b: len(b) % 2 == 0), st_=st.data())
def test_csum_adjust_equals_recomputing(data: bytes, st_: st.DataObject) -> None:
    at = st_.draw(st.integers(0, len(data) // 2 - 1)) * 2
    new = st_.draw(st.binary(min_size=2, max_size=2))
    changed = data[:at] + new + data[at + 2 :]
    assert csum_adjust(checksum(data), data[at : at + 2], new) in {checksum(changed)} | (
        {0xFFFF, 0} if checksum(changed) in (0, 0xFFFF) else set()
    )


@settings(max_examples=200, deadline=None)
@given(
    proto=st.sampled_from([6, 17, 1]),
    payload=st.binary(max_size=40),
    src=addr,
    dst=addr,
    sport=port,
    dport=port,
)
def test_rewrites_keep_every_checksum_valid(
    proto: int, payload: bytes, src: bytes, dst: bytes, sport: int, dport: int
) -> None:
    pkt = _packet(proto, payload)
    set_ipv4_addr(pkt, 0, 20, proto, "src", src)
    set_ipv4_addr(pkt, 0, 20, proto, "dst", dst)
    set_l4_port(pkt, 20, proto, "src", sport)
    set_l4_port(pkt, 20, proto, "dst", dport)
    assert bytes(pkt[12:20]) == src + dst
    assert ipv4_header_ok(pkt, 0) and l4_checksum_ok(pkt, 0, 20)
    again = dpkt.ip.IP(bytes(pkt))
    if proto == 1:
        assert again.data.data.id == dport  # the echo identifier, in both "ports"
    else:
        assert (again.data.sport, again.data.dport) == (sport, dport)


def test_a_zero_udp_checksum_stays_zero() -> None:
    pkt = _packet(17, b"hello", zero_udp=True)
    set_ipv4_addr(pkt, 0, 20, 17, "src", b"\xc6\x33\x64\x01")
    set_l4_port(pkt, 20, 17, "src", 40000)
    assert pkt[26:28] == b"\x00\x00"
    assert ipv4_header_ok(pkt, 0) and l4_checksum_ok(pkt, 0, 20)


def test_dscp_keeps_ecn_and_the_header_checksum() -> None:
    pkt = _packet(6, b"x")
    pkt[1] = 0x03  # ECN CE
    pkt[10:12] = b"\x00\x00"
    pkt[10:12] = checksum(pkt[:20]).to_bytes(2, "big")
    set_dscp(pkt, 0, 4, 46)
    assert pkt[1] == (46 << 2) | 0x03
    assert ipv4_header_ok(pkt, 0)
    v6 = bytearray(
        bytes(dpkt.ip6.IP6(fc=0x03, flow=0xABCDE, nxt=59, hlim=64, src=bytes(16), dst=bytes(16)))
    )
    set_dscp(v6, 0, 6, 10)
    again = dpkt.ip6.IP6(bytes(v6))
    assert (again.fc, again.flow) == ((10 << 2) | 0x03, 0xABCDE)


@settings(max_examples=300, deadline=None)
@given(
    proto=st.sampled_from([6, 17, 1]),
    payload=st.binary(max_size=40),
    which=st.sampled_from(["src", "dst"]),
    new_addr=addr,
    new_port=port,
    zero_udp=st.booleans(),
)
def test_endpoint_rewrite_equals_address_then_port(
    proto: int, payload: bytes, which: str, new_addr: bytes, new_port: int, zero_udp: bool
) -> None:
    from snf.packet.rewrite import set_ipv4_endpoint

    one = _packet(proto, payload, zero_udp=zero_udp and proto == 17)
    two = bytearray(one)
    set_ipv4_endpoint(one, 0, 20, proto, which, new_addr, new_port)
    set_ipv4_addr(two, 0, 20, proto, which, new_addr)
    set_l4_port(two, 20, proto, which, new_port)
    # Equal, except that one's-complement zero may come out as 0x0000 or 0xFFFF.
    at = 20 + {6: 16, 17: 6, 1: 2}[proto]
    assert one[:at] == two[:at] and one[at + 2 :] == two[at + 2 :]
    sums = {bytes(one[at : at + 2]), bytes(two[at : at + 2])}
    assert len(sums) == 1 or sums == {b"\x00\x00", b"\xff\xff"}
    assert l4_checksum_ok(one, 0, 20) == l4_checksum_ok(two, 0, 20)
