"""Firewall core: rules, connection tracking, fragments, state writes, config errors.

Every test feeds crafted (ts_ns, frame) packets through one Firewall, driven
by a FunctionEngine as the shells drive it, whose in-memory state persists
across batches, and asserts (port, reason) per packet.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from snf.core.engine import FunctionEngine
from snf.core.tables import BatchState
from snf.functions.firewall import Firewall, FirewallConfig
from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.parse import parse_packet_batch
from tests.harness import JsonStore, handle
from tests.packets import (
    arp,
    ether,
    fragments4,
    fragments6,
    icmp4_echo,
    icmp4_error,
    icmp6_echo,
    ip4,
    read_pcap,
    tcp4,
    tcp6,
    truncated_tcp4,
    udp4,
)

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
PASS = ("pass", "")

# -- packet builders: tests.packets, plus the few shapes it does not name ----


def icmp4(src: str, dst: str, icmp_type: int = 8, ident: int = 7) -> bytes:
    """Echo request (8) / reply (0) with `ident`; any other type is a non-echo message."""
    if icmp_type in (0, 8):
        return icmp4_echo(src, dst, ident=ident, reply=icmp_type == 0)
    return icmp4_error(src, dst, type_=icmp_type, code=0)


def icmp6(src: str, dst: str, icmp_type: int = 128, ident: int = 7) -> bytes:
    return icmp6_echo(src, dst, ident=ident, reply=icmp_type == 129)


def proto4(src: str, dst: str, proto: int) -> bytes:
    """An IPv4 packet of a port-less protocol (e.g. 47, GRE)."""
    return ether(ip4(src, dst, proto, bytes(8)))


def udp4_fragments(src: str, dst: str, sport: int, dport: int, ip_id: int = 99) -> list[bytes]:
    """One 48-byte UDP datagram in three IPv4 fragments (first, later, last)."""
    return fragments4(src, dst, sport, dport, bytes(40), ip_id=ip_id, frag_size=16)


# -- harness ----------------------------------------------------------------


class Run:
    """One firewall in a FunctionEngine, with state that persists across batches."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.fw = Firewall(FirewallConfig.model_validate(config or {}))
        self.engine = FunctionEngine(self.fw)
        self.stores = {name: JsonStore() for name in Firewall.tables}
        self.writes: list[int] = []  # store writes per batch
        self.seq = 0

    def __call__(
        self, packets: Sequence[tuple[int, bytes]], batch_size: int = 512
    ) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for start in range(0, len(packets), batch_size):
            rows = []
            for ts, frame in packets[start : start + batch_size]:
                rows.append((ts, len(frame), frame, 1, self.seq, ""))
                self.seq += 1
            batch = PacketBatch.from_rows(LINKTYPE_ETHERNET, rows)
            done = handle(self.engine, batch, self.stores)
            self.writes.append(done.writes)
            out.extend(zip(done.ports, done.reasons, strict=True))
        return out

    @property
    def counters(self) -> dict[str, int]:
        return self.engine.counters

    def one(self, ts: int, frame: bytes) -> tuple[str, str]:
        return self([(ts, frame)])[0]

    @property
    def conn(self) -> dict[bytes, Any]:
        return self.stores["conn"].data

    @property
    def frag(self) -> dict[bytes, Any]:
        return self.stores["frag"].data


def at(seconds: float) -> int:
    return T0 + round(seconds * NS)


def allow(**fields: Any) -> dict[str, Any]:
    return {"action": "allow", **fields}


def drop(**fields: Any) -> dict[str, Any]:
    return {"action": "drop", **fields}


# -- rules --------------------------------------------------------------------


def test_class_contract() -> None:
    assert Firewall.kind == "firewall"
    assert Firewall.ports == ("pass", "drop")
    assert Firewall.key == "flow"
    assert Firewall.tables == ("conn", "frag")
    assert Firewall.Config is FirewallConfig


def test_default_drop_is_the_default() -> None:
    assert FirewallConfig().default == "drop"
    assert Run().one(at(0), tcp4("10.0.0.1", "1.1.1.1", 5000, 80)) == ("drop", "default")


def test_default_allow() -> None:
    assert Run({"default": "allow"}).one(at(0), tcp4("10.0.0.1", "1.1.1.1", 5000, 80)) == PASS


