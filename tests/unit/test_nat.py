"""NAT core: translation, filtering, forwards, ICMP, fragments, expiry, partitioning.

Crafted packets go through a `Cluster`: one Nat core per partition, each in
its FunctionEngine with its own in-memory state, fed the way the pipeline
feeds them (a FlowRouter over the core's key_hashes picks each packet's
partition). Random traffic is also
checked packet by packet against the independent model in tests.nat_model.
"""

from __future__ import annotations

import random
import socket
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dpkt
import pytest
from pydantic import ValidationError

from snf.core.engine import FunctionEngine
from snf.core.tables import BatchState
from snf.functions.nat import Nat, NatConfig
from snf.packet.batch import PacketBatch
from snf.packet.flowkey import endpoint_hash
from snf.packet.fragments import FlowRouter
from snf.packet.headers import Headers
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.parse import parse_packet_batch
from snf.packet.rewrite import ipv4_header_ok, l4_checksum_ok
from tests.harness import JsonStore, handle
from tests.nat_model import NatModel, View, decode
from tests.packets import (
    arp,
    ether,
    fragments4,
    icmp4_echo,
    icmp4_error,
    ip4,
    read_pcap,
    tcp4,
    tcp6,
    udp4,
)

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
PASS = ("pass", "")
PUB, PUB2 = "192.0.2.1", "192.0.2.2"
H1, H2, H3 = "10.0.0.1", "10.0.0.2", "10.0.0.3"
R1, R2 = "198.51.100.1", "198.51.100.2"
BASE: dict[str, Any] = {"inside": ["10.0.0.0/24", "192.168.7.0/24"], "public_ips": [PUB]}
Out = tuple[str, str, bytes]  # port, reason, packet as it leaves


def at(seconds: float) -> int:
    return T0 + round(seconds * NS)


def cfg(**fields: Any) -> dict[str, Any]:
    return {**BASE, **fields}


# -- harness ----------------------------------------------------------------


class Cluster:
    """`partitions` Nat cores in their engines, each with its own state, fed through
    a FlowRouter."""

    def __init__(self, config: dict[str, Any], partitions: int = 1) -> None:
        self.nats = [Nat(NatConfig.model_validate(config)) for _ in range(partitions)]
        for nat in self.nats:
            nat.partitions = partitions
        self.engines = [FunctionEngine(nat) for nat in self.nats]
        self.stores = [{name: JsonStore() for name in Nat.tables} for _ in range(partitions)]
        self.router = FlowRouter()
        self.writes: list[int] = []
        self.seq = 0

    def __call__(self, packets: Sequence[tuple[int, bytes]], batch_size: int = 512) -> list[Out]:
        out: list[Out] = []
        for start in range(0, len(packets), batch_size):
            out.extend(self._batch(packets[start : start + batch_size]))
        return out

    def _batch(self, packets: Sequence[tuple[int, bytes]]) -> list[Out]:
        rows = [(ts, len(f), f, 1, self.seq + i, "") for i, (ts, f) in enumerate(packets)]
        self.seq += len(rows)
        batch = PacketBatch.from_rows(LINKTYPE_ETHERNET, rows)
        headers = parse_packet_batch(batch)
        n = len(self.nats)
        hashes = self.nats[0].key_hashes(batch, headers)
        parts = self.router.route(headers, batch.records["ts_ns"], n, hashes=hashes)
        results: list[Out] = [("", "", b"")] * len(rows)
        for p in sorted(set(parts)):
            idx = [i for i, q in enumerate(parts) if q == p]
            done = handle(self.engines[p], batch.select(idx), self.stores[p])
            self.writes.append(done.writes)
            for j, i in enumerate(idx):
                results[i] = (done.ports[j], done.reasons[j], done.frames[j])
        return results

    def counters(self) -> Counter[str]:
        """The engines' counters, summed over the partitions."""
        return sum((e.counters for e in self.engines), Counter())

    def one(self, ts: int, frame: bytes) -> Out:
        return self([(ts, frame)])[0]

    def table(self, name: str) -> dict[bytes, Any]:
        return {k: v for s in self.stores for k, v in s[name].data.items()}

    def key_partition(self, frame: bytes) -> int | None:
        batch = PacketBatch.from_rows(LINKTYPE_ETHERNET, [(T0, len(frame), frame, 1, 0, "")])
        h = self.nats[0].key_hashes(batch, parse_packet_batch(batch))[0]
        return None if h is None else h % len(self.nats)


def fields(frame: bytes) -> tuple[str, str, int, int]:
    """(src, dst, sport, dport) of an IPv4 frame; ICMP echo: the identifier twice."""
    v = decode(frame)
    assert isinstance(v, View)
    return socket.inet_ntoa(v.src), socket.inet_ntoa(v.dst), v.sport, v.dport


def valid(frame: bytes) -> bool:
    """IPv4 header and (for whole packets) TCP/UDP/ICMP checksums verify."""
    v = decode(frame)
    assert isinstance(v, View)
    if not ipv4_header_ok(frame, v.l3):
        return False
    return v.first or v.later or l4_checksum_ok(frame, v.l3, v.l4)


def out_of(cluster: Cluster, ts: int, frame: bytes) -> tuple[str, int]:
    """Send an outbound packet; return its public (ip, port)."""
    port, reason, new = cluster.one(ts, frame)
    assert (port, reason) == PASS
    assert valid(new)
    src, _, sport, _ = fields(new)
    return src, sport


def zero_udp_checksum(frame: bytes) -> bytes:
    b = bytearray(frame)
    b[14 + 20 + 6 : 14 + 20 + 8] = b"\0\0"
    return bytes(b)


