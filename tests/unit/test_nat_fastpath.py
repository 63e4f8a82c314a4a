"""The NAT's batch path (functions/nat/fastpath.py, bulk.py) against its per-packet
path: the same ports, reasons, bytes, state writes and keys, batch after batch
(tests/twin.py), on every capture looped, on test_nat's random traffic, on
damaged packets and headers, and rewrite by rewrite against snf.packet.rewrite.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

import snf.functions.nat.bulk as bulk
from snf.core.tables import BatchState
from snf.functions.nat import Nat, NatConfig
from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.parse import parse_packet_batch
from snf.packet.rewrite import csum_adjust
from snf.pipeline.loader import load_pipeline
from tests.packets import fragments4, icmp4_echo, icmp4_error, tcp4, udp4
from tests.twin import CAPTURES, ROOT, Twin, capture, looped
from tests.unit.test_nat import PROP_CONFIG, Traffic, at, cfg, zero_udp_checksum

EDGE: dict[str, Any] = (
    load_pipeline(ROOT / "pipelines" / "edge.yaml").function("nat").config.model_dump()
)
# The inside networks of each capture (as test_nat's model test has them).
INSIDE = {
    "tcpreplay-test.pcap": ["172.16.11.0/24", "192.168.1.0/24"],
    "zeek-wikipedia.pcap": ["141.142.220.0/24"],
    "zeek-ipv4-fragmented.pcap": ["164.1.123.163"],
    "zeek-http-vlan.pcap": ["141.142.228.0/24"],
    "zeek-http-bro.org.pcap": ["10.0.2.0/24"],
    "zeek-ipv6.pcap": ["10.0.0.0/8"],
    "suricata-udp-flow.pcap": ["192.168.0.2"],
    "suricata-tcp-async.pcap": ["10.0.1.0/24"],
    "monitoring.pcapng": ["10.5.0.0/16"],
    "vpn.pcapng": ["10.1.0.0/16"],
}


def config_for(path: Path, **fields: Any) -> dict[str, Any]:
    if path.name == "edge.pcapng":
        return {**EDGE, **fields}
    return {**cfg(inside=INSIDE[path.name], public_ips=["192.0.2.1", "192.0.2.2"]), **fields}


def twin(config: dict[str, Any], partitions: int = 1, linktype: int = 1) -> Twin:
    return Twin(lambda: Nat(NatConfig.model_validate(config)), partitions, linktype)


def answered(config: dict[str, Any], linktype: int, packets: list[tuple[int, bytes]]) -> list:
    """The capture as the outside answers the NAT: a packet to an inside endpoint the
    NAT mapped goes to its public endpoint instead (checksums left as they were)."""
    ref = twin(config, linktype=linktype)
    public: dict[tuple[int, bytes, int], bytes] = {}
    batch = PacketBatch.from_rows(
        linktype, [(t, len(f), f, 1, i, "") for i, (t, f) in enumerate(packets)]
    )
    h = parse_packet_batch(batch)
    for i, (_, _, new) in enumerate(ref(packets)):
        l3, l4 = h.l3_off[i], h.l4_off[i]
        if h.version[i] == 4 and h.proto[i] in (6, 17) and new[l3 + 12 : l3 + 16] != h.src[i]:
            public[h.proto[i], h.src[i], h.sport[i]] = new[l3 + 12 : l3 + 16] + new[l4 : l4 + 2]
    out = []
    for i, (ts, frame) in enumerate(packets):
        found = public.get((h.proto[i], h.dst[i], h.dport[i])) if h.version[i] == 4 else None
        if found is not None:
            b, l3, l4 = bytearray(frame), h.l3_off[i], h.l4_off[i]
            b[l3 + 16 : l3 + 20], b[l4 + 2 : l4 + 4] = found[:4], found[4:]
            frame = bytes(b)
        out.append((ts, frame))
    return out


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
@pytest.mark.parametrize("partitions", [1, 4])
def test_captures_looped(path: Path, partitions: int) -> None:
    """Looped at the same times (as `snf run -l`), then after every binding expired."""
    linktype, packets = capture(path)
    config = config_for(path)
    seen = answered(config, linktype, packets)
    packets = looped(seen, [0, 0, 9000, 9000.5])
    for size in (512, 25) if partitions == 1 else (512,):
        t = twin(config, partitions, linktype)
        outs = t(packets, batch_size=size)
        t.assert_same_state()
        assert len(outs) == len(packets)


def test_edge_capture_one_packet_batches_and_filtering_modes() -> None:
    linktype, packets = capture(ROOT / "pipelines" / "captures" / "edge.pcapng")
    twin(EDGE, linktype=linktype)(looped(packets, [0, 100]), batch_size=1)
    for mode in ("endpoint-independent", "address-dependent"):
        twin({**EDGE, "filtering": mode}, linktype=linktype)(looped(packets, [0, 0, 500]))


def test_edge_capture_is_mostly_fast() -> None:
    """The capture's translated packets are rewritten in bulk (not per packet)."""
    linktype, packets = capture(ROOT / "pipelines" / "captures" / "edge.pcapng")
    nat = Nat(NatConfig.model_validate(EDGE))
    batch = PacketBatch.from_rows(
        linktype, [(t, len(f), f, 1, i, "") for i, (t, f) in enumerate(packets * 2)]
    )
    state = BatchState(BatchState.memory(Nat.tables))
    nat.process(batch, parse_packet_batch(batch), state)  # learn the bindings
    calls = 0
    decide = nat.decide

    def counted(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return decide(*args)

    nat.decide = counted  # type: ignore[method-assign]
    d = nat.process(batch, parse_packet_batch(batch), state)
    assert len(d.replaced) > 1000 and calls < 50


@pytest.mark.parametrize("min_bulk", [1, bulk.MIN_BULK])
@pytest.mark.parametrize(
    ("config", "seed", "partitions"),
    [
        (PROP_CONFIG, 1, 1),
        (PROP_CONFIG, 2, 4),
        ({**PROP_CONFIG, "ports": "40000-40002", "filtering": "address-dependent"}, 9, 2),
        ({**PROP_CONFIG, "filtering": "endpoint-independent"}, 5, 1),
    ],
)
def test_random_traffic(
    config: dict[str, Any], seed: int, partitions: int, min_bulk: int, monkeypatch: Any
) -> None:
    """test_nat's traffic: replies, ICMP errors both ways, fragments, forwards, expiry,
    exhaustion; in batches of 1 to 512."""
    monkeypatch.setattr(bulk, "MIN_BULK", min_bulk)
    t, traffic = twin(config, partitions), Traffic(seed)
    reasons: set[str] = set()
    for _ in range(25):
        packets = traffic.round(40)
        outs = t(packets, batch_size=traffic.rnd.choice([1, 7, 512]))
        traffic.learn(packets, outs)
        reasons.update(o[1] for o in outs)
    t.assert_same_state()
    assert {"", "no_binding", "fragment", "unsupported"} <= reasons
    assert ("filtered" in reasons) == (config.get("filtering") != "endpoint-independent")


@pytest.mark.parametrize("min_bulk", [1, bulk.MIN_BULK])
def test_damaged_packets(min_bulk: int, monkeypatch: Any) -> None:
    monkeypatch.setattr(bulk, "MIN_BULK", min_bulk)
    rnd = random.Random(11)
    t = twin(cfg(filtering="endpoint-independent"), partitions=3)
    _, _, new = t([(at(0), udp4("10.0.0.1", "198.51.100.1", 5000, 53))])[0]
    ip, port = new[26:30], int.from_bytes(new[34:36], "big")
    pub = ".".join(map(str, ip))
    good = [
        udp4("10.0.0.1", "198.51.100.1", 5000, 53),
        tcp4("10.0.0.1", "198.51.100.1", 5000, 80, "PA"),
        udp4("198.51.100.1", pub, 53, port),
        icmp4_echo("10.0.0.1", "198.51.100.1", ident=5000),
        zero_udp_checksum(udp4("10.0.0.1", "198.51.100.1", 5000, 53, b"z")),
        icmp4_error("198.51.100.1", pub, original=udp4(pub, "198.51.100.1", port, 53, ether=False)),
        *fragments4("10.0.0.1", "198.51.100.1", 5000, 53, bytes(40), frag_size=16),
    ]
    packets = []
    for _ in range(3000):
        frame = bytearray(rnd.choice(good))
        for _ in range(rnd.randint(0, 3)):
            frame[rnd.randrange(14, len(frame))] = rnd.randrange(256)
        cut = rnd.choice([len(frame), len(frame), rnd.randint(0, len(frame))])
        packets.append((at(rnd.random()), bytes(frame[:cut])))
    assert len(t(packets, batch_size=300)) == len(packets)


def _broken(headers: Headers, **fields: list[Any]) -> Headers:
    copy = Headers(**{f: list(getattr(headers, f)) for f in Headers.__dataclass_fields__})
    for name, value in fields.items():
        setattr(copy, name, value)
    return copy


def _batch(frames: list[bytes], seconds: float = 0) -> PacketBatch:
    rows = [(at(seconds), len(f), f, 1, i, "") for i, f in enumerate(frames)]
    return PacketBatch.from_rows(LINKTYPE_ETHERNET, rows)


@pytest.mark.parametrize(
    "fields",
    [
        {"l4_off": [9999] * 40},
        {"l3_off": [-1] * 40},
        {"l4_off": [20] * 40},
        {"sport": [70000] * 40},
        {"dport": [-1] * 40},
        {"src": [b"\x0a\x00\x00"] * 40},
        {"proto": [1] * 40},
        {"icmp_type": [0] * 40, "proto": [1] * 40},
        {"frag": [1] * 40},
        {"l4_off": [34] * 39},
        {"dport": [53] * 39},
        {"tcp_flags": []},
    ],
    ids=lambda f: ",".join(f),
)
def test_inconsistent_headers(fields: dict[str, list[Any]]) -> None:
    """Headers no parser gives (a shell's bug): both paths alike, nothing raised."""
    nats = [Nat(NatConfig.model_validate(cfg(filtering="endpoint-independent"))) for _ in "ab"]
    nats[1].fast_path = False
    stores = [BatchState.memory(Nat.tables) for _ in "ab"]
    first = [udp4("10.0.0.1", "198.51.100.1", 5000 + n, 53) for n in range(20)]
    warm = _batch(first)
    replies: list[bytes] = []
    for nat, store in zip(nats, stores, strict=True):
        state = BatchState(store)
        d = nat.process(warm, parse_packet_batch(warm), state)
        state.write_back()
        replies = [
            udp4("198.51.100.1", ".".join(map(str, r[26:30])), 53, int.from_bytes(r[34:36], "big"))
            for r in d.replaced.values()
        ]
    batch = _batch(first + replies, 1)
    got = []
    for nat, store in zip(nats, stores, strict=True):
        state = BatchState(store, deferred=True)
        headers = _broken(parse_packet_batch(batch), **fields)
        d = nat.process(batch, headers, state)
        writes = {table: dict(w) for table, w in state.pending().items()}
        got.append((d.ports, d.reasons, d.replaced, writes, nat.key_hashes(batch, headers)))
    assert got[0] == got[1]


def _sum_for_zero(old: bytes, new: bytes) -> int:
    """A checksum that csum_adjust turns into 0 for old -> new."""
    return next(c for c in range(0x10000) if csum_adjust(c, old, new) == 0)


def test_bulk_rewrite_is_the_per_packet_rewrite() -> None:
    """Random checksums (0 and 0xFFFF included), UDP without checksum, a computed
    zero UDP checksum, unchanged address or port, L4 checksum not captured."""
    rnd = random.Random(3)
    frames, jobs = [], []
    for n in range(600):
        kind = rnd.choice(["tcp", "udp", "udp0", "icmp", "cut"])
        if kind == "icmp":
            frame = bytearray(icmp4_echo("10.0.0.1", "198.51.100.1", ident=rnd.randrange(65536)))
        elif kind == "cut":
            frame = bytearray(tcp4("10.0.0.1", "198.51.100.1", 5000, 80)[: 34 + rnd.randint(4, 17)])
        else:
            frame = bytearray(udp4("10.0.0.1", "198.51.100.1", rnd.randrange(65536), 53, b"x"))
            if kind == "tcp":
                frame = bytearray(tcp4("10.0.0.1", "198.51.100.1", rnd.randrange(65536), 80))
        which = rnd.randrange(2)
        old = bytes(frame[26 + 4 * which : 30 + 4 * which])
        old_port = frame[34 + 2 * which : 36 + 2 * which]
        addr = rnd.choice([old, rnd.randbytes(4)])
        port = rnd.choice([int.from_bytes(old_port, "big"), rnd.randrange(65536)])
        frame[24:26] = rnd.choice([b"\0\0", b"\xff\xff", rnd.randbytes(2)])
        l4_sum = {"tcp": 50, "udp": 40, "udp0": 40, "icmp": 36, "cut": 50}[kind]
        if len(frame) >= l4_sum + 2:
            value = rnd.choice([b"\0\0", b"\xff\xff", rnd.randbytes(2)])
            if kind == "udp" and n % 10 == 0:
                moved = old + bytes(old_port), addr + port.to_bytes(2, "big")
                value = _sum_for_zero(*moved).to_bytes(2, "big")
            frame[l4_sum : l4_sum + 2] = b"\0\0" if kind == "udp0" else value
        frames.append(bytes(frame))
        jobs.append((n, which, addr, port))
    batch = _batch(frames)
    h = Headers(kind=[0] * len(frames), l3_off=[14] * len(frames), l4_off=[34] * len(frames))
    h.proto = [f[23] for f in frames]
    each: dict[int, bytes] = {}
    together: dict[int, bytes] = {}
    one, rw = bulk.Rewrites(batch, h, each), bulk.Rewrites(batch, h, together)
    for i, which, addr, port in jobs:
        one.one(i, which, addr, port)
        rw.index[which].append(i)
        rw.new[which].append(addr + port.to_bytes(2, "big"))
    assert len(rw) >= bulk.MIN_BULK and rw.apply() == []
    assert together == each


@pytest.mark.parametrize(
    ("table", "damage"),
    [
        ("bind", lambda v: [v[0], float(v[1]), *v[2:]]),
        ("bind", lambda v: ["zz", *v[1:]]),
        ("bind", lambda v: [v[0] + "00", *v[1:]]),
        ("bind", lambda v: v[:4]),
        ("bind", lambda v: [*v[:2], float(v[2]), *v[3:]]),
        ("bind", lambda v: [*v[:3], 99, v[4]]),
        ("bind", lambda v: [*v[:4], "c633"]),
        ("rev", lambda v: [v[0], float(v[1])]),
        ("rev", lambda v: [v[0][:6], v[1]]),
        ("rev", lambda v: [v[0], 70000]),
    ],
)
def test_state_no_nat_wrote(table: str, damage: Any) -> None:
    """Values of another shape in the tables (never written by the NAT): both paths
    alike, nothing raised."""
    t = twin(cfg(filtering="address-dependent"))
    hosts = [("10.0.0.1", 5000 + n) for n in range(30)]
    outs = t([(at(0), tcp4(h, "198.51.100.1", p, 80, "S")) for h, p in hosts])
    replies = [
        tcp4("198.51.100.1", ".".join(map(str, f[26:30])), 80, int.from_bytes(f[34:36], "big"), "A")
        for _, _, f in outs
    ]
    out_again = [tcp4(h, "198.51.100.1", p, 80, "A") for h, p in hosts]
    t([(at(0.5), f) for f in replies + out_again])  # the caches know them all now
    for stores in t.stores:
        data = stores[table].data
        for key in list(data)[::2]:
            data[key] = damage(data[key])
    t([(at(1), f) for f in replies + out_again])
    t.assert_same_state()