def test_first_match_wins() -> None:
    ssh = tcp4("10.0.0.1", "1.1.1.1", 5000, 22)
    web = tcp4("10.0.0.1", "1.1.1.1", 5001, 80)
    run = Run({"rules": [drop(dport=22), allow(proto="tcp")]})
    assert run([(at(0), ssh), (at(0), web)]) == [("drop", "rule:0"), PASS]
    run = Run({"rules": [allow(proto="tcp"), drop(dport=22)]})
    assert run([(at(0), ssh)]) == [PASS]
    # The reason names the index of the drop rule that matched.
    run = Run({"default": "allow", "rules": [allow(dport=80), drop(dport=81), drop(dport=22)]})
    assert run.one(at(0), ssh) == ("drop", "rule:2")


@pytest.mark.parametrize(
    ("proto", "frame", "matches"),
    [
        ("tcp", tcp4("10.0.0.1", "1.1.1.1", 5000, 80), True),
        ("tcp", udp4("10.0.0.1", "1.1.1.1", 5000, 80), False),
        ("udp", udp4("10.0.0.1", "1.1.1.1", 5000, 53), True),
        ("UDP", udp4("10.0.0.1", "1.1.1.1", 5000, 53), True),
        ("icmp", icmp4("10.0.0.1", "1.1.1.1"), True),
        ("icmp", icmp6("fd00::1", "2001:db8::1"), False),
        ("icmpv6", icmp6("fd00::1", "2001:db8::1"), True),
        (6, tcp4("10.0.0.1", "1.1.1.1", 5000, 80), True),
        (17, tcp4("10.0.0.1", "1.1.1.1", 5000, 80), False),
        (47, proto4("10.0.0.1", "1.1.1.1", 47), True),
        (0, proto4("10.0.0.1", "1.1.1.1", 47), False),
        ("any", proto4("10.0.0.1", "1.1.1.1", 47), True),
        ("any", tcp6("fd00::1", "2001:db8::1", 5000, 80), True),
        (None, icmp4("10.0.0.1", "1.1.1.1"), True),
    ],
)
def test_proto(proto: str | int | None, frame: bytes, matches: bool) -> None:
    run = Run({"rules": [allow(proto=proto)]})
    assert run.one(at(0), frame) == (PASS if matches else ("drop", "default"))


@pytest.mark.parametrize(
    ("field", "value", "matches"),
    [
        ("src", "10.0.0.0/8", True),
        ("src", "10.0.0.1", True),  # bare address: /32
        ("src", "10.0.0.2", False),
        ("src", "11.0.0.0/8", False),
        ("src", ["192.168.0.0/16", "10.0.0.0/24"], True),
        ("src", ["192.168.0.0/16", "172.16.0.0/12"], False),
        ("src", "0.0.0.0/0", True),
        ("dst", "1.1.1.0/24", True),
        ("dst", "1.1.1.1", True),
        ("dst", "10.0.0.0/8", False),  # rules see the packet's own src and dst
        ("dst", ["8.8.8.8", "1.0.0.0/8"], True),
        ("src", "::/0", False),  # a v6 CIDR never matches a v4 packet
        ("src", ["::/0", "10.0.0.0/8"], True),
    ],
)
def test_address_v4(field: str, value: Any, matches: bool) -> None:
    run = Run({"rules": [allow(**{field: value})]})
    frame = tcp4("10.0.0.1", "1.1.1.1", 5000, 80)
    assert run.one(at(0), frame) == (PASS if matches else ("drop", "default"))


@pytest.mark.parametrize(
    ("field", "value", "matches"),
    [
        ("src", "fd00::/8", True),
        ("src", "fd00::1", True),  # bare address: /128
        ("src", "fd00::2", False),
        ("dst", "2001:db8::/32", True),
        ("dst", ["2001:db9::/32", "2001:db8::1"], True),
        ("dst", "2001:db9::/32", False),
        ("src", "0.0.0.0/0", False),  # a v4 CIDR never matches a v6 packet
        ("dst", "0.0.0.0/0", False),
        ("src", "::/0", True),
    ],
)
def test_address_v6(field: str, value: Any, matches: bool) -> None:
    run = Run({"rules": [allow(**{field: value})]})
    frame = tcp6("fd00::1", "2001:db8::1", 5000, 80)
    assert run.one(at(0), frame) == (PASS if matches else ("drop", "default"))


def test_v4_rule_does_not_match_v4_mapped_looking_v6_packet() -> None:
    # ::ffff:10.0.0.1 as an int has 10.0.0.1 in its low 32 bits; versions must differ.
    run = Run({"rules": [allow(src="10.0.0.1")]})
    assert run.one(at(0), tcp6("::ffff:10.0.0.1", "::1", 1, 2)) == ("drop", "default")


