"""The load balancer's batch path (functions/loadbalancer/fastpath.py, bulk.py)
against its per-packet path: the same ports, reasons, bytes, metrics, state
writes and keys, batch after batch (tests/twin.py), on every capture looped
(with its busiest endpoints made VIPs, and the backends answering), on
test_loadbalancer's random traffic across config changes, on damaged packets,
and rewrite by rewrite against nat_rewrite.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import snf.functions.loadbalancer.bulk as bulk
from snf.core.tables import BatchState
from snf.functions.loadbalancer import LoadBalancer, LoadBalancerConfig
from snf.functions.loadbalancer.net import nat_rewrite
from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers
from snf.packet.parse import parse_packet_batch
from snf.pipeline.loader import load_pipeline
from tests.packets import fragments4, tcp4, tcp6, udp4
from tests.twin import CAPTURES, ROOT, Twin, capture, looped
from tests.unit.test_loadbalancer import CLIENT, CONFIGS, VIP, B, random_traffic, web

EDGE: dict[str, Any] = (
    load_pipeline(ROOT / "pipelines" / "edge.yaml").function("lb").config.model_dump()
)


def twin(config: dict[str, Any], partitions: int = 1, linktype: int = 1) -> Twin:
    return Twin(lambda: make(config), partitions, linktype)


def make(config: dict[str, Any]) -> LoadBalancer:
    return LoadBalancer(LoadBalancerConfig.model_validate(config))


def _endpoint(addr: bytes, port: int) -> str:
    ip = ipaddress.ip_address(addr)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def busiest(linktype: int, packets: list[tuple[int, bytes]]) -> dict[str, Any]:
    """A config whose VIPs are the capture's two busiest TCP/UDP destinations,
    three backends each, in the same IP version."""
    batch = _batch(linktype, packets)
    h = parse_packet_batch(batch)
    seen = Counter(
        (h.proto[i], h.dst[i], h.dport[i])
        for i in range(len(h))
        if h.kind[i] == 0 and h.proto[i] in (6, 17) and h.frag[i] == 0
    )
    services = []
    for n, ((proto, addr, port), _) in enumerate(seen.most_common(2)):
        net = "10.9.{n}.{k}" if len(addr) == 4 else "[fd00::{n}:{k}]"
        backends = [{"address": net.format(n=n, k=k + 1) + ":8080"} for k in range(3)]
        services.append(
            {
                "vip": _endpoint(addr, port),
                "proto": {6: "tcp", 17: "udp"}[proto],
                "backends": backends,
            }
        )
    return {"services": services}


def _batch(linktype: int, packets: list[tuple[int, bytes]]) -> PacketBatch:
    rows = [(t, len(f), f, 1, i, "") for i, (t, f) in enumerate(packets)]
    return PacketBatch.from_rows(linktype, rows)


def answered(config: dict[str, Any], linktype: int, packets: list[tuple[int, bytes]]) -> list:
    """The capture as the backends answer: a reply of a VIP to a client whose flow
    went to a backend comes from that backend instead (checksums left as they were)."""
    batch = _batch(linktype, packets)
    h = parse_packet_batch(batch)
    backend: dict[tuple[int, bytes, int, bytes, int], bytes] = {}
    for i, (_, _, new) in enumerate(twin(config, linktype=linktype)(packets)):
        if h.kind[i] == 0 and h.proto[i] in (6, 17) and new != packets[i][1]:
            at, n = h.l3_off[i] + (16 if h.version[i] == 4 else 24), len(h.dst[i])
            l4 = h.l4_off[i]
            key = (h.proto[i], h.dst[i], h.dport[i], h.src[i], h.sport[i])
            backend[key] = new[at : at + n] + new[l4 + 2 : l4 + 4]
    out = []
    for i, (ts, frame) in enumerate(packets):
        five = (h.proto[i], h.src[i], h.sport[i], h.dst[i], h.dport[i])
        found = backend.get(five) if h.kind[i] == 0 else None
        if found is not None:
            b, n = bytearray(frame), len(h.src[i])
            at, l4 = h.l3_off[i] + (12 if h.version[i] == 4 else 8), h.l4_off[i]
            b[at : at + n], b[l4 : l4 + 2] = found[:n], found[n:]
            frame = bytes(b)
        out.append((ts, frame))
    return out


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_captures_looped(path: Path) -> None:
    """Looped at the same times (as `snf run -l`), then after every flow expired."""
    linktype, packets = capture(path)
    config = EDGE if path.name == "edge.pcapng" else busiest(linktype, packets)
    packets = looped(answered(config, linktype, packets), [0, 0, 1000, 1000.5])
    for size in (512, 25):
        t = twin(config, linktype=linktype)
        outs = t(packets, batch_size=size)
        t.assert_same_state()
        if path.name in ("edge.pcapng", "zeek-http-bro.org.pcap"):
            assert sum(o[2] != f for o, (_, f) in zip(outs, packets, strict=True)) > 500


@pytest.mark.parametrize("min_bulk", [1, bulk.MIN_BULK])
@pytest.mark.parametrize("seed", [1, 2])
def test_random_traffic_across_config_changes(seed: int, min_bulk: int, monkeypatch: Any) -> None:
    """test_loadbalancer's traffic: picks, replies from right and wrong backends,
    IPv6, time jumps, backends added and removed, an empty pool."""
    monkeypatch.setattr(bulk, "MIN_BULK", min_bulk)
    rnd = random.Random(seed)
    t = twin(CONFIGS[0])
    for config, segment in zip(CONFIGS, random_traffic(seed, 2000), strict=True):
        t.reconfigure(lambda config=config: make(config))
        pos = 0
        while pos < len(segment):
            size = rnd.choice([1, 9, 64, 512])
            t(segment[pos : pos + size])
            pos += size
    t.assert_same_state()


@pytest.mark.parametrize("seed", [1, 2])
def test_evictions_from_a_full_table(seed: int) -> None:
    """max_entries 7: the same victims, batch by batch, on both paths."""
    rnd = random.Random(seed)
    t = twin({**CONFIGS[0], "max_entries": 7})
    for config, segment in zip(CONFIGS, random_traffic(seed, 2000), strict=True):
        t.reconfigure(lambda config=config: make({**config, "max_entries": 7}))
        pos = 0
        while pos < len(segment):
            size = rnd.choice([1, 9, 64, 512])
            t(segment[pos : pos + size])
            pos += size
        assert len(t.table("conn")) <= 7
    t.assert_same_state()


@pytest.mark.parametrize("min_bulk", [1, bulk.MIN_BULK])
def test_damaged_packets(min_bulk: int, monkeypatch: Any) -> None:
    monkeypatch.setattr(bulk, "MIN_BULK", min_bulk)
    rnd = random.Random(5)
    t = twin(web(B[:3]))
    good = [tcp4(CLIENT, VIP, 40000 + k, 80, "A") for k in range(5)] + [
        udp4(CLIENT, VIP, 40000, 53, b"q"),
        tcp6("2001:db8::1", "2001:db8::2", 1, 2),
    ]
    outs = t([(0, f) for f in good])
    backends = [".".join(map(str, frame[30:34])) for _, _, frame in outs[:5]]
    good += [tcp4(b, CLIENT, 8080, 40000 + k, "A") for k, b in enumerate(backends)]
    good += fragments4(CLIENT, VIP, 40000, 53, bytes(40), frag_size=16)
    packets = []
    for _ in range(3000):
        frame = bytearray(rnd.choice(good))
        for _ in range(rnd.randint(0, 3)):
            frame[rnd.randrange(14, len(frame))] = rnd.randrange(256)
        cut = rnd.choice([len(frame), len(frame), rnd.randint(0, len(frame))])
        packets.append((rnd.randrange(10**9), bytes(frame[:cut])))
    assert len(t(packets, batch_size=300)) == len(packets)


@pytest.mark.parametrize(
    "damage",
    [{"dport": [80] * 9}, {"l4_off": [34] * 9}, {"tcp_flags": []}, {"l4_off": [20] * 10}],
    ids=lambda d: ",".join(f"{k}{len(v)}" for k, v in d.items()),
)
def test_damaged_headers(damage: dict[str, list[Any]]) -> None:
    """Columns of the wrong length or values no parser gives: both alike."""
    t = twin(web(B[:3]))
    first = [tcp4(CLIENT, VIP, 40000 + k, 80, "S") for k in range(5)]
    backends = [".".join(map(str, frame[30:34])) for _, _, frame in t([(0, f) for f in first])]
    frames = first + [tcp4(b, CLIENT, 8080, 40000 + k, "A") for k, b in enumerate(backends)]
    batch = _batch(1, [(1, f) for f in frames])
    got = []
    for lb, stores in ((t.fast, t.stores[0]), (t.each, t.stores[1])):
        headers = parse_packet_batch(batch)
        broken = Headers(**{f: list(getattr(headers, f)) for f in Headers.__dataclass_fields__})
        for name, value in damage.items():
            setattr(broken, name, value)
        state = BatchState(dict(stores), deferred=True)
        d = lb.process(batch, broken, state)
        try:
            hashes: Any = lb.key_hashes(batch, broken)
        except IndexError as e:  # the per-packet path's key_hashes does not catch
            hashes = type(e)
        got.append((d.ports, d.reasons, d.replaced, +d.metrics, state.pending(), hashes))
    assert got[0][:4] == got[1][:4] and got[0][5] == got[1][5]
    assert {k: dict(v) for k, v in got[0][4].items()} == {k: dict(v) for k, v in got[1][4].items()}


def test_bulk_rewrite_is_nat_rewrite() -> None:
    """Random checksums (0 and 0xFFFF included), UDP without checksum, unchanged
    address or port, L4 checksum not captured."""
    rnd = random.Random(8)
    frames, jobs = [], []
    for n in range(600):
        kind = rnd.choice(["tcp", "udp", "udp0", "cut"])
        if kind == "cut":
            frame = bytearray(tcp4(CLIENT, VIP, 5000, 80)[: 34 + rnd.randint(4, 17)])
        elif kind == "tcp":
            frame = bytearray(tcp4(CLIENT, VIP, rnd.randrange(65536), 80))
        else:
            frame = bytearray(udp4(CLIENT, VIP, rnd.randrange(65536), 53, b"x"))
        which = rnd.randrange(2)
        old = bytes(frame[26 + 4 * which : 30 + 4 * which] + frame[34 + 2 * which : 36 + 2 * which])
        new = rnd.choice(
            [old, old[:4] + rnd.randbytes(2), rnd.randbytes(4) + old[4:], rnd.randbytes(6)]
        )
        frame[24:26] = rnd.choice([b"\0\0", b"\xff\xff", rnd.randbytes(2)])
        at = 40 if kind.startswith("udp") else 50
        if len(frame) >= at + 2:
            frame[at : at + 2] = (
                b"\0\0" if kind == "udp0" else rnd.choice([b"\0\0", b"\xff\xff", rnd.randbytes(2)])
            )
        frames.append(bytes(frame))
        jobs.append((n, which, new))
    batch = _batch(1, [(0, f) for f in frames])
    h = Headers(kind=[0] * len(frames), l3_off=[14] * len(frames), l4_off=[34] * len(frames))
    h.proto = [f[23] for f in frames]
    together: dict[int, bytes] = {}
    rw = bulk.Rewrites(batch, h, together)
    for i, which, new in jobs:
        rw.index[which].append(i)
        rw.new[which].append(new)
    assert len(rw) >= bulk.MIN_BULK and rw.apply() == []
    for i, which, new in jobs:
        expected = nat_rewrite(
            frames[i],
            4,
            14,
            34,
            h.proto[i],
            ("src", "dst")[which],
            new[:4],
            int.from_bytes(new[4:], "big"),
        )
        assert together[i] == expected, i


@pytest.mark.parametrize(
    ("table", "damage"),
    [
        ("conn", lambda v: [v[0], float(v[1]), *v[2:]]),
        ("conn", lambda v: ["zz", *v[1:]]),
        ("conn", lambda v: v[:3]),
        ("conn", lambda v: [*v[:3], 3.0]),
        ("conn", lambda v: [v[0], v[1], float(v[2]), v[3]]),
        ("back", lambda v: [v[0], float(v[1])]),
        ("back", lambda v: [v[0][:4], v[1]]),
        ("back", lambda v: [v[0], 70000]),
    ],
)
def test_state_no_load_balancer_wrote(table: str, damage: Any) -> None:
    """Values of another shape in the tables: both paths alike, nothing raised."""
    t = twin(web(B[:3]))
    requests = [tcp4(CLIENT, VIP, 40000 + k, 80, "S") for k in range(30)]
    outs = t([(0, f) for f in requests])
    replies = [
        tcp4(".".join(map(str, f[30:34])), CLIENT, 8080, 40000 + k, "A")
        for k, (_, _, f) in enumerate(outs)
    ]
    t([(1, f) for f in replies + requests])  # the caches know them all now
    for stores in t.stores:
        data = stores[table].data
        for key in list(data)[::2]:
            data[key] = damage(data[key])
    t([(2, f) for f in replies + requests])
    t.assert_same_state()
