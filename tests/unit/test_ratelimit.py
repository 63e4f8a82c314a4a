"""Ratelimit core: token buckets, keys, marking, fragments, state writes, config errors.

Crafted (ts_ns, frame, orig_len) packets go through one RateLimit, driven by a
FunctionEngine, whose in-memory state persists across batches; verdicts are
(port, reason). Random traffic and a real capture are checked against
tests/ratelimit_model.py, an exact Fraction-based model written without the
core's code.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dpkt
import pytest
from pydantic import ValidationError

from snf.core.engine import FunctionEngine
from snf.core.tables import BatchState
from snf.functions.ratelimit import RateLimit, RateLimitConfig, address_hash
from snf.functions.ratelimit.rate import Rate, parse_rate
from snf.packet.batch import PacketBatch
from snf.packet.flowkey import flow_hash
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.parse import parse_packet_batch
from tests.harness import JsonStore, handle
from tests.packets import (
    arp,
    ether,
    fragments4,
    icmp4_echo,
    ip4,
    tcp4,
    tcp6,
    truncated_tcp4,
    udp4,
    udp6,
)
from tests.ratelimit_model import model_outcomes

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
PASS = ("pass", "")
EXCEED = ("exceed", "rate")
MARKED = ("pass", "marked")
A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"

Packet = tuple[int, bytes, int]  # ts_ns, frame, orig_len


def at(seconds: float) -> int:
    return T0 + round(seconds * NS)


def pkts(*items: tuple[float, bytes] | tuple[float, bytes, int]) -> list[Packet]:
    """(seconds, frame[, orig_len]) -> (ts_ns, frame, orig_len); orig_len defaults to len."""
    return [(at(it[0]), it[1], it[2] if len(it) > 2 else len(it[1])) for it in items]


def with_tos(frame: bytes, tos: int) -> bytes:
    """An untagged Ethernet IPv4/IPv6 frame with its TOS / traffic class set (IPv4
    header checksum recomputed)."""
    out = bytearray(frame)
    if out[12:14] == b"\x08\x00":
        out[15] = tos
        out[24:26] = b"\x00\x00"
        ihl = (out[14] & 0x0F) * 4
        out[24:26] = struct.pack("!H", dpkt.in_cksum(bytes(out[14 : 14 + ihl])))
    else:
        (word,) = struct.unpack_from("!I", out, 14)
        struct.pack_into("!I", out, 14, (word & ~(0xFF << 20)) | (tos << 20) | 0x12345)
    return bytes(out)


# -- harness ----------------------------------------------------------------


class Run:
    """One RateLimit in a FunctionEngine, with state that persists across batches."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.fn = RateLimit(RateLimitConfig.model_validate(config))
        self.engine = FunctionEngine(self.fn)
        self.stores = {name: JsonStore() for name in RateLimit.tables}
        self.writes: list[int] = []  # store writes per batch
        self.frames: list[bytes] = []  # every packet as it left, in order
        self.seq = 0

    def batch(self, packets: Sequence[Packet]) -> tuple[PacketBatch, Any]:
        rows = []
        for ts, frame, orig_len in packets:
            rows.append((ts, orig_len, frame, 1, self.seq, ""))
            self.seq += 1
        batch = PacketBatch.from_rows(LINKTYPE_ETHERNET, rows)
        return batch, parse_packet_batch(batch)

    def __call__(
        self, packets: Sequence[Packet], sizes: Sequence[int] = ()
    ) -> list[tuple[str, str]]:
        """Run `packets` in batches of the given sizes (the rest as one batch)."""
        out: list[tuple[str, str]] = []
        bounds, start = [], 0
        for size in sizes:
            bounds.append((start, min(start + size, len(packets))))
            start += size
        bounds.append((start, len(packets)))
        for lo, hi in bounds:
            if lo >= hi:
                continue
            batch, _ = self.batch(packets[lo:hi])
            done = handle(self.engine, batch, self.stores)
            self.writes.append(done.writes)
            self.frames.extend(done.frames)
            out.extend(zip(done.ports, done.reasons, strict=True))
        return out

    @property
    def counters(self) -> dict[str, int]:
        return self.engine.counters

    @property
    def bucket(self) -> dict[bytes, Any]:
        return self.stores["bucket"].data

    @property
    def frag(self) -> dict[bytes, Any]:
        return self.stores["frag"].data