@pytest.mark.parametrize(
    ("field", "value", "matches"),
    [
        ("dport", 443, True),
        ("dport", 80, False),
        ("dport", "443", True),
        ("dport", "400-500", True),
        ("dport", "443-443", True),
        ("dport", "444-500", False),
        ("dport", [22, "8000-8080"], False),
        ("dport", [22, "400-450"], True),
        ("sport", 5000, True),
        ("sport", "1024-65535", True),
        ("sport", [1, 2, 3], False),
    ],
)
def test_ports(field: str, value: Any, matches: bool) -> None:
    run = Run({"rules": [allow(**{field: value})]})
    for frame in (
        tcp4("10.0.0.1", "1.1.1.1", 5000, 443),
        udp4("10.0.0.2", "1.1.1.1", 5000, 443),
        tcp6("fd00::1", "2001:db8::1", 5000, 443),
    ):
        assert run.one(at(0), frame) == (PASS if matches else ("drop", "default"))


@pytest.mark.parametrize("field", ["sport", "dport"])
def test_port_rule_never_matches_icmp(field: str) -> None:
    # The echo identifier sits in the port slots of the headers but is no port.
    run = Run({"rules": [allow(**{field: "0-65535"})]})
    assert run.one(at(0), icmp4("10.0.0.1", "1.1.1.1", ident=7)) == ("drop", "default")
    assert run.one(at(0), icmp6("fd00::1", "2001:db8::1", ident=7)) == ("drop", "default")
    assert run.one(at(0), proto4("10.0.0.1", "1.1.1.1", 47)) == ("drop", "default")
    run = Run({"default": "allow", "rules": [drop(**{field: 7})]})
    assert run.one(at(0), icmp4("10.0.0.1", "1.1.1.1", ident=7)) == PASS


def test_all_fields_of_one_rule_must_match() -> None:
    rule = allow(proto="tcp", src="10.0.0.0/8", dst="1.1.1.1", sport="1024-65535", dport=443)
    run = Run({"rules": [rule]})
    assert run.one(at(0), tcp4("10.0.0.1", "1.1.1.1", 5000, 443)) == PASS
    for frame in (
        udp4("10.0.0.1", "1.1.1.1", 5001, 443),
        tcp4("11.0.0.1", "1.1.1.1", 5002, 443),
        tcp4("10.0.0.1", "1.1.1.2", 5003, 443),
        tcp4("10.0.0.1", "1.1.1.1", 1000, 443),
        tcp4("10.0.0.1", "1.1.1.1", 5004, 444),
    ):
        assert run.one(at(0), frame) == ("drop", "default")


# -- connection tracking ------------------------------------------------------

CLIENT, SERVER = "10.0.0.1", "93.184.216.34"


def test_reply_passes_through_conntrack() -> None:
    run = Run({"rules": [allow(proto="tcp", src="10.0.0.0/8", dport=443)]})
    verdicts = run(
        [
            (at(0), tcp4(CLIENT, SERVER, 5000, 443, "S")),
            (at(0.1), tcp4(SERVER, CLIENT, 443, 5000, "SA")),  # rules alone would drop it
            (at(0.2), tcp4(CLIENT, SERVER, 5000, 443, "A")),
            (at(0.3), tcp4(SERVER, CLIENT, 443, 5001, "S")),  # unrelated inbound SYN
            (at(0.4), tcp4(SERVER, CLIENT, 443, 5000, "PA")),
        ]
    )
    assert verdicts == [PASS, PASS, PASS, ("drop", "default"), PASS]
    assert len(run.conn) == 1


def test_loose_pickup_mid_flow() -> None:
    # The capture starts mid-connection: an ACK allowed by a rule creates the entry.
    run = Run({"rules": [allow(src=CLIENT)]})
    verdicts = run(
        [
            (at(0), tcp4(SERVER, CLIENT, 80, 6000, "A")),  # before pickup: rules drop it
            (at(1), tcp4(CLIENT, SERVER, 6000, 80, "A")),
            (at(2), tcp4(SERVER, CLIENT, 80, 6000, "PA")),
        ]
    )
    assert verdicts == [("drop", "default"), PASS, PASS]
    assert list(run.conn.values()) == [[at(2), 0]]