# -- outbound mapping -----------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        udp4(H1, R1, 5000, 53, b"query"),
        tcp4(H1, R1, 5000, 443, "S"),
        icmp4_echo(H1, R1, ident=77),
        udp4("192.168.7.9", R1, 5000, 53, b"x", vlan=12),
    ],
)
def test_outbound_source_rewritten(frame: bytes) -> None:
    c = Cluster(cfg())
    port, reason, new = c.one(at(0), frame)
    assert (port, reason) == PASS
    src, dst, sport, dport = fields(new)
    assert (src, dst) == (PUB, R1) and 1024 <= sport <= 65535
    assert valid(new)
    if fields(frame)[2] != fields(frame)[3]:  # not ICMP: the destination port is kept
        assert dport == fields(frame)[3]
    assert len(new) == len(frame)


def test_mapping_is_endpoint_independent_and_never_shared() -> None:
    c = Cluster(cfg(public_ips=[PUB, PUB2]))
    a = {out_of(c, at(0), udp4(H1, r, 5000, p)) for r in (R1, R2) for p in (53, 123)}
    assert len(a) == 1  # one public endpoint whatever the destination
    b = out_of(c, at(1), udp4(H1, R1, 5001, 53))
    d = out_of(c, at(1), udp4(H2, R1, 5000, 53))
    t = out_of(c, at(1), tcp4(H1, R1, 5000, 53))
    assert len({*a, b, d}) == 3
    assert t[0] == b[0] == next(iter(a))[0]  # paired pooling: one public IP per host
    assert len(c.table("bind")) == 4 and len(c.table("rev")) == 4


def test_paired_pooling_spreads_hosts_and_is_stable() -> None:
    config = cfg(public_ips=[PUB, PUB2, "192.0.2.3"])
    hosts = [f"10.0.0.{i}" for i in range(1, 40)]
    first = {h: out_of(Cluster(config), at(0), udp4(h, R1, 7000, 53))[0] for h in hosts}
    c = Cluster(config, partitions=4)  # another run, other ports: same public IPs
    for port in (7001, 7002):
        assert {h: out_of(c, at(0), udp4(h, R2, port, 53))[0] for h in hosts} == first
    assert set(first.values()) == {PUB, PUB2, "192.0.2.3"}


def test_same_endpoint_gets_same_port_in_any_order() -> None:
    frames = [udp4(f"10.0.0.{i}", R1, 4000 + i, 53) for i in range(1, 30)]
    c1, c2 = Cluster(cfg()), Cluster(cfg())
    a = [fields(o[2])[2] for o in c1([(at(0), f) for f in frames])]
    b = [fields(o[2])[2] for o in c2([(at(0), f) for f in reversed(frames)])]
    assert a == b[::-1]


# -- inbound: replies and filtering ---------------------------------------------


@pytest.mark.parametrize(
    ("out", "reply"),
    [
        (
            lambda: udp4(H1, R1, 5000, 53, b"q"),
            lambda ip, p, dst="": udp4(R1, dst or ip, 53, p, b"answer"),
        ),
        (
            lambda: tcp4(H1, R1, 5000, 80, "S"),
            lambda ip, p, dst="": tcp4(R1, dst or ip, 80, p, "SA", seq=9, ack=2),
        ),
        (
            lambda: icmp4_echo(H1, R1, ident=5000),
            lambda ip, p, dst="": icmp4_echo(R1, dst or ip, ident=p, reply=True),
        ),
    ],
)
def test_reply_translated_back_exactly(out: Callable, reply: Callable) -> None:
    c = Cluster(cfg())
    ip, port = out_of(c, at(0), out())
    assert c.one(at(1), reply(ip, port)) == ("pass", "", reply(H1, 5000, H1))
    assert c.one(at(1), reply(ip, port + 1 if port < 65535 else 1024))[:2] == ("drop", "no_binding")


def _filtering_verdicts(mode: str) -> list[tuple[str, str]]:
    c = Cluster(cfg(filtering=mode))
    ip, port = out_of(c, at(0), udp4(H1, R1, 5000, 53))
    tries = [udp4(R1, ip, 53, port), udp4(R1, ip, 54, port), udp4(R2, ip, 53, port)]
    return [o[:2] for o in c([(at(1), f) for f in tries])]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("endpoint-independent", [PASS, PASS, PASS]),
        ("address-dependent", [PASS, PASS, ("drop", "filtered")]),
        ("address-and-port-dependent", [PASS, ("drop", "filtered"), ("drop", "filtered")]),
    ],
)
def test_filtering_modes(mode: str, expected: list[tuple[str, str]]) -> None:
    assert _filtering_verdicts(mode) == expected


def test_default_filtering_is_address_and_port_dependent() -> None:
    assert NatConfig.model_validate(BASE).filtering == "address-and-port-dependent"


def test_remote_list_is_bounded_oldest_evicted() -> None:
    c = Cluster(cfg(filtering="address-dependent"))
    remotes = [f"203.0.113.{i}" for i in range(1, 67)]  # 66 remotes: the first two go
    outs = c([(at(i * 0.01), udp4(H1, r, 5000, 53)) for i, r in enumerate(remotes)])
    ip, port = fields(outs[0][2])[0], fields(outs[0][2])[2]
    back = c([(at(2), udp4(r, ip, 53, port)) for r in remotes])
    assert [o[:2] for o in back] == [("drop", "filtered")] * 2 + [PASS] * 64
    assert len(next(iter(c.table("bind").values()))[4]) == 64