# -- contract and config --------------------------------------------------------


def test_class_contract() -> None:
    assert RateLimit.kind == "ratelimit"
    assert RateLimit.ports == ("pass", "exceed", "drop")
    assert RateLimit.tables == ("bucket", "frag")
    assert RateLimit.Config is RateLimitConfig
    flow = RateLimit(RateLimitConfig(rate="10pps", burst=1))
    assert (flow.key, flow.key_flow_consistent) == ("flow", True)
    for key in ("src", "dst"):
        fn = RateLimit(RateLimitConfig(key=key, rate="10pps", burst=1))
        assert (fn.key, fn.key_flow_consistent) == ("custom", False)
    assert RateLimit.key == "flow"  # the class default is untouched


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("1000pps", Rate(1000, False)),
        ("8bps", Rate(8, True)),
        ("64kbps", Rate(64_000, True)),
        ("64Kbps", Rate(64_000, True)),
        ("10Mbps", Rate(10_000_000, True)),
        ("1.5Gbps", Rate(1_500_000_000, True)),
        (" 2.5 Mbps ", Rate(2_500_000, True)),
        ("0.5kbps", Rate(500, True)),
    ],
)
def test_rate_forms(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate
    assert RateLimitConfig(rate=text, burst=1).rate == text


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("10 furlongs", ["'10 furlongs'", "pps, bps, kbps, Kbps, Mbps or Gbps"]),
        ("1000", ["'1000'", "'1000pps' or '10Mbps'"]),
        ("10mbps", ["'10mbps'", "Mbps"]),
        ("10MBps", ["'10MBps'"]),
        ("-5pps", ["'-5pps'"]),
        ("1e3pps", ["'1e3pps'"]),
        ("pps", ["'pps'"]),
        (1000, ["1000", "'1000pps'"]),
        ("0pps", ["'0pps'", "more than 0"]),
        ("1.5pps", ["'1.5pps'", "1.5 packets per second", "whole number of packets"]),
        ("0.5bps", ["'0.5bps'", "whole number of bits"]),
    ],
)
def test_bad_rate_names_value_and_forms(value: Any, words: list[str]) -> None:
    with pytest.raises(ValidationError) as err:
        RateLimitConfig.model_validate({"rate": value, "burst": 5})
    (error,) = err.value.errors()
    assert error["loc"] == ("rate",)
    for word in words:
        assert word in error["msg"]


@pytest.mark.parametrize(
    ("config", "loc", "words"),
    [
        ({"action": "drop", "dscp": 10}, ("dscp",), ["dscp 10", "action mark"]),
        ({"dscp": 10}, ("dscp",), ["dscp 10", "action drop"]),
        ({"action": "mark"}, ("dscp",), ["action mark needs a dscp"]),
        ({"action": "mark", "dscp": 64}, ("dscp",), ["63"]),
        ({"action": "mark", "dscp": -1}, ("dscp",), ["0"]),
        ({"action": "mark", "dscp": True}, ("dscp",), ["integer"]),
        ({"burst": 0}, ("burst",), ["greater than or equal to 1"]),
        ({"burst": 10**10}, ("burst",), ["less than or equal to"]),
        ({"burst": "5"}, ("burst",), ["integer"]),
        ({"action": "police"}, ("action",), ["'drop' or 'mark'"]),
        ({"key": "proto"}, ("key",), ["'flow', 'src' or 'dst'"]),
        ({"rate_limit": 5}, ("rate_limit",), ["Extra inputs"]),
    ],
)
def test_config_errors_name_the_field(
    config: dict[str, Any], loc: tuple[str, ...], words: list[str]
) -> None:
    with pytest.raises(ValidationError) as err:
        RateLimitConfig.model_validate({"rate": "10pps", "burst": 5, **config})
    errors = err.value.errors()
    assert [e["loc"] for e in errors] == [loc]
    for word in words:
        assert word in errors[0]["msg"]