def test_dropped_packets_create_no_entry() -> None:
    run = Run({"rules": [drop(dport=22)]})
    verdicts = run(
        [
            (at(0), tcp4(CLIENT, SERVER, 5000, 22)),
            (at(0), udp4(CLIENT, SERVER, 5000, 53)),
            (at(0), icmp4(CLIENT, SERVER)),
            *[(at(0), f) for f in udp4_fragments(CLIENT, SERVER, 5000, 53)[1:]],
        ]
    )
    assert [port for port, _ in verdicts] == ["drop"] * 5
    assert run.conn == {}
    assert run.frag == {}
    assert run.writes == [0]


@pytest.mark.parametrize(
    ("timeout", "out", "back"),
    [
        (60, udp4(CLIENT, SERVER, 5000, 53), udp4(SERVER, CLIENT, 53, 5000)),
        (3600, tcp4(CLIENT, SERVER, 5000, 80, "A"), tcp4(SERVER, CLIENT, 80, 5000, "A")),
        # A bare SYN with no reply yet is half-open: timeouts.tcp_syn.
        (120, tcp4(CLIENT, SERVER, 5000, 80, "S"), tcp4(SERVER, CLIENT, 80, 5000, "SA")),
        (30, icmp4(CLIENT, SERVER, 8), icmp4(SERVER, CLIENT, 0)),
        (30, icmp6("fd00::1", "2001:db8::1", 128), icmp6("2001:db8::1", "fd00::1", 129)),
        (60, proto4(CLIENT, SERVER, 47), proto4(SERVER, CLIENT, 47)),
    ],
)
def test_expiry_in_packet_time_per_class(timeout: int, out: bytes, back: bytes) -> None:
    config = {"rules": [allow(src=[CLIENT, "fd00::1"])]}
    run = Run(config)
    assert run([(at(0), out), (at(timeout - 1), back)]) == [PASS, PASS]
    run = Run(config)
    assert run([(at(0), out), (at(timeout), back)]) == [PASS, PASS]  # <= timeout is live
    run = Run(config)
    assert run([(at(0), out)]) == [PASS]
    assert run([(at(timeout + 1), back)]) == [("drop", "default")]
    assert run.conn == {}  # the stale entry was deleted, nothing new created


def test_refresh_extends_lifetime() -> None:
    run = Run({"rules": [allow(src=CLIENT)]})
    out, back = udp4(CLIENT, SERVER, 5000, 53), udp4(SERVER, CLIENT, 53, 5000)
    assert run([(at(0), out), (at(50), back), (at(100), back), (at(161), back)]) == [
        PASS,
        PASS,
        PASS,
        ("drop", "default"),
    ]


def test_packet_time_stepping_back_does_not_shorten_lifetime() -> None:
    run = Run({"rules": [allow(src=CLIENT)]})
    out, back = udp4(CLIENT, SERVER, 5000, 53), udp4(SERVER, CLIENT, 53, 5000)
    assert run([(at(50), out), (at(10), back), (at(109), back)]) == [PASS, PASS, PASS]
    assert list(run.conn.values()) == [[at(109), 0]]


def test_configured_timeouts() -> None:
    run = Run({"rules": [allow(src=CLIENT)], "timeouts": {"udp": 5}})
    out, back = udp4(CLIENT, SERVER, 5000, 53), udp4(SERVER, CLIENT, 53, 5000)
    assert run([(at(0), out), (at(4.5), back), (at(10), back)]) == [
        PASS,
        PASS,
        ("drop", "default"),
    ]


def _tcp_session(run: Run) -> None:
    assert run(
        [
            (at(0), tcp4(CLIENT, SERVER, 5000, 80, "S")),
            (at(0), tcp4(SERVER, CLIENT, 80, 5000, "SA")),
            (at(1), tcp4(CLIENT, SERVER, 5000, 80, "FA")),
        ]
    ) == [PASS, PASS, PASS]


def test_tcp_closing_after_fin_both_ways() -> None:
    run = Run({"rules": [allow(src=CLIENT)]})
    _tcp_session(run)
    # One FIN only: still the long timeout.
    assert run.one(at(100), tcp4(SERVER, CLIENT, 80, 5000, "A")) == PASS
    assert run.one(at(101), tcp4(SERVER, CLIENT, 80, 5000, "FA")) == PASS
    assert list(run.conn.values()) == [[at(101), 3]]
    assert run.one(at(110), tcp4(SERVER, CLIENT, 80, 5000, "A")) == PASS  # 9 s <= 10 s
    assert run.one(at(121), tcp4(SERVER, CLIENT, 80, 5000, "A")) == ("drop", "default")
    assert run.conn == {}