def test_no_binding_cases() -> None:
    c = Cluster(cfg())
    _, port = out_of(c, at(0), udp4(H1, R1, 5000, 53))
    assert c.one(at(1), udp4(R1, PUB, 53, 1000))[:2] == ("drop", "no_binding")  # never bound
    assert c.one(at(1), tcp4(R1, PUB, 53, port))[:2] == ("drop", "no_binding")  # other proto
    assert c.one(at(1), udp4(R1, H1, 53, 5000))[:2] == ("drop", "no_binding")  # inside address
    assert c.one(at(1), icmp4_echo(R1, PUB, ident=port))[:2] == ("drop", "no_binding")
    gre = ether(ip4(R1, PUB, 47, bytes(8)))
    assert c.one(at(1), gre)[:2] == ("drop", "no_binding")


# -- port forwards ------------------------------------------------------------

FWD = {"proto": "tcp", "public": f"{PUB}:443", "inside": "10.0.0.5:8443"}


@pytest.mark.parametrize("partitions", [1, 4])
def test_port_forward_both_ways(partitions: int) -> None:
    c = Cluster(cfg(port_forwards=[FWD]), partitions)
    syn = tcp4(R1, PUB, 40000, 443, "S")
    assert c.one(at(0), syn) == ("pass", "", tcp4(R1, "10.0.0.5", 40000, 8443, "S"))
    synack = tcp4("10.0.0.5", R1, 8443, 40000, "SA")
    assert c.one(at(1), synack) == ("pass", "", tcp4(PUB, R1, 443, 40000, "SA"))
    # Static: any remote, any time, no state.
    assert c.one(at(10**6), tcp4(R2, PUB, 1, 443, "S"))[:2] == PASS
    assert c.table("bind") == {} and c.table("rev") == {}
    # Both directions are keyed by the forward's inside endpoint.
    inside_part = endpoint_hash(6, socket.inet_aton("10.0.0.5"), 8443) % partitions
    assert c.key_partition(syn) == c.key_partition(synack) == inside_part
    assert c.one(at(1), udp4(R1, PUB, 40000, 443))[:2] == ("drop", "no_binding")  # tcp only


def test_forward_port_is_never_allocated() -> None:
    forwards = [
        {"proto": "udp", "public": f"{PUB}:{p}", "inside": f"10.0.0.9:{p}"} for p in (20000, 20002)
    ]
    c = Cluster(cfg(ports="20000-20003", port_forwards=forwards))
    got = {out_of(c, at(0), udp4(f"10.0.0.{i}", R1, 5000, 53))[1] for i in (1, 2)}
    assert got == {20001, 20003}
    assert c.one(at(0), udp4(H3, R1, 5000, 53))[:2] == ("drop", "ports_exhausted")
    # A TCP endpoint may still use 20000: forwards are per protocol.
    assert out_of(c, at(0), tcp4(H3, R1, 5000, 53))[1] in range(20000, 20004)


# -- exhaustion and expiry ------------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 4])
def test_ports_exhausted_then_freed_by_expiry(partitions: int) -> None:
    c = Cluster(cfg(ports="30000-30011", timeouts={"udp": 10}), partitions)
    verdicts = c([(at(0), udp4(f"10.0.0.{i}", R1, 5000, 53)) for i in range(1, 41)])
    passed = [fields(o[2])[2] for o in verdicts if o[0] == "pass"]
    assert len(passed) == len(set(passed)) <= 12
    assert {o[1] for o in verdicts} == {"", "ports_exhausted"}
    assert all(30000 <= p <= 30011 for p in passed)
    if partitions == 1:
        assert len(passed) == 12
    # After the timeout every port is free again.
    later = c([(at(11), udp4(f"10.0.0.{i}", R1, 5000, 53)) for i in range(41, 45)])
    assert [o[:2] for o in later] == [PASS] * 4


@pytest.mark.parametrize(
    ("label", "packets", "timeout"),
    [
        ("udp", [udp4(H1, R1, 5000, 53)], 300),
        ("icmp", [icmp4_echo(H1, R1, ident=5000)], 60),
        ("tcp syn only", [tcp4(H1, R1, 5000, 80, "S")], 240),
        ("tcp established", [tcp4(H1, R1, 5000, 80, "S"), "SA"], 7440),
        (
            "tcp fin both ways",
            [tcp4(H1, R1, 5000, 80, "S"), "SA", "FA", tcp4(H1, R1, 5000, 80, "FA")],
            240,
        ),
        ("tcp rst", [tcp4(H1, R1, 5000, 80, "S"), "SA", "R"], 240),
    ],
)
def test_expiry_in_packet_time(label: str, packets: list[Any], timeout: int) -> None:
    def reply(ip: str, port: int, flags: str = "A") -> bytes:
        if "udp" in label:
            return udp4(R1, ip, 53, port)
        if "icmp" in label:
            return icmp4_echo(R1, ip, ident=port, reply=True)
        return tcp4(R1, ip, 80, port, flags)

    for delay, ok in ((timeout, True), (timeout + 1, False)):
        c = Cluster(cfg())
        ip, port = out_of(c, at(0), packets[0])
        for p in packets[1:]:
            assert c.one(at(0), p if isinstance(p, bytes) else reply(ip, port, p))[:2] == PASS
        verdict = c.one(at(delay), reply(ip, port))[:2]
        assert verdict == (PASS if ok else ("drop", "no_binding")), (label, delay)
        if not ok:
            assert c.table("bind") == {} and c.table("rev") == {}  # lazily deleted


def test_new_syn_after_rst_starts_over() -> None:
    c = Cluster(cfg())
    ip, port = out_of(c, at(0), tcp4(H1, R1, 5000, 80, "S"))
    c([(at(0), tcp4(R1, ip, 80, port, "SA")), (at(0), tcp4(H1, R1, 5000, 80, "R"))])
    assert out_of(c, at(100), tcp4(H1, R1, 5000, 80, "S")) == (ip, port)  # transitory, live
    assert c.one(at(101), tcp4(R1, ip, 80, port, "SA"))[:2] == PASS  # established again
    assert c.one(at(5000), tcp4(R1, ip, 80, port, "A"))[:2] == PASS