def test_required_fields() -> None:
    with pytest.raises(ValidationError) as err:
        RateLimitConfig.model_validate({})
    assert {e["loc"] for e in err.value.errors()} == {("rate",), ("burst",)}


def test_defaults() -> None:
    config = RateLimitConfig(rate="10pps", burst=3)
    assert (config.key, config.action, config.dscp) == ("flow", "drop", None)
    assert RateLimitConfig(rate="10pps", burst=3, action="mark", dscp=0).dscp == 0


# -- the bucket -------------------------------------------------------------------


def test_bucket_starts_full_pps() -> None:
    run = Run({"rate": "1pps", "burst": 3})
    frame = udp4(A, B, 5000, 53)
    assert run(pkts(*[(0, frame)] * 5)) == [PASS] * 3 + [EXCEED] * 2


def test_bucket_starts_full_bytes() -> None:
    run = Run({"rate": "8kbps", "burst": 1000})  # 1000 bytes per second
    frame = udp4(A, B, 5000, 53)
    # Bit rates count orig_len (the length on the wire), not the captured bytes.
    assert run(pkts((0, frame, 400), (0, frame, 400), (0, frame, 400), (0, frame, 200))) == [
        PASS,
        PASS,
        EXCEED,
        PASS,
    ]
    # 1000 bytes per second: 100 bytes back after 0.1 s, 50 more by 0.15 s.
    assert run(pkts((0.1, frame, 100), (0.15, frame, 100), (0.2, frame, 100))) == [
        PASS,
        EXCEED,
        PASS,
    ]


def test_refill_in_packet_time() -> None:
    run = Run({"rate": "10pps", "burst": 1})
    f = tcp4(A, B, 1000, 80)
    verdicts = run(pkts((0, f), (0.05, f), (0.1, f), (0.1, f), (0.3, f), (10, f), (10, f)))
    # The bucket caps at `burst`: a long pause banks one packet, not a hundred.
    assert verdicts == [PASS, EXCEED, PASS, EXCEED, PASS, PASS, EXCEED]


def test_exact_integer_refill() -> None:
    run = Run({"rate": "3pps", "burst": 1})
    f = udp4(A, B, 5000, 53)
    # 3 pps refills one packet after 333,333,333.33 ns: 333,333,333 ns is not enough.
    assert run([(T0, f, 60), (T0 + 333_333_333, f, 60), (T0 + 333_333_334, f, 60)]) == [
        PASS,
        EXCEED,
        PASS,
    ]


@pytest.mark.parametrize(
    ("rate", "burst", "interval_ns", "orig_len", "per_tick"),
    [
        ("625pps", 1, 1_600_000, 60, 1),
        ("625pps", 3, 4_800_000, 60, 3),  # 0.0048 s * 625 is 2.9999999999999996 in floats
        ("3000pps", 1, 333_334, 60, 1),  # a hair slower than the rate
        ("1Gbps", 1500, 12_000, 1500, 1),
        ("3Gbps", 3000, 8_000, 1500, 2),
        ("7Mbps", 875, 1_000_000, 875, 1),
    ],
)
def test_a_train_at_the_rate_always_conforms(
    rate: str, burst: int, interval_ns: int, orig_len: int, per_tick: int
) -> None:
    """Ticks spaced exactly one burst of tokens apart, `per_tick` packets each, all
    conform over thousands of refills at epoch timestamps (no float drift); a tick 1 ns
    sooner does not fully conform."""
    f = udp4(A, B, 5000, 53)
    ticks = [T0 + 7 + i * interval_ns for i in range(1000)]
    train = [(ts, f, orig_len) for ts in ticks for _ in range(per_tick)]
    run = Run({"rate": rate, "burst": burst})
    assert run(train, [1000, 999]) == [PASS] * len(train)
    early = [(ticks[0], f, orig_len)] * per_tick + [(ticks[1] - 1, f, orig_len)] * per_tick
    verdicts = Run({"rate": rate, "burst": burst})(early)
    assert verdicts == [PASS] * (2 * per_tick - 1) + [EXCEED]


