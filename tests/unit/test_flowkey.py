"""snf.packet.flowkey: symmetric keys, stable hashes, partitions, and the fragment-aware router."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snf.packet.flowkey import (
    MALFORMED_KEY,
    cached_flow_hashes,
    flow_hash,
    flow_key,
    non_ip_key,
    partition_for,
)
from snf.packet.fragments import FRAG_TTL_NS, FlowRouter
from snf.packet.headers import FRAG_FIRST, FRAG_LATER, Headers
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.parse import parse_batch
from tests.packets import arp, fragments4, fragments6, tcp4, tcp6, udp4, udp6

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
REPO = Path(__file__).resolve().parents[2]

addr4 = st.binary(min_size=4, max_size=4)
addr6 = st.binary(min_size=16, max_size=16)
port = st.integers(0, 65535)
proto = st.integers(0, 255)
ipv4_text = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6_text = addr6.map(lambda b: socket.inet_ntop(socket.AF_INET6, b))


def parse(*frames: bytes) -> Headers:
    return parse_batch(LINKTYPE_ETHERNET, list(frames))


# -- keys ---------------------------------------------------------------------


@given(
    st.one_of(st.tuples(st.just(4), addr4, addr4), st.tuples(st.just(6), addr6, addr6)),
    proto,
    port,
    port,
)
def test_key_is_symmetric(addrs: tuple[int, bytes, bytes], p: int, sport: int, dport: int) -> None:
    version, src, dst = addrs
    key, direction = flow_key(version, p, src, dst, sport, dport)
    back, back_direction = flow_key(version, p, dst, src, dport, sport)
    assert key == back and flow_hash(key) == flow_hash(back)
    if (src, sport) == (dst, dport):
        assert direction == back_direction == 0
    else:
        assert {direction, back_direction} == {0, 1}
    # layout: version proto lo_addr hi_addr lo_port hi_port, low end first
    size = len(src)
    assert len(key) == 2 + 2 * size + 4 and key[:2] == bytes([version, p])
    lo = (key[2 : 2 + size], int.from_bytes(key[-4:-2], "big"))
    hi = (key[2 + size : 2 + 2 * size], int.from_bytes(key[-2:], "big"))
    assert lo <= hi and lo == ((src, sport) if direction == 0 else (dst, dport))


@settings(max_examples=50, deadline=None)
@given(ipv4_text, ipv4_text, ipv6_text, ipv6_text, port, port)
def test_parsed_packets_share_key_both_ways(
    a: str, b: str, a6: str, b6: str, x: int, y: int
) -> None:
    h = parse(tcp4(a, b, x, y, "S"), tcp4(b, a, y, x, "SA"), udp6(a6, b6, x, y), udp6(b6, a6, y, x))
    assert h.flow[0] == h.flow[1] and h.flow_hash[0] == h.flow_hash[1]
    assert h.flow[2] == h.flow[3] and h.flow_hash[2] == h.flow_hash[3]
    if (a, x) != (b, y):
        assert h.direction[0] != h.direction[1]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 4095), max_size=3),
    st.lists(st.integers(0, (1 << 20) - 1), max_size=3),
    port,
    port,
)
def test_vlan_and_mpls_do_not_change_the_key(
    vlan: list[int], mpls: list[int], x: int, y: int
) -> None:
    h = parse(
        tcp4(sport=x, dport=y),
        tcp4(sport=x, dport=y, vlan=vlan, mpls=mpls),
        tcp6(sport=x, dport=y),
        tcp6(sport=x, dport=y, vlan=vlan, mpls=mpls),
    )
    assert h.flow[0] == h.flow[1] and h.flow_hash[0] == h.flow_hash[1]
    assert h.flow[2] == h.flow[3] and h.flow_hash[2] == h.flow_hash[3]


def test_non_ip_and_malformed_keys() -> None:
    assert non_ip_key(0x0806) == b"\x00L2\x08\x06"
    h = parse(arp(), arp(vlan=9), tcp4()[:40], b"\x00")
    assert h.flow == [non_ip_key(0x0806)] * 2 + [MALFORMED_KEY] * 2
    assert h.flow_hash[2] == h.flow_hash[3] == flow_hash(MALFORMED_KEY)


# -- hashes and partitions ---------------------------------------------------------

# Computed once; a change here breaks the partitioning of every existing topic.
KNOWN = {
    "04060a0000010a00000204d20050": 13056507188618433973,  # 10.0.0.1:1234 -> 10.0.0.2:80 TCP
    "061120010db800000000000000000000000120010db800000000000000000000000214e90035": (
        475885971329667239
    ),
    "004c320806": 16170309468890309864,  # ARP
    "ff6d616c666f726d6564": 16617277251079361319,  # malformed
    "": 13020603013274838756,
}


def test_known_hash_values() -> None:
    for key, value in KNOWN.items():
        assert flow_hash(bytes.fromhex(key)) == value
    assert cached_flow_hashes([bytes.fromhex(k) for k in KNOWN]) == list(KNOWN.values())
    assert parse(tcp4("10.0.0.2", "10.0.0.1", 80, 1234, "SA")).flow_hash == [13056507188618433973]


def test_hash_does_not_depend_on_pythonhashseed() -> None:
    keys = list(KNOWN)
    code = (
        "from snf.packet.flowkey import flow_hash as h; "
        f"print(*(h(bytes.fromhex(k)) for k in {keys!r}))"
    )
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert list(map(int, out.stdout.split())) == list(KNOWN.values())


@given(st.integers(0, 2**64 - 1), st.integers(1, 10_000))
def test_partition_in_range(h: int, partitions: int) -> None:
    assert 0 <= partition_for(h, partitions) < partitions
    assert partition_for(h, partitions) == h % partitions


def test_hash_spreads_flows_evenly() -> None:
    keys = [
        flow_key(4, 6, bytes([10, 0, i >> 8, i & 255]), b"\x01" * 4, 40000, 443)[0]
        for i in range(8000)
    ]
    counts = np.bincount([partition_for(flow_hash(k), 8) for k in keys], minlength=8)
    assert counts.min() > 850 and counts.max() < 1150  # 1000 expected each


# -- router ----------------------------------------------------------------------


def route(router: FlowRouter, frames: list[bytes], ts: list[int], partitions: int) -> list[int]:
    return router.route(parse(*frames), ts, partitions)


def test_plain_packets_route_by_flow_hash() -> None:
    frames = [tcp4(sport=p) for p in range(100)] + [arp(), b"\x00"]
    h = parse(*frames)
    out = FlowRouter().route(h, np.full(len(frames), T0), 12)
    assert out == [partition_for(x, 12) for x in h.flow_hash]
    with pytest.raises(ValueError):
        FlowRouter().route(h, [T0] * len(frames), 0)


@settings(max_examples=60, deadline=None)
@given(port, port, st.integers(0, 65535), st.integers(1, 64), st.booleans(), st.booleans())
def test_fragments_follow_their_first_fragment(
    sport: int, dport: int, ident: int, partitions: int, v6: bool, split: bool
) -> None:
    if v6:
        frames = fragments6(sport=sport, dport=dport, payload=bytes(100), ident=ident, frag_size=32)
    else:
        frames = fragments4(sport=sport, dport=dport, payload=bytes(100), ip_id=ident, frag_size=32)
    h = parse(*frames)
    assert h.frag[0] == FRAG_FIRST and set(h.frag[1:]) == {FRAG_LATER}
    plain = parse(udp6(sport=sport, dport=dport) if v6 else udp4(sport=sport, dport=dport))
    expected = partition_for(plain.flow_hash[0], partitions)  # the flow's own partition
    router = FlowRouter()
    ts = [T0 + i * 1000 for i in range(len(frames))]
    if split:  # first fragment in one batch, the rest in a later one
        out = route(router, frames[:1], ts[:1], partitions) + route(
            router, frames[1:], ts[1:], partitions
        )
    else:
        out = route(router, frames, ts, partitions)
    assert out == [expected] * len(frames)


def _differing_case(partitions: int) -> list[bytes]:
    """Fragments whose full-key partition differs from their ports-0 key partition."""
    for sport in range(1000, 2000):
        frames = fragments4(sport=sport, payload=bytes(100), frag_size=32)
        h = parse(*frames)
        if h.flow_hash[0] % partitions != h.flow_hash[1] % partitions:
            return frames
    raise AssertionError("no differing case")


def test_later_fragment_without_first_routes_by_address_pair() -> None:
    frames = _differing_case(16)
    h = parse(*frames)
    assert FlowRouter().route(parse(*frames[1:]), [T0] * 3, 16) == [h.flow_hash[1] % 16] * 3
    assert h.flow[1] == flow_key(4, 17, h.src[1], h.dst[1], 0, 0)[0]


def test_router_memory_expires_in_packet_time() -> None:
    frames = _differing_case(16)
    h = parse(*frames)
    full, bare = h.flow_hash[0] % 16, h.flow_hash[1] % 16
    router = FlowRouter()
    assert route(router, frames[:1], [T0], 16) == [full]
    assert route(router, frames[1:2], [T0 + FRAG_TTL_NS - 1], 16) == [full]
    assert route(router, frames[2:3], [T0 + FRAG_TTL_NS + 1], 16) == [bare]
    # a newer first fragment pushes the old entry out once the TTL has passed
    route(router, [tcp4(), *fragments4(sport=9, ip_id=1)[:1]], [T0 + 2 * FRAG_TTL_NS] * 2, 16)
    assert len(router) == 1
    assert route(router, frames[2:3], [T0 + 10], 16) == [bare]


def test_router_memory_is_bounded_oldest_evicted() -> None:
    router = FlowRouter(max_entries=4)
    firsts = [
        fragments4(sport=1000 + i, ip_id=i, payload=bytes(100), frag_size=32) for i in range(10)
    ]
    for i, frames in enumerate(firsts):
        route(router, frames[:1], [T0 + i], 7)
    assert len(router) == 4
    later = [frames[1] for frames in firsts]
    h = parse(*later)
    out = route(router, later, [T0 + 20] * 10, 7)
    first_partitions = [parse(f[0]).flow_hash[0] % 7 for f in firsts]
    assert out[6:] == first_partitions[6:]  # remembered
    assert out[:6] == [x % 7 for x in h.flow_hash[:6]]  # evicted: own key


def test_router_is_deterministic() -> None:
    frames = [
        f for i in range(20) for f in fragments4(sport=i, ip_id=i, payload=bytes(64), frag_size=16)
    ]
    frames += [tcp4(sport=i) for i in range(20)]
    ts = [T0 + i for i in range(len(frames))]
    assert route(FlowRouter(), frames, ts, 5) == route(FlowRouter(), frames, ts, 5)