def test_expired_binding_gets_its_port_back() -> None:
    c = Cluster(cfg(timeouts={"udp": 5}))
    first = out_of(c, at(0), udp4(H1, R1, 5000, 53))
    assert out_of(c, at(100), udp4(H1, R2, 5000, 53)) == first  # same start index, port free
    assert c.one(at(101), udp4(R1, PUB, 53, first[1]))[:2] == ("drop", "filtered")  # new filter


# -- ICMP -----------------------------------------------------------------------


def test_icmp_echo_identifier_translated() -> None:
    c = Cluster(cfg())
    ip, ident = out_of(c, at(0), icmp4_echo(H1, R1, ident=7, seq=3))
    reply = icmp4_echo(R1, ip, ident=ident, seq=3, reply=True)
    assert c.one(at(1), reply) == ("pass", "", icmp4_echo(R1, H1, ident=7, seq=3, reply=True))
    ts_request = ether(
        ip4(H1, R1, 1, bytes([13, 0]) + bytes(18))
    )  # timestamp: no identifier mapping
    assert c.one(at(1), ts_request)[:2] == ("drop", "unsupported")


def _quote(frame: bytes, full: bool) -> bytes:
    """What a router quotes of a packet: the IP header + 8 bytes, or all of it."""
    ip = frame[14:]
    return ip if full else ip[: (ip[0] & 15) * 4 + 8]


def _inner(frame: bytes) -> dpkt.ip.IP:
    return dpkt.ethernet.Ethernet(frame).data.data.data.data


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize(
    "sent",
    [udp4(H1, R1, 5000, 53, b"query"), tcp4(H1, R1, 5000, 80, "S"), icmp4_echo(H1, R1, ident=5000)],
)
def test_inbound_icmp_error_translated(sent: bytes, full: bool) -> None:
    c = Cluster(cfg())
    port, reason, wire = c.one(at(0), sent)
    ip = fields(wire)[0]
    for type_ in (3, 11):
        error = icmp4_error("203.0.113.254", ip, type_=type_, code=0, original=_quote(wire, full))
        port, reason, new = c.one(at(1), error)
        assert (port, reason) == PASS
        assert fields(new)[:2] == ("203.0.113.254", H1)
        assert new[14 + 20 + 8 :] == _quote(sent, full)  # the quote is what H1 sent
        assert valid(new)  # outer IP and ICMP checksums (over the whole message)
        assert fields(error)[2:] == fields(new)[2:]


def test_inbound_icmp_error_without_binding_or_filtered() -> None:
    c = Cluster(cfg())
    _, _, wire = c.one(at(0), udp4(H1, R1, 5000, 53))
    ip, port = fields(wire)[0], fields(wire)[2]
    stray = udp4(ip, R1, port + 1, 53, ether=False)
    assert c.one(at(1), icmp4_error(R1, ip, original=stray))[:2] == ("drop", "no_binding")
    other = udp4(ip, R2, port, 53, ether=False)  # about a packet to a remote never used
    assert c.one(at(1), icmp4_error(R2, ip, original=other))[:2] == ("drop", "filtered")
    cut = icmp4_error(R1, ip, original=wire[14:30])  # quote shorter than an IP header
    assert c.one(at(1), cut)[:2] == ("drop", "malformed")
    before = c.table("bind")
    c.one(at(50), icmp4_error(R1, ip, original=wire[14:]))
    assert c.table("bind") == before  # errors do not refresh the binding


@pytest.mark.parametrize("from_host", [H1, "10.0.0.254"])
def test_outbound_icmp_error_translated(from_host: str) -> None:
    c = Cluster(cfg(filtering="endpoint-independent"))
    ip, port = out_of(c, at(0), udp4(H1, R1, 5000, 53))
    _, _, inbound = c.one(at(1), udp4(R2, ip, 7777, port, b"hello"))
    error = icmp4_error(from_host, R2, original=inbound[14:])
    verdict, reason, new = c.one(at(2), error)
    assert (verdict, reason) == PASS
    assert fields(new)[:2] == (ip, R2)
    assert new[14 + 28 :] == udp4(R2, ip, 7777, port, b"hello", ether=False)
    assert valid(new)
    unknown = udp4(R2, H2, 7777, 6000, ether=False)
    assert c.one(at(2), icmp4_error(H2, R2, original=unknown))[:2] == ("drop", "no_binding")


def test_icmp_error_between_inside_hosts_passes() -> None:
    c = Cluster(cfg())
    error = icmp4_error(H2, H1, original=udp4(H1, H2, 5000, 53, ether=False))
    assert c.one(at(0), error) == ("pass", "", error)


# -- checksums --------------------------------------------------------------------


def test_zero_udp_checksum_stays_zero() -> None:
    c = Cluster(cfg())
    _, _, new = c.one(at(0), zero_udp_checksum(udp4(H1, R1, 5000, 53, b"abc")))
    assert new[14 + 26 : 14 + 28] == b"\0\0" and ipv4_header_ok(new, 14)
    ip, port = fields(new)[0], fields(new)[2]
    _, _, back = c.one(at(1), zero_udp_checksum(udp4(R1, ip, 53, port, b"abc")))
    assert back == zero_udp_checksum(udp4(R1, H1, 53, 5000, b"abc"))


def test_checksums_valid_over_many_values() -> None:
    rnd = random.Random(3)
    c = Cluster(cfg(public_ips=[PUB, PUB2, "203.0.113.200"]))
    for n in range(300):
        host = f"10.0.0.{rnd.randrange(1, 255)}"
        sport, payload = rnd.randrange(65536), rnd.randbytes(rnd.randrange(0, 40))
        frame = rnd.choice([udp4, tcp4])(
            host, f"198.51.{rnd.randrange(256)}.9", sport, 53, payload=payload
        )
        port, reason, new = c.one(at(n), frame)
        assert (port, reason) == PASS and valid(new)