def test_packet_longer_than_burst_never_conforms() -> None:
    run = Run({"rate": "1Gbps", "burst": 1500})
    f = udp4(A, B, 5000, 53)
    assert run(pkts((0, f, 1501), (100, f, 1501), (100, f, 1500))) == [EXCEED, EXCEED, PASS]


def test_exceeding_packets_take_no_tokens() -> None:
    run = Run({"rate": "8kbps", "burst": 1000})
    f = udp4(A, B, 5000, 53)
    # 900 pass; 200 does not fit in 100; 100 still does.
    assert run(pkts((0, f, 900), (0, f, 200), (0, f, 100))) == [PASS, EXCEED, PASS]


def test_backwards_timestamps_refill_nothing() -> None:
    run = Run({"rate": "1pps", "burst": 1})
    f = udp4(A, B, 5000, 53)
    assert run(pkts((10, f))) == [PASS]
    key = next(iter(run.bucket))
    assert run.bucket[key] == [0, at(10)]
    # Back to 5 s: no refill, and the bucket's time stays at 10 s (no write at all).
    assert run(pkts((5, f))) == [EXCEED]
    assert run.writes[-1] == 0
    assert run.bucket[key] == [0, at(10)]
    # 10.5 s refills half a packet counted from 10 s, not from 5 s.
    assert run(pkts((10.5, f))) == [EXCEED]
    assert run.bucket[key] == [NS // 2, at(10.5)]
    assert run(pkts((11, f))) == [PASS]


def test_full_bucket_is_not_stored() -> None:
    run = Run({"rate": "8kbps", "burst": 100})
    f = udp4(A, B, 5000, 53)
    assert run(pkts((0, f, 500))) == [EXCEED]  # absent = full; still full: nothing written
    assert run.bucket == {} and run.writes == [0]
    assert run(pkts((0, f, 50))) == [PASS]
    assert list(run.bucket.values()) == [[50 * 8 * NS, at(0)]]
    # Refilled to full by 1 s, then an oversized packet leaves it full: the entry goes.
    assert run(pkts((1, f, 500))) == [EXCEED]
    assert run.bucket == {} and run.stores["bucket"].deletes == 1


# -- keys ---------------------------------------------------------------------------


def test_key_flow_shares_both_directions() -> None:
    run = Run({"rate": "1pps", "burst": 1})
    out, back = tcp4(A, B, 1000, 80, "S"), tcp4(B, A, 80, 1000, "SA")
    other = tcp4(A, B, 1001, 80, "S")
    assert run(pkts((0, out), (0, back), (0, other), (1, back), (1, out))) == [
        PASS,
        EXCEED,
        PASS,
        PASS,
        EXCEED,
    ]
    assert len(run.bucket) == 2


def test_key_src() -> None:
    run = Run({"key": "src", "rate": "1pps", "burst": 1})
    verdicts = run(
        pkts((0, tcp4(A, B, 1000, 80)), (0, udp4(A, C, 5000, 53)), (0, tcp4(B, A, 80, 1000)))
    )
    assert verdicts == [PASS, EXCEED, PASS]  # A's packets share; B's reply has its own
    assert set(run.bucket) == {bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])}


def test_key_dst() -> None:
    run = Run({"key": "dst", "rate": "1pps", "burst": 1})
    verdicts = run(
        pkts((0, tcp4(A, B, 1000, 80)), (0, udp4(C, B, 5000, 53)), (0, tcp4(B, A, 80, 1000)))
    )
    assert verdicts == [PASS, EXCEED, PASS]
    assert set(run.bucket) == {bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])}