def test_tcp_one_fin_keeps_long_timeout() -> None:
    run = Run({"rules": [allow(src=CLIENT)]})
    _tcp_session(run)
    assert run.one(at(1000), tcp4(SERVER, CLIENT, 80, 5000, "A")) == PASS


def test_new_syn_on_closing_connection_is_decided_by_rules() -> None:
    run = Run({"rules": [allow(src=CLIENT)]})
    _tcp_session(run)
    assert run.one(at(2), tcp4(SERVER, CLIENT, 80, 5000, "FA")) == PASS
    # A server-side SYN reusing the ports is a new connection; the rules drop it
    # and the closing entry stays.
    assert run.one(at(3), tcp4(SERVER, CLIENT, 80, 5000, "S")) == ("drop", "default")
    assert list(run.conn.values()) == [[at(2), 3]]
    # The client reopening is allowed and gets a fresh entry, half-open (state bit
    # 4 << direction) until the server answers.
    assert run.one(at(4), tcp4(CLIENT, SERVER, 5000, 80, "S")) == PASS
    assert list(run.conn.values()) == [[at(4), 4]]
    assert run.one(at(100), tcp4(SERVER, CLIENT, 80, 5000, "SA")) == PASS


def test_rst_removes_entry() -> None:
    run = Run({"rules": [allow(src=CLIENT)]})
    _tcp_session(run)
    assert run.one(at(2), tcp4(SERVER, CLIENT, 80, 5000, "R")) == PASS  # via the entry
    assert run.conn == {}
    assert run.one(at(3), tcp4(SERVER, CLIENT, 80, 5000, "A")) == ("drop", "default")


def test_rst_allowed_by_rules_creates_nothing() -> None:
    run = Run({"rules": [allow(src=CLIENT)]})
    assert run.one(at(0), tcp4(CLIENT, SERVER, 5000, 80, "R")) == PASS
    assert run.conn == {}
    assert run.one(at(1), tcp4(SERVER, CLIENT, 80, 5000, "RA")) == ("drop", "default")


def test_rst_within_one_batch() -> None:
    run = Run({"rules": [allow(src=CLIENT)]})
    verdicts = run(
        [
            (at(0), tcp4(CLIENT, SERVER, 5000, 80, "S")),
            (at(0), tcp4(SERVER, CLIENT, 80, 5000, "RA")),
            (at(1), tcp4(SERVER, CLIENT, 80, 5000, "A")),
        ]
    )
    assert verdicts == [PASS, PASS, ("drop", "default")]
    assert run.conn == {}
    assert run.writes == [1]  # created and deleted within the batch: one tombstone


def test_icmp_echo_tracked_by_identifier() -> None:
    run = Run({"rules": [allow(proto="icmp", src=CLIENT)]})
    verdicts = run(
        [
            (at(0), icmp4(CLIENT, SERVER, 8, ident=7)),
            (at(1), icmp4(SERVER, CLIENT, 0, ident=7)),
            (at(1), icmp4(SERVER, CLIENT, 0, ident=8)),
        ]
    )
    assert verdicts == [PASS, PASS, ("drop", "default")]


def test_icmp_non_echo_tracked_by_address_pair() -> None:
    run = Run({"rules": [allow(proto="icmp", src=CLIENT)]})
    verdicts = run(
        [
            (at(0), icmp4(CLIENT, SERVER, 13)),  # timestamp request
            (at(1), icmp4(SERVER, CLIENT, 14)),  # timestamp reply: same address pair
            (at(1), icmp4(SERVER, CLIENT, 3)),  # any non-echo type shares that key
            (at(1), icmp4("93.184.216.35", CLIENT, 14)),  # another peer
        ]
    )
    assert verdicts == [PASS, PASS, PASS, ("drop", "default")]


# -- fragments ----------------------------------------------------------------


def test_later_fragments_inherit_pass() -> None:
    run = Run({"rules": [allow(proto="udp", dport=53)]})
    frames = udp4_fragments(CLIENT, SERVER, 5000, 53)
    assert len(frames) >= 3
    assert run([(at(0), f) for f in frames]) == [PASS] * len(frames)
    # Only the first fragment (it has ports) creates a connection entry.
    assert len(run.conn) == 1
    assert len(run.frag) == 1