# -- fragments ------------------------------------------------------------------


def _reassembled_udp_ok(frames: list[bytes]) -> bool:
    ips = [dpkt.ethernet.Ethernet(f).data for f in frames]
    data = b"".join(bytes(ip.data) for ip in sorted(ips, key=lambda ip: ip.offset))
    pseudo = ips[0].src + ips[0].dst + struct.pack("!BBH", 0, 17, len(data))
    return dpkt.in_cksum(pseudo + data) == 0


def test_fragments_translated() -> None:
    c = Cluster(cfg())
    frames = fragments4(H1, R1, 5000, 53, bytes(range(40)), ip_id=9, frag_size=16)
    outs = c([(at(0), f) for f in frames])
    assert [o[:2] for o in outs] == [PASS] * 3
    new = [o[2] for o in outs]
    assert {fields(f)[0] for f in new} == {PUB}
    assert all(ipv4_header_ok(f, 14) for f in new) and _reassembled_udp_ok(new)
    ip, port = fields(new[0])[0], fields(new[0])[2]
    back = fragments4(R1, ip, 53, port, bytes(range(40)), ip_id=4, frag_size=16)
    outs = c([(at(1), f) for f in back])
    assert [o[2] for o in outs] == fragments4(
        R1, H1, 53, 5000, bytes(range(40)), ip_id=4, frag_size=16
    )
    assert len(c.table("frag")) == 2


def test_fragment_without_first_or_too_late() -> None:
    c = Cluster(cfg())
    first, second, third = fragments4(H1, R1, 5000, 53, bytes(40), ip_id=9, frag_size=16)
    assert c([(at(0), second), (at(0), first), (at(30), third)])[0][:2] == ("drop", "fragment")
    first, second, third = fragments4(H1, R1, 5000, 53, bytes(40), ip_id=10, frag_size=16)
    outs = c([(at(0), first), (at(31), second)])
    assert [o[:2] for o in outs] == [PASS, ("drop", "fragment")]


def test_fragments_of_filtered_datagram_are_dropped_alike() -> None:
    c = Cluster(cfg())
    ip, port = out_of(c, at(0), udp4(H1, R1, 5000, 53))
    frames = fragments4(R2, ip, 53, port, bytes(40), frag_size=16)
    assert [o[:2] for o in c([(at(1), f) for f in frames])] == [("drop", "filtered")] * 3
    inside = fragments4(H1, H2, 1, 2, bytes(40), frag_size=16)  # not translated at all
    assert c([(at(1), f) for f in inside[1:]]) == [("pass", "", f) for f in inside[1:]]


# -- untouched, unsupported, malformed --------------------------------------------


def test_untouched_traffic_passes() -> None:
    c = Cluster(cfg())
    frames = [
        tcp6("fd00::1", "2001:db8::1", 5000, 80),
        arp(),
        udp4(H1, H2, 5000, 53),
        udp4(R1, R2, 5000, 53),
        udp4(PUB, R1, 5000, 53),
    ]
    assert c([(at(0), f) for f in frames]) == [("pass", "", f) for f in frames]
    assert c.table("bind") == {}


def test_unsupported_outbound_protocol_is_dropped() -> None:
    c = Cluster(cfg())
    assert c.one(at(0), ether(ip4(H1, R1, 47, bytes(8))))[:2] == ("drop", "unsupported")


def test_malformed() -> None:
    c = Cluster(cfg())
    frames = [
        ether(ip4(H1, R1, 6, b"\x13\x88\x01\xbb")),  # TCP header cut short
        b"\x00" * 13,
        tcp4(H1, R1, 5000, 80)[:30],
    ]
    assert [o[:2] for o in c([(at(0), f) for f in frames])] == [("drop", "malformed")] * 3
    assert c.engines[0].counters["drop:malformed"] == 3


def test_never_raises_on_random_bytes() -> None:
    rnd = random.Random(7)
    c = Cluster(cfg(filtering="endpoint-independent"), partitions=3)
    ip, port = out_of(c, at(0), udp4(H1, R1, 5000, 53))
    good = [
        udp4(H1, R1, 5000, 53),
        udp4(R1, ip, 53, port),
        icmp4_error(R1, ip, original=udp4(ip, R1, port, 53, ether=False)),
        icmp4_error(H1, R1, original=udp4(R1, H1, 53, 5000, ether=False)),
        *fragments4(H1, R1, 5000, 53, bytes(40), frag_size=16),
    ]
    packets = []
    for _ in range(1500):
        frame = bytearray(rnd.choice(good))
        for _ in range(rnd.randint(0, 4)):
            frame[rnd.randrange(14, len(frame))] = rnd.randrange(256)
        packets.append((at(rnd.random()), bytes(frame[: rnd.randint(0, len(frame))])))
    assert len(c(packets)) == len(packets)


def test_inconsistent_headers_give_malformed() -> None:
    frame = udp4(H1, R1, 5000, 53)
    nat = Nat(NatConfig.model_validate(cfg()))
    batch = PacketBatch.from_rows(LINKTYPE_ETHERNET, [(at(0), len(frame), frame, 1, 0, "")])
    headers = parse_packet_batch(batch, vectorise=False)
    broken = Headers(**{f: getattr(headers, f) for f in Headers.__dataclass_fields__})
    broken.l4_off = [9999]
    state = BatchState(BatchState.memory(Nat.tables))
    v = nat.process(batch, broken, state)
    assert (v.ports, v.reasons) == (["drop"], ["malformed"])
    assert state.write_back() == 0
    assert len(nat.key_hashes(batch, broken)) == 1