def test_key_src_ipv6() -> None:
    run = Run({"key": "src", "rate": "1pps", "burst": 1})
    verdicts = run(pkts((0, tcp6("2001:db8::1")), (0, udp6("2001:db8::1")), (0, tcp6("::1"))))
    assert verdicts == [PASS, EXCEED, PASS]


def test_key_hashes() -> None:
    frames = [
        tcp4(A, B, 1000, 80),
        tcp6("2001:db8::1", "2001:db8::2"),
        arp(),
        truncated_tcp4(),
        *fragments4(A, B, 5000, 53, bytes(40), frag_size=16),
    ]
    for key in ("src", "dst"):
        run = Run({"key": key, "rate": "1pps", "burst": 1})
        batch, headers = run.batch(pkts(*[(0, f) for f in frames]))
        hashes = run.fn.key_hashes(batch, headers)
        addrs = headers.src if key == "src" else headers.dst
        assert hashes[2] is None and hashes[3] is None  # non-IP, malformed
        for i in (0, 1, 4, 5, 6):  # IP packets, later fragments included
            assert hashes[i] == address_hash(addrs[i]) == flow_hash(b"ADDR" + addrs[i])
        assert hashes[0] == hashes[4] == hashes[5] == hashes[6]  # all A -> B
    run = Run({"rate": "1pps", "burst": 1})
    batch, headers = run.batch(pkts(*[(0, f) for f in frames]))
    assert list(run.fn.key_hashes(batch, headers)) == headers.flow_hash


# -- marking --------------------------------------------------------------------------


def test_mark_ipv4_keeps_ecn_and_checksums() -> None:
    run = Run({"key": "src", "rate": "1pps", "burst": 1, "action": "mark", "dscp": 46})
    tcp = with_tos(tcp4(A, B, 1000, 80, "PA", b"data"), 0x03)  # DSCP 0, ECN CE
    udp = with_tos(udp4(A, B, 1000, 80, b"x" * 33), 0x29)  # DSCP 10, ECN 01 (odd length)
    assert run(pkts((0, tcp), (0, tcp), (0, udp))) == [PASS, MARKED, MARKED]
    assert run.frames[0] == tcp  # conforming: untouched
    for before, after, ecn in ((tcp, run.frames[1], 3), (udp, run.frames[2], 1)):
        old, new = dpkt.ethernet.Ethernet(before).data, dpkt.ethernet.Ethernet(after).data
        assert new.tos >> 2 == 46 and new.tos & 3 == ecn
        assert dpkt.in_cksum(after[14:34]) == 0  # IPv4 header checksum still verifies
        assert bytes(new.data) == bytes(old.data)  # L4 bytes, checksum included, unchanged
        diff = [i for i in range(len(before)) if before[i] != after[i]]
        assert set(diff) <= {15, 24, 25}


def test_mark_ipv6_keeps_ecn_and_flow_label() -> None:
    run = Run({"rate": "1pps", "burst": 1, "action": "mark", "dscp": 8})
    frame = with_tos(tcp6("2001:db8::1", "2001:db8::2", 1000, 80), 0xB9)  # DSCP 46, ECN 01
    assert run(pkts((0, frame), (0, frame))) == [PASS, MARKED]
    old, new = dpkt.ethernet.Ethernet(frame).data, dpkt.ethernet.Ethernet(run.frames[1]).data
    assert (new.fc >> 2, new.fc & 3, new.flow) == (8, 1, old.flow)
    assert bytes(new.data) == bytes(old.data)
    assert [i for i in range(len(frame)) if frame[i] != run.frames[1][i]] == [14, 15]