def test_later_fragments_inherit_drop_reason() -> None:
    run = Run({"default": "allow", "rules": [allow(dport=80), drop(proto="udp", dport=53)]})
    frames = udp4_fragments(CLIENT, SERVER, 5000, 53)
    assert run([(at(0), f) for f in frames]) == [("drop", "rule:1")] * len(frames)
    assert run.conn == {}


def test_later_fragment_without_first_is_dropped() -> None:
    run = Run({"default": "allow"})
    first, *later = udp4_fragments(CLIENT, SERVER, 5000, 53)
    # Out of order: the later fragments come before the first one.
    verdicts = run([(at(0), f) for f in [*later, first]])
    assert verdicts == [("drop", "fragment")] * len(later) + [PASS]


def test_later_fragment_after_fragment_timeout() -> None:
    run = Run({"default": "allow", "timeouts": {"fragment": 5}})
    first, second, third = udp4_fragments(CLIENT, SERVER, 5000, 53)
    assert run([(at(0), first), (at(5), second)]) == [PASS, PASS]
    assert run([(at(6), third)]) == [("drop", "fragment")]
    assert run.frag == {}  # the expired record was removed when found


def test_ipv6_fragments() -> None:
    run = Run({"rules": [allow(src="2001:db8::/32", dport=53)]})
    frames = fragments6("2001:db8::1", "2001:db8::2", 5000, 53, bytes(100), frag_size=32)
    assert len(frames) >= 3
    assert run([(at(0), f) for f in frames]) == [PASS] * len(frames)
    other = fragments6("2001:db8::1", "2001:db8::2", 5000, 54, bytes(100), ident=5, frag_size=32)
    assert run([(at(0), f) for f in other]) == [("drop", "default")] * len(other)
    assert run([(at(0), f) for f in other[1:]]) == [("drop", "default")] * (len(other) - 1)
    lone = fragments6("2001:db8::1", "2001:db8::2", 5000, 53, bytes(100), ident=6, frag_size=32)
    assert run([(at(0), lone[1])]) == [("drop", "fragment")]


def test_fragments_of_different_datagrams_are_apart() -> None:
    run = Run({"rules": [allow(dport=53)]})
    a = udp4_fragments(CLIENT, SERVER, 5000, 53, ip_id=1)
    b = udp4_fragments(CLIENT, SERVER, 5000, 54, ip_id=2)
    assert run([(at(0), a[0]), (at(0), b[0]), (at(0), a[1]), (at(0), b[1])]) == [
        PASS,
        ("drop", "default"),
        PASS,
        ("drop", "default"),
    ]


def test_later_fragments_do_not_refresh_conntrack() -> None:
    run = Run({"rules": [allow(src=CLIENT)], "timeouts": {"fragment": 30}})
    first, *later = udp4_fragments(CLIENT, SERVER, 5000, 53)
    run([(at(0), first)])
    before = dict(run.conn)
    assert run([(at(25), f) for f in later]) == [PASS] * len(later)
    assert run.conn == before


# -- non-IP and malformed -----------------------------------------------------


def test_non_ip_allowed_by_default() -> None:
    run = Run()
    assert run.one(at(0), arp()) == PASS
    assert run.conn == {} and run.frag == {}


def test_non_ip_drop() -> None:
    run = Run({"non_ip": "drop", "default": "allow"})
    assert run.one(at(0), arp()) == ("drop", "non_ip")
    assert run.counters["drop:non_ip"] == 1


def test_malformed_dropped_and_counted() -> None:
    run = Run({"default": "allow"})
    verdicts = run(
        [
            (at(0), truncated_tcp4(CLIENT, SERVER)),
            (at(0), b"\x00" * 13),  # shorter than an Ethernet header
            (at(0), tcp4(CLIENT, SERVER, 5000, 80)[:30]),  # cut inside the IPv4 header
        ]
    )
    assert verdicts == [("drop", "malformed")] * 3
    assert run.counters["drop:malformed"] == 3
    assert run.conn == {} and run.frag == {}


def test_counters() -> None:
    run = Run({"rules": [drop(dport=22), allow(proto="tcp")], "non_ip": "drop"})
    run(
        [
            (at(0), tcp4(CLIENT, SERVER, 5000, 80)),
            (at(0), tcp4(CLIENT, SERVER, 5000, 22)),
            (at(0), udp4(CLIENT, SERVER, 5000, 53)),
            (at(0), arp()),
        ]
    )
    run([(at(1), tcp4(SERVER, CLIENT, 80, 5000, "SA"))])
    assert run.counters == {
        "in": 5,
        "pass": 2,
        "drop:rule:0": 1,
        "drop:default": 1,
        "drop:non_ip": 1,
    }