# -- random traffic against the model ------------------------------------------------

PROP_CONFIG: dict[str, Any] = cfg(
    public_ips=[PUB, PUB2],
    port_forwards=[
        {"proto": "tcp", "public": f"{PUB}:443", "inside": "10.0.0.5:8443"},
        {"proto": "udp", "public": f"{PUB2}:5353", "inside": "192.168.7.9:53"},
    ],
    timeouts={"tcp": 200, "tcp_transitory": 20, "udp": 30, "icmp": 10},
)
HOSTS = [H1, H2, H3, "10.0.0.5", "192.168.7.9"]
REMOTES = [R1, R2, "203.0.113.7"]


class Traffic:
    """Seeded random traffic that answers what the NAT sent (replies, ICMP errors)."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.t = 0.0
        self.sent: list[bytes] = []  # outbound packets as translated (src public)
        self.received: list[bytes] = []  # inbound packets as translated (dst internal)

    def learn(self, packets: Sequence[tuple[int, bytes]], outs: Sequence[Out]) -> None:
        for (_, frame), (port, _, new) in zip(packets, outs, strict=True):
            v = decode(new)
            if port != "pass" or new == frame or not isinstance(v, View) or v.later:
                continue
            if v.proto in (6, 17) or (v.proto == 1 and v.icmp_type in (0, 8)):
                (
                    self.sent
                    if v.src in (socket.inet_aton(PUB), socket.inet_aton(PUB2))
                    else self.received
                ).append(new)

    def round(self, n: int) -> list[tuple[int, bytes]]:
        rnd, out = self.rnd, []
        for _ in range(n):
            self.t += rnd.choice([0.0, 0.01, 0.5, 2.0, 5.0]) + (rnd.random() < 0.03) * rnd.choice(
                [12, 25, 40, 250]
            )
            out.extend((at(self.t), f) for f in self._draw())
        return out

    def _draw(self) -> list[bytes]:
        rnd = self.rnd
        host, remote = rnd.choice(HOSTS), rnd.choice(REMOTES)
        sport, dport = rnd.choice([5000, 5001, 6000, 8443, 53]), rnd.choice([53, 80, 443])
        pick = rnd.randrange(16)
        if pick < 4:
            flags = rnd.choice(["S", "A", "PA", "FA", "R", "SA"])
            return [
                rnd.choice(
                    [
                        udp4(host, remote, sport, dport, rnd.randbytes(rnd.randrange(9))),
                        tcp4(host, remote, sport, dport, flags),
                        icmp4_echo(host, remote, ident=sport),
                        zero_udp_checksum(udp4(host, remote, sport, dport, b"z")),
                    ]
                )
            ]
        if pick < 9 and self.sent:
            sent = rnd.choice(self.sent[-8:])
            src, dst, sp, dp = fields(sent)
            if pick == 8:  # a router on the way reports an error about it
                quote = _quote(sent, rnd.random() < 0.5)
                return [icmp4_error("203.0.113.254", src, type_=11, code=0, original=quote)]
            if rnd.random() < 0.2:  # another remote address or port: filtering decides
                dst, dp = rnd.choice([(rnd.choice(REMOTES), dp), (dst, dp + 1)])
            v = decode(sent)
            assert isinstance(v, View)
            if v.proto == 17 and pick == 7:
                payload = rnd.randbytes(40)
                return fragments4(dst, src, dp, sp, payload, ip_id=rnd.randrange(9), frag_size=16)
            if v.proto == 17:
                return [udp4(dst, src, dp, sp, b"reply")]
            if v.proto == 6:
                return [tcp4(dst, src, dp, sp, rnd.choice(["SA", "A", "FA", "R", "PA"]))]
            return [icmp4_echo(dst, src, ident=sp, reply=True)]
        if pick == 9 and self.received:
            got = rnd.choice(self.received[-20:])
            return [
                icmp4_error(
                    rnd.choice([fields(got)[1], "10.0.0.254"]),
                    fields(got)[0],
                    original=_quote(got, rnd.random() < 0.5),
                )
            ]
        if pick == 10:
            return [tcp4(remote, PUB, 1234, 443, "S"), udp4(remote, PUB2, 999, 5353)]
        if pick == 11:
            frames = fragments4(
                host, remote, sport, 53, rnd.randbytes(40), ip_id=rnd.randrange(4), frag_size=16
            )
            if rnd.random() < 0.3:
                rnd.shuffle(frames)
            return frames
        if pick == 12:
            return [udp4(remote, rnd.choice([PUB, PUB2]), 53, rnd.randrange(1024, 65536))]
        if pick == 13:
            return [udp4(remote, host, 53, sport)]  # straight to an inside address
        if pick == 14:
            return [
                rnd.choice(
                    [
                        udp4(host, "10.0.0.3", 1, 2),
                        udp4(remote, R2, 1, 2),
                        arp(),
                        tcp6("fd00::1", "2001:db8::1", 1, 2),
                    ]
                )
            ]
        return [ether(ip4(host, remote, 47, bytes(8)))]


def run_with_model(
    config: dict[str, Any], seed: int, partitions: int, rounds: int = 30
) -> tuple[Cluster, NatModel, list[tuple[int, bytes]]]:
    cluster, model, traffic = (
        Cluster(config, partitions),
        NatModel(config, partitions),
        Traffic(seed),
    )
    everything: list[tuple[int, bytes]] = []
    for _ in range(rounds):
        packets = traffic.round(12)
        outs = cluster(packets, batch_size=traffic.rnd.choice([1, 5, 512]))
        for (ts, frame), (port, reason, new) in zip(packets, outs, strict=True):
            model.check(ts, frame, port, reason, new)
        traffic.learn(packets, outs)
        everything.extend(packets)
    return cluster, model, everything


@pytest.mark.parametrize("partitions", [1, 4])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_traffic_matches_model(seed: int, partitions: int) -> None:
    cluster, model, _ = run_with_model(PROP_CONFIG, seed, partitions)
    counters = cluster.counters()
    assert model.new_bindings > 10
    for key in ("pass", "drop:no_binding", "drop:filtered", "drop:unsupported"):
        assert counters[key], key


@pytest.mark.parametrize("partitions", [1, 4])
def test_random_traffic_tiny_port_range_matches_model(partitions: int) -> None:
    config = {**PROP_CONFIG, "ports": "40000-40002", "filtering": "address-dependent"}
    cluster, _, _ = run_with_model(config, 9, partitions, rounds=25)
    assert cluster.counters()["drop:ports_exhausted"]


def test_random_traffic_endpoint_independent_matches_model() -> None:
    run_with_model({**PROP_CONFIG, "filtering": "endpoint-independent"}, 5, 2)


@pytest.mark.parametrize("partitions", [2, 4, 7])
def test_reply_keys_to_the_partition_of_its_binding(partitions: int) -> None:
    c = Cluster(cfg(public_ips=[PUB, PUB2]), partitions)
    for n in range(60):
        host, sport = f"10.0.0.{n % 9 + 1}", 3000 + n
        frame = [udp4, tcp4][n % 2](host, R1, sport, 80)
        _, _, new = c.one(at(0), frame)
        ip, pub_port = fields(new)[0], fields(new)[2]
        reply = [udp4, tcp4][n % 2](R1, ip, 80, pub_port)
        home = endpoint_hash(6 if n % 2 else 17, socket.inet_aton(host), sport) % partitions
        assert c.key_partition(frame) == c.key_partition(reply) == home
        error = icmp4_error(R2, ip, original=new[14:42])
        assert c.key_partition(error) == home
        assert c.one(at(1), reply)[:2] == PASS
    assert c.key_partition(udp4(H1, H2, 1, 2)) is None
    assert c.key_partition(fragments4(H1, R1, 1, 2, bytes(40), frag_size=16)[1]) is None


# -- batch boundaries and state writes ------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 4])
@pytest.mark.parametrize("ports", ["1024-65535", "40000-40002"])
def test_batch_boundaries_do_not_matter(ports: str, partitions: int) -> None:
    config = {**PROP_CONFIG, "ports": ports}
    _, _, packets = run_with_model(config, 12, partitions, rounds=20)
    packets += [(packets[-1][0], f) for f in (b"\0" * 13, tcp4(H1, R1, 1, 2)[:30])]
    results = []
    for size in (1, 7, 512):
        c = Cluster(config, partitions)
        outs = c(packets, batch_size=size)
        results.append((outs, [c.table(t) for t in Nat.tables], c.counters()))
    assert results[0] == results[1] == results[2]
    reasons = {o[1] for o in results[0][0]}
    assert {"", "no_binding", "filtered", "fragment", "unsupported", "malformed"} <= reasons
    assert ("ports_exhausted" in reasons) == (ports == "40000-40002")


def test_state_written_only_on_change() -> None:
    c = Cluster(cfg())
    c([(at(i * 0.01), udp4(H1, R1, 5000, 53)) for i in range(100)])
    assert c.writes == [2]  # one bind, one rev
    ip, port = fields(c.one(at(1), udp4(H1, R1, 5000, 53))[2])[::2]
    assert c.writes[-1] == 1  # last_seen moved
    c([(at(1), udp4(H1, R1, 5000, 53))] * 50 + [(at(1), udp4(R1, ip, 53, port))] * 50)
    assert c.writes[-1] == 0  # nothing changed
    c([(at(1), udp4(R2, ip, 53, port))] * 10)  # filtered: no write
    assert c.writes[-1] == 0


# -- real captures ------------------------------------------------------------------


def test_real_http_capture_round_trip(traffic: Callable[[str], Path]) -> None:
    """Clients behind the NAT; the servers answer the public endpoints (the test
    plays the Internet), and the NAT must hand back exactly the captured replies."""
    linktype, packets = read_pcap(traffic("zeek-http-bro.org.pcap"))
    assert linktype == LINKTYPE_ETHERNET
    config = cfg(inside=["10.0.2.0/24"])
    c, model = Cluster(config, 4), NatModel(config, 4)
    public: dict[tuple[str, int], tuple[str, int]] = {}
    for ts, frame in packets:
        src, dst, sport, dport = fields(frame)
        sent = frame
        if dst.startswith("10.0.2."):  # a reply: address it to the public endpoint
            pub_ip, pub_port = public[(dst, dport)]
            sent = _readdress(frame, pub_ip, pub_port)
        port, reason, new = c.one(ts, sent)
        model.check(ts, sent, port, reason, new)
        assert (port, reason) == PASS and valid(new)
        if sent is frame:
            public[(src, sport)] = fields(new)[0], fields(new)[2]
        else:
            assert new == frame
    assert len(public) == 13


def _readdress(frame: bytes, ip: str, port: int) -> bytes:
    """The frame sent to (ip, port) instead, checksums recomputed, trailer kept."""
    v = decode(frame)
    assert isinstance(v, View) and v.proto == 6
    b = bytearray(frame)
    b[v.l3 + 16 : v.l3 + 20] = socket.inet_aton(ip)
    b[v.l4 + 2 : v.l4 + 4] = port.to_bytes(2, "big")
    b[v.l3 + 10 : v.l3 + 12] = b[v.l4 + 16 : v.l4 + 18] = b"\0\0"
    b[v.l3 + 10 : v.l3 + 12] = dpkt.in_cksum(bytes(b[v.l3 : v.l4])).to_bytes(2, "big")
    seg = bytes(b[v.l4 : v.end])
    pseudo = bytes(b[v.l3 + 12 : v.l3 + 20]) + struct.pack("!BBH", 0, 6, len(seg))
    b[v.l4 + 16 : v.l4 + 18] = dpkt.in_cksum(pseudo + seg).to_bytes(2, "big")
    return bytes(b)


@pytest.mark.parametrize(
    ("capture", "inside"),
    [
        ("tcpreplay-test.pcap", ["172.16.11.0/24", "192.168.1.0/24"]),
        ("zeek-wikipedia.pcap", ["141.142.220.0/24"]),
        ("zeek-ipv4-fragmented.pcap", ["164.1.123.163"]),
        ("zeek-http-vlan.pcap", ["141.142.228.0/24"]),
        ("suricata-udp-flow.pcap", ["192.168.0.2"]),
        ("suricata-tcp-async.pcap", ["10.0.1.0/24"]),
    ],
)
def test_real_captures_match_model(
    traffic: Callable[[str], Path], capture: str, inside: list[str]
) -> None:
    """Captures as they are (no replies to public endpoints): never a crash, every
    verdict and byte as the model says, checksums valid wherever they were."""
    _, packets = read_pcap(traffic(capture))
    config = cfg(inside=inside)
    c, model = Cluster(config, 2), NatModel(config, 2)
    outs = c(packets)
    for (ts, frame), (port, reason, new) in zip(packets, outs, strict=True):
        model.check(ts, frame, port, reason, new)
    assert model.new_bindings or capture == "suricata-tcp-async.pcap"


# -- config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "loc", "text"),
    [
        ({"public_ips": [PUB]}, ("inside",), "required"),
        (cfg(inside=[]), ("inside",), "non-empty"),
        (cfg(inside=["2001:db8::/32"]), ("inside",), "IPv4"),
        (cfg(inside=["10.0.0.1/8"]), ("inside",), "host bits"),
        (cfg(public_ips=[]), ("public_ips",), "at least 1"),
        (cfg(public_ips=["2001:db8::1"]), ("public_ips",), "IPv4"),
        (cfg(public_ips=["192.0.2.0/24"]), ("public_ips",), "IPv4"),
        (cfg(public_ips=[PUB, PUB]), ("public_ips",), "twice"),
        (cfg(public_ips=["10.0.0.9"]), ("public_ips",), "inside"),
        (cfg(public_ips=["224.0.0.1"]), ("public_ips",), "unicast"),
        (cfg(ports="0-100"), ("ports",), "1 <= lo"),
        (cfg(ports="9-3"), ("ports",), "lo <= hi"),
        (cfg(ports="many"), ("ports",), "lo-hi"),
        (cfg(ports=True), ("ports",), "lo-hi"),
        (cfg(ports="1-70000"), ("ports",), "65535"),
        (cfg(filtering="full-cone"), ("filtering",), "endpoint-independent"),
        (cfg(timeouts={"udp": 0}), ("timeouts", "udp"), "greater than 0"),
        (cfg(timeouts={"tcp_closing": 5}), ("timeouts", "tcp_closing"), "Extra inputs"),
        (cfg(port_forwards=[{**FWD, "proto": "icmp"}]), ("port_forwards", 0, "proto"), "tcp"),
        (
            cfg(port_forwards=[{**FWD, "public": "192.0.2.1"}]),
            ("port_forwards", 0, "public"),
            "IPv4:port",
        ),
        (
            cfg(port_forwards=[{**FWD, "public": f"{PUB}:0"}]),
            ("port_forwards", 0, "public"),
            "1..65535",
        ),
        (
            cfg(port_forwards=[{**FWD, "inside": "10.0.0:80"}]),
            ("port_forwards", 0, "inside"),
            "IPv4",
        ),
        (
            cfg(port_forwards=[{**FWD, "public": f"{PUB2}:443"}]),
            ("port_forwards",),
            "not one of public_ips",
        ),
        (
            cfg(port_forwards=[{**FWD, "inside": "172.16.0.1:80"}]),
            ("port_forwards",),
            "inside networks",
        ),
        (
            cfg(port_forwards=[FWD, {**FWD, "inside": "10.0.0.6:1"}]),
            ("port_forwards",),
            "port_forwards[0]",
        ),
        (
            cfg(port_forwards=[FWD, {**FWD, "public": f"{PUB}:444"}]),
            ("port_forwards",),
            "same tcp inside",
        ),
        (cfg(nat="yes"), ("nat",), "Extra inputs"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, Any], loc: tuple, text: str) -> None:
    with pytest.raises(ValidationError) as info:
        NatConfig.model_validate(config)
    errors = info.value.errors()
    assert errors[0]["loc"] == loc, errors
    assert text in errors[0]["msg"], errors


def test_config_defaults() -> None:
    config = NatConfig.model_validate(BASE)
    t = config.timeouts
    assert (t.tcp, t.tcp_transitory, t.udp, t.icmp) == (7440, 240, 300, 60)
    assert config.ports == "1024-65535" and config.port_forwards == []
    ok = cfg(port_forwards=[FWD, {**FWD, "proto": "UDP"}])  # same endpoints, other protocol
    assert NatConfig.model_validate(ok).port_forwards[1].proto == "udp"
    assert all(f.description for f in NatConfig.model_fields.values())


def test_registered() -> None:
    from snf.core.registry import get_function

    assert get_function("nat") is Nat
    assert (Nat.key, Nat.key_flow_consistent, Nat.tables) == (
        "custom",
        True,
        ("bind", "rev", "frag"),
    )