def test_mark_when_dscp_already_set_replaces_nothing() -> None:
    run = Run({"rate": "1pps", "burst": 1, "action": "mark", "dscp": 10})
    frame = with_tos(udp4(A, B, 1000, 53), 10 << 2)
    batch, headers = run.batch(pkts((0, frame), (0, frame)))
    verdicts = run.fn.process(batch, headers, BatchState(run.stores))
    assert list(zip(verdicts.ports, verdicts.reasons, strict=True)) == [PASS, MARKED]
    assert verdicts.replaced == {}


# -- non-IP, malformed, fragments ------------------------------------------------------


@pytest.mark.parametrize("key", ["flow", "src", "dst"])
def test_non_ip_passes_unpoliced_and_malformed_drops(key: str) -> None:
    run = Run({"key": key, "rate": "1pps", "burst": 1})
    verdicts = run(pkts((0, arp()), (0, arp()), (0, truncated_tcp4()), (0, arp())))
    assert verdicts == [PASS, PASS, ("drop", "malformed"), PASS]
    assert run.bucket == {} and run.frag == {}
    assert run.counters == {"in": 4, "pass": 3, "drop:malformed": 1}


def test_later_fragments_use_their_flows_bucket() -> None:
    run = Run({"rate": "1pps", "burst": 3})
    first, *later = fragments4(A, B, 5000, 53, bytes(40), ip_id=7, frag_size=16)
    assert len(later) == 2
    # All three fragments draw on the UDP flow's bucket; a 4th packet of the flow exceeds.
    assert run(pkts((0, first), (0, later[0]), (0, later[1]), (0, udp4(A, B, 5000, 53)))) == [
        PASS,
        PASS,
        PASS,
        EXCEED,
    ]
    assert len(run.bucket) == 1 and len(run.frag) == 1


def test_later_fragment_without_first_uses_its_own_key() -> None:
    run = Run({"rate": "1pps", "burst": 1})
    first, second, third = fragments4(A, B, 5000, 53, bytes(40), ip_id=7, frag_size=16)
    assert run(pkts((0, udp4(A, B, 5000, 53)), (0, second), (0, third))) == [PASS, PASS, EXCEED]
    assert len(run.bucket) == 2  # the flow's and the (udp, A, B, ports 0) bucket
    # A first fragment seen more than 30 s earlier no longer counts; its record goes.
    run = Run({"rate": "1pps", "burst": 1})
    assert run(pkts((0, first), (31, second))) == [PASS, PASS]
    assert run.frag == {} and len(run.bucket) == 2


# -- metrics, batches, state writes, robustness --------------------------------------


def test_counters() -> None:
    run = Run({"rate": "1pps", "burst": 1, "action": "mark", "dscp": 1})
    f = udp4(A, B, 5000, 53)
    run(pkts((0, f), (0, f), (0, truncated_tcp4()), (0, arp())))
    assert run.counters == {"in": 4, "pass": 2, "pass:marked": 1, "drop:malformed": 1}


def test_one_write_per_key_per_batch() -> None:
    run = Run({"rate": "1Mbps", "burst": 100_000})
    a, b = udp4(A, B, 5000, 53), udp4(A, C, 5000, 53)
    assert run(pkts(*[(i / 1000, a if i % 2 else b) for i in range(100)])) == [PASS] * 100
    assert run.writes == [2]
    assert run.stores["bucket"].sets == 2


def test_no_write_when_nothing_changed() -> None:
    run = Run({"rate": "1pps", "burst": 1})
    f = udp4(A, B, 5000, 53)
    run(pkts((5, f)))
    assert run.writes == [1]
    # Same time, empty bucket: every packet exceeds and the bucket is unchanged.
    assert run(pkts((5, f), (5, f), (4, f))) == [EXCEED] * 3
    assert run.writes == [1, 0]