def test_never_raises_on_random_bytes() -> None:
    rnd = random.Random(7)
    good = [
        tcp4(CLIENT, SERVER, 5000, 80),
        tcp6("fd00::1", "2001:db8::1", 5000, 80),
        icmp6("fd00::1", "2001:db8::1"),
        *udp4_fragments(CLIENT, SERVER, 5000, 53),
    ]
    packets = []
    for _ in range(2000):
        frame = bytearray(rnd.choice(good))
        for _ in range(rnd.randint(0, 4)):
            frame[rnd.randrange(len(frame))] = rnd.randrange(256)
        packets.append((at(rnd.random() * 100), bytes(frame[: rnd.randint(0, len(frame))])))
    verdicts = Run({"default": "allow", "rules": [drop(dport="0-1000")]})(packets)
    assert len(verdicts) == len(packets)


@pytest.mark.parametrize(
    "damage",
    [
        {"dport": []},  # a port list shorter than the batch
        {"frag": [1], "ip_id": [-1]},  # a fragment id that does not fit the key
        {"version": [9], "src": [b"\x01" * 40]},
    ],
)
def test_inconsistent_headers_give_malformed_not_an_exception(damage: dict[str, list]) -> None:
    # Headers that break the parser's promises must still yield a verdict and
    # write nothing.
    frame = tcp4(CLIENT, SERVER, 5000, 80)
    fw = Firewall(FirewallConfig(default="allow", rules=[{"action": "allow", "dport": 80}]))
    batch = PacketBatch.from_rows(LINKTYPE_ETHERNET, [(at(0), len(frame), frame, 1, 0, "")])
    headers = parse_packet_batch(batch, vectorise=False)
    broken = Headers(**{f: getattr(headers, f) for f in Headers.__dataclass_fields__})
    for name, value in damage.items():
        setattr(broken, name, value)
    state = BatchState(BatchState.memory(Firewall.tables))
    verdicts = fw.process(batch, broken, state)
    assert len(verdicts.ports) == 1
    if verdicts.ports == ["drop"]:
        assert verdicts.reasons == ["malformed"]
        assert state.write_back() == 0


# -- batch boundaries and state writes -----------------------------------------


def _mixed_traffic() -> list[tuple[int, bytes]]:
    rnd = random.Random(1)
    packets: list[tuple[int, bytes]] = []
    t = 0.0
    for n in range(600):
        t += rnd.random() * 2
        client = f"10.0.{n % 3}.{n % 7 + 1}"
        peer = f"198.51.100.{n % 5 + 1}"
        sport = 40000 + n % 11
        pick = rnd.randrange(9)
        if pick == 0:
            frame = tcp4(client, peer, sport, 443, rnd.choice(["S", "A", "FA", "R"]))
        elif pick == 1:
            frame = tcp4(peer, client, 443, sport, rnd.choice(["SA", "A", "FA", "R", "S"]))
        elif pick == 2:
            frame = udp4(client, peer, sport, 53)
        elif pick == 3:
            frame = udp4(peer, client, 53, sport)
        elif pick == 4:
            frame = icmp4(rnd.choice([client, peer]), rnd.choice([client, peer]), 8, n % 3)
        elif pick == 5:
            frame = arp()
        elif pick == 6:
            frame = truncated_tcp4(client, peer)
        elif pick == 7:
            frames = udp4_fragments(client, peer, sport, rnd.choice([53, 54]), ip_id=n % 4)
            rnd.shuffle(frames)
            frame = frames[0]
        else:
            frame = tcp4(peer, client, 443, sport, "A")
        packets.append((at(t), frame))
    return packets


def test_batch_boundaries_do_not_matter() -> None:
    packets = _mixed_traffic()
    config = {
        "rules": [drop(dst="198.51.100.5"), allow(src="10.0.0.0/8", dport=[443, 53])],
        "timeouts": {"udp": 20, "tcp": 50, "icmp": 5, "fragment": 10},
        "non_ip": "drop",
    }
    results = []
    for size in (1, 7, 512):
        run = Run(config)
        verdicts = run(packets, batch_size=size)
        results.append((verdicts, run.conn, run.frag, run.counters))
    assert results[0] == results[1] == results[2]
    reasons = {reason for _, reason in results[0][0]}
    assert {"", "default", "rule:0", "fragment", "malformed", "non_ip"} <= reasons


def test_one_write_per_flow_per_batch() -> None:
    run = Run({"rules": [allow(src=CLIENT)]})
    flow = [(at(i * 0.01), udp4(CLIENT, SERVER, 5000, 53)) for i in range(100)]
    run(flow)
    assert run.stores["conn"].sets == 1
    back = [(at(10 + i * 0.01), udp4(SERVER, CLIENT, 53, 5000)) for i in range(100)]
    run(back)
    assert run.stores["conn"].sets == 2
    assert run.writes == [1, 1]
    # Nothing changes (same timestamp again): no write at all.
    run([(at(10.99), udp4(SERVER, CLIENT, 53, 5000))] * 100)
    assert run.writes[-1] == 0
    assert run.stores["conn"].sets == 2


# -- config ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "loc", "text"),
    [
        ({"rules": [{"action": "accept"}]}, ("rules", 0, "action"), "allow"),
        ({"rules": [{"proto": "tcp"}]}, ("rules", 0, "action"), "required"),
        ({"rules": [allow(), allow(src="10.0.0.300")]}, ("rules", 1, "src"), "CIDR"),
        ({"rules": [allow(dst=["10.0.0.0/8", "nope"])]}, ("rules", 0, "dst"), "CIDR"),
        ({"rules": [allow(src="10.0.0.1/8")]}, ("rules", 0, "src"), "host bits"),
        ({"rules": [allow(dst=[])]}, ("rules", 0, "dst"), "non-empty"),
        ({"rules": [allow(dport=70000)]}, ("rules", 0, "dport"), "0..65535"),
        ({"rules": [allow(sport="9-3")]}, ("rules", 0, "sport"), "lo <= hi"),
        ({"rules": [allow(sport="1-70000")]}, ("rules", 0, "sport"), "0..65535"),
        ({"rules": [allow(dport=[80, "http"])]}, ("rules", 0, "dport"), "lo-hi"),
        ({"rules": [allow(dport=True)]}, ("rules", 0, "dport"), "port"),
        ({"rules": [allow(proto="gre")]}, ("rules", 0, "proto"), "icmpv6"),
        ({"rules": [allow(proto=256)]}, ("rules", 0, "proto"), "0..255"),
        ({"rules": [allow(port=80)]}, ("rules", 0, "port"), "Extra inputs"),
        ({"defualt": "allow"}, ("defualt",), "Extra inputs"),
        ({"default": "accept"}, ("default",), "allow"),
        ({"non_ip": "pass"}, ("non_ip",), "allow"),
        ({"timeouts": {"udp": 0}}, ("timeouts", "udp"), "greater than 0"),
        ({"timeouts": {"tcp_close": 5}}, ("timeouts", "tcp_close"), "Extra inputs"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, Any], loc: tuple, text: str) -> None:
    with pytest.raises(ValidationError) as info:
        FirewallConfig.model_validate(config)
    errors = info.value.errors()
    assert errors[0]["loc"] == loc, errors
    assert text in errors[0]["msg"], errors


def test_config_defaults_and_round_trip() -> None:
    config = FirewallConfig()
    assert (config.default, config.non_ip, config.rules) == ("drop", "allow", [])
    t = config.timeouts
    assert (t.tcp, t.tcp_closing, t.udp, t.icmp, t.other, t.fragment) == (3600, 10, 60, 30, 60, 30)
    rules = [allow(proto="TCP", src=["10.0.0.0/8"], dport=[80, "8000-8080"])]
    dumped = FirewallConfig.model_validate({"rules": rules}).model_dump(exclude_none=True)
    assert dumped["rules"] == [allow(proto="tcp", src=["10.0.0.0/8"], dport=[80, "8000-8080"])]
    assert all(field.description for field in FirewallConfig.model_fields.values())


def test_registered() -> None:
    from snf.core.registry import get_function

    assert get_function("firewall") is Firewall


# -- a real capture -----------------------------------------------------------


def test_real_http_capture_passes_with_an_outbound_rule(
    traffic: Callable[[str], Path],
) -> None:
    linktype, packets = read_pcap(traffic("zeek-http-bro.org.pcap"))
    assert linktype == LINKTYPE_ETHERNET
    run = Run({"rules": [allow(proto="tcp", dport=80)]})
    # Every HTTP connection is opened by its client, so replies ride conntrack.
    assert run(packets) == [PASS] * len(packets)
    run = Run({"rules": [allow(proto="tcp", sport=80)]})  # the wrong direction
    assert ("drop", "default") in run(packets)