def _random_frame(rng: random.Random) -> bytes:
    hosts = [A, B, C, "192.0.2.9"]
    src, dst = rng.sample(hosts, 2)
    sport, dport = rng.choice([1000, 1001, 2000]), rng.choice([53, 80])
    payload = bytes(rng.randrange(0, 200))
    pick = rng.random()
    if pick < 0.35:
        frame = tcp4(src, dst, sport, dport, "PA", payload)
    elif pick < 0.55:
        frame = udp4(src, dst, sport, dport, payload)
    elif pick < 0.65:
        frame = icmp4_echo(src, dst, ident=rng.choice([1, 2]), reply=rng.random() < 0.5)
    elif pick < 0.8:
        v6 = ["2001:db8::1", "2001:db8::2", "fd00::7"]
        s6, d6 = rng.sample(v6, 2)
        make = tcp6 if rng.random() < 0.5 else udp6
        frame = make(s6, d6, sport, dport, payload=payload)
    elif pick < 0.85:
        return arp()
    elif pick < 0.88:
        return truncated_tcp4(src, dst)
    else:
        frame = ether(ip4(src, dst, 47, payload))  # GRE: no ports
    return with_tos(frame, rng.randrange(256)) if rng.random() < 0.5 else frame


def random_traffic(rng: random.Random, n: int) -> list[Packet]:
    """Packets over a handful of flows and hosts, mostly forward in time, with some
    steps back, IPv4 fragment trains and orig_len above the captured length."""
    out: list[Packet] = []
    t = T0
    while len(out) < n:
        t += rng.choice([0, rng.randrange(2_000_000), rng.randrange(300_000_000)])
        ts = t - rng.randrange(NS) if rng.random() < 0.03 else t
        if rng.random() < 0.05:
            src, dst = rng.sample([A, B, C], 2)
            frames = fragments4(src, dst, 1000, 53, bytes(60), ip_id=rng.randrange(4), frag_size=24)
            if rng.random() < 0.3:
                rng.shuffle(frames)
            out.extend((ts + j, f, len(f)) for j, f in enumerate(frames))
            continue
        frame = _random_frame(rng)
        extra = rng.randrange(1, 1500) if rng.random() < 0.2 else 0
        out.append((ts, frame, len(frame) + extra))
    return out


def random_sizes(rng: random.Random, n: int) -> list[int]:
    sizes = []
    while sum(sizes) < n:
        sizes.append(rng.choice([1, 2, 7, 30, 100]))
    return sizes


CONFIGS = [
    {"rate": "4pps", "burst": 2},
    {"rate": "3pps", "burst": 1, "key": "src"},
    {"rate": "8kbps", "burst": 600},
    {"rate": "100kbps", "burst": 1500, "key": "dst"},
    {"rate": "1Mbps", "burst": 600, "action": "mark", "dscp": 46},
    {"rate": "5pps", "burst": 2, "key": "src", "action": "mark", "dscp": 10},
    {"rate": "16Kbps", "burst": 1600, "key": "dst", "action": "mark", "dscp": 0},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("seed", [1, 2])
def test_matches_model_on_random_traffic(config: dict[str, Any], seed: int) -> None:
    rng = random.Random(seed)
    packets = random_traffic(rng, 500)
    expected = model_outcomes([(ts, n, f) for ts, f, n in packets], config)
    whole = Run(config)
    verdicts = whole(packets)
    assert [(p, r) for p, r, _ in expected] == verdicts
    assert [f for _, _, f in expected] == whole.frames
    assert {p for p, _ in verdicts} >= {"pass", "drop"}
    assert len({r for _, r in verdicts}) >= 3  # some exceed / are marked
    # Batch boundaries change nothing: verdicts, rewrites and the state.
    split = Run(config)
    assert split(packets, random_sizes(rng, len(packets))) == verdicts
    assert split.frames == whole.frames
    assert split.bucket == whole.bucket and split.frag == whole.frag


def test_one_by_one_equals_one_batch() -> None:
    config = {"rate": "200kbps", "burst": 1500, "action": "mark", "dscp": 12}
    packets = random_traffic(random.Random(9), 300)
    whole, single = Run(config), Run(config)
    assert whole(packets) == single(packets, [1] * len(packets))
    assert whole.frames == single.frames and whole.bucket == single.bucket


def test_inconsistent_headers_give_malformed_not_an_exception() -> None:
    run = Run({"rate": "1pps", "burst": 1, "action": "mark", "dscp": 5})
    f = udp4(A, B, 5000, 53)
    batch, headers = run.batch(pkts((0, f), (0, f), (0, f)))
    headers.l3_off[1] = 10_000  # the mark would read past the packet
    verdicts = run.fn.process(batch, headers, BatchState(run.stores))
    assert list(zip(verdicts.ports, verdicts.reasons, strict=True)) == [
        PASS,
        ("drop", "malformed"),
        MARKED,
    ]
    assert list(verdicts.replaced) == [2]


def test_never_raises_on_random_bytes() -> None:
    rng = random.Random(5)
    run = Run({"rate": "1kbps", "burst": 100, "action": "mark", "dscp": 5})
    frames = [rng.randbytes(rng.randrange(0, 80)) for _ in range(300)]
    base = tcp4(A, B, 1, 2)
    frames += [base[:n] for n in range(len(base))]
    out = run(pkts(*[(0, f) for f in frames]))
    assert len(out) == len(frames)


# -- real capture ---------------------------------------------------------------------


def read_pcap_orig(path: Path) -> list[Packet]:
    """(ts_ns, frame, orig_len) of a little-endian microsecond pcap."""
    data = path.read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4
    out, off = [], 24
    while off + 16 <= len(data):
        sec, usec, cap, orig = struct.unpack_from("<IIII", data, off)
        out.append((sec * NS + usec * 1000, data[off + 16 : off + 16 + cap], orig))
        off += 16 + cap
    return out


@pytest.mark.parametrize(
    "config",
    [
        {"rate": "20pps", "burst": 5},
        {"rate": "2Mbps", "burst": 20_000, "key": "src"},
        {"rate": "500kbps", "burst": 3000, "key": "dst", "action": "mark", "dscp": 10},
    ],
    ids=["flow-pps", "src-bits", "dst-mark"],
)
def test_real_capture_matches_model(traffic: Any, config: dict[str, Any]) -> None:
    packets = read_pcap_orig(traffic("zeek-http-bro.org.pcap"))
    assert len(packets) == 751
    expected = model_outcomes([(ts, n, f) for ts, f, n in packets], config)
    run = Run(config)
    verdicts = run(packets, random_sizes(random.Random(3), len(packets)))
    assert verdicts == [(p, r) for p, r, _ in expected]
    assert run.frames == [f for _, _, f in expected]
    assert 0 < sum(v == PASS for v in verdicts) < len(verdicts)


def _ipv4_header_ok(frame: bytes) -> bool:
    """False for an untagged IPv4 frame whose header checksum does not verify (some
    captures carry checksum-offloaded packets); True otherwise."""
    if frame[12:14] != b"\x08\x00" or len(frame) < 34:
        return True
    return dpkt.in_cksum(frame[14 : 14 + (frame[14] & 0x0F) * 4]) == 0


def test_every_real_capture_matches_model(traffic_dir: Path) -> None:
    """All shared captures (VLAN, IPv6, fragments, ARP, LLC, ICMP, IGMP), several keys."""
    paths = sorted(traffic_dir.glob("*.pcap"))
    assert paths
    configs = [
        {"rate": "2pps", "burst": 2},
        {"rate": "40kbps", "burst": 1600, "key": "src"},
        {"rate": "5pps", "burst": 1, "key": "dst", "action": "mark", "dscp": 63},
    ]
    for path in paths:
        packets = read_pcap_orig(path)
        for config in configs:
            expected = model_outcomes([(ts, n, f) for ts, f, n in packets], config)
            run = Run(config)
            assert run(packets, [100] * 20) == [(p, r) for p, r, _ in expected], path.name
            for (ts, before, _), after, (_, _, want) in zip(
                packets, run.frames, expected, strict=True
            ):
                if _ipv4_header_ok(before):  # the model recomputes checksums from scratch
                    assert after == want, (path.name, ts)
