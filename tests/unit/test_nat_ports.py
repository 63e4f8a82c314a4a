"""NAT port allocation (functions/nat/portsets.py) and bounded state (sweep, max_entries).

A `Shell` runs one Nat for every partition in its FunctionEngine, as a worker
does (BatchState.partition set, the control table present, so the engine
sweeps). The port sets are derived from the tables, so a core that forgets
them, or a new core on the same tables (a takeover), must choose exactly as
one that never did: the outputs and the tables are compared packet by packet.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence
from typing import Any

import pytest

from snf.core.contract import SweepContext
from snf.core.engine import FunctionEngine
from snf.core.tables import CONTROL_TABLE, BatchState
from snf.functions.nat import Nat, NatConfig
from snf.functions.nat.ports import layout
from snf.packet.batch import PacketBatch
from snf.packet.flowkey import endpoint_hash
from snf.packet.fragments import FlowRouter
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.parse import parse_packet_batch
from tests.harness import JsonStore
from tests.nat_model import NatModel
from tests.packets import fragments4, tcp4, udp4
from tests.unit.test_nat import H1, H2, H3, PROP_CONFIG, R1, R2, Out, Traffic, at, cfg, fields

PUB = socket.inet_aton("192.0.2.1")


class ReadCounting(JsonStore):
    """JsonStore that also counts reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, key: bytes) -> Any | None:
        self.reads += 1
        return super().get(key)


class Shell:
    """One Nat for all partitions, in its engine, state per partition, fed through a
    FlowRouter over the core's key_hashes."""

    def __init__(self, config: dict[str, Any], partitions: int = 1) -> None:
        self.config = config
        self.partitions = partitions
        tables = (*Nat.tables, CONTROL_TABLE)
        self.stores = [{t: ReadCounting() for t in tables} for _ in range(partitions)]
        self.router = FlowRouter()
        self.seq = 0
        self.restart()

    def restart(self) -> None:
        """A new core takes over: same tables, nothing derived from them."""
        self.nat = Nat(NatConfig.model_validate(self.config))
        self.nat.partitions = self.partitions
        self.engine = FunctionEngine(self.nat)

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
        hashes = self.nat.key_hashes(batch, headers)
        parts = self.router.route(headers, batch.records["ts_ns"], self.partitions, hashes=hashes)
        where = {pid: i for i, pid in enumerate(batch.packet_ids())}
        results: list[Out] = [("", "", b"")] * len(rows)
        for p in sorted(set(parts)):
            sub = batch.select([i for i, q in enumerate(parts) if q == p])
            state = BatchState(dict(self.stores[p]), partition=p)
            for port, done in self.engine.handle(sub, state).packets.items():
                for j, pid in enumerate(done.packet_ids()):
                    results[where[pid]] = (port, done.reason_of(j), done.packet(j))
        return results

    def one(self, ts: int, frame: bytes) -> Out:
        return self([(ts, frame)])[0]

    def table(self, name: str) -> dict[bytes, Any]:
        return {k: v for s in self.stores for k, v in s[name].data.items()}

    def reads(self) -> int:
        return sum(s.reads for part in self.stores for s in part.values())


def fill(shell: Shell, ports: Sequence[int], last_seen: int, proto: int = 17) -> None:
    """Bindings of 10.1.x.y:5000 holding `ports` of 192.0.2.1, written to the tables
    directly (partition 0), then forgotten by the core, as after a takeover."""
    bind, rev = shell.stores[0]["bind"].data, shell.stores[0]["rev"].data
    for n, port in enumerate(ports):
        ip = bytes((10, 1, n >> 8 & 0xFF, n & 0xFF))
        bind[bytes((proto,)) + ip + (5000).to_bytes(2, "big")] = [PUB.hex(), port, last_seen, 0, []]
        rev[bytes((proto,)) + PUB + port.to_bytes(2, "big")] = [ip.hex(), 5000]
    shell.nat.forget(0)


def new_flow(n: int) -> bytes:
    return udp4(f"10.2.{n >> 8 & 0xFF}.{n & 0xFF}", "8.8.8.8", 6000, 53)


# -- the choice is a function of the tables -------------------------------------------


@pytest.mark.parametrize("sweep", [0, 1])
@pytest.mark.parametrize("partitions", [1, 3])
@pytest.mark.parametrize("ports", ["40000-40011", "1024-65535"])
def test_forget_and_takeover_choose_as_before(ports: str, partitions: int, sweep: int) -> None:
    config = {**PROP_CONFIG, "ports": ports, "sweep_interval": sweep}
    ref, other = Shell(config, partitions), Shell(config, partitions)
    model, traffic, rnd = NatModel(config, partitions), Traffic(21), random.Random(4)
    for _ in range(30):
        packets = traffic.round(12)
        size = rnd.choice([1, 5, 512])
        outs = ref(packets, size)
        for (ts, frame), (port, reason, new) in zip(packets, outs, strict=True):
            model.check(ts, frame, port, reason, new)
        pick = rnd.randrange(3)
        if pick == 0:
            other.nat.forget(rnd.randrange(partitions))
        elif pick == 1:
            other.restart()
        assert other(packets, size) == outs
        traffic.learn(packets, outs)
    for name in (*Nat.tables, CONTROL_TABLE):
        assert other.table(name) == ref.table(name), name
    assert model.new_bindings > 10


def test_exhaustion_is_answered_at_once() -> None:
    shell = Shell(cfg(inside=["10.0.0.0/8"]), 1)
    fill(shell, range(1024, 65536), at(0))
    assert shell.one(at(1), new_flow(0))[:2] == ("drop", "ports_exhausted")  # builds the sets
    before = shell.reads()
    outs = shell([(at(1), new_flow(n)) for n in range(1, 201)], batch_size=1)
    assert {o[:2] for o in outs} == {("drop", "ports_exhausted")}
    assert (shell.reads() - before) / 200 < 8  # a walk would read every port's rev entry
    assert len(shell.table("bind")) == 65536 - 1024


def test_a_new_binding_costs_the_same_reads_empty_or_nearly_full() -> None:
    reads = []
    for held in (0, 64_000):
        shell = Shell(cfg(inside=["10.0.0.0/8"]), 1)
        fill(shell, random.Random(3).sample(range(1024, 65536), held), at(0))
        shell.one(at(1), new_flow(0))
        before = shell.reads()
        outs = shell([(at(1), new_flow(n)) for n in range(1, 401)], batch_size=1)
        assert {o[:2] for o in outs} == {("pass", "")}
        reads.append(shell.reads() - before)
    assert reads[0] == reads[1]


def test_first_free_port_from_the_hashed_start_then_the_earliest_expired() -> None:
    shell = Shell(cfg(ports="40000-40002", sweep_interval=0), 1)
    got = [fields(shell.one(at(n), udp4(f"10.0.0.{n + 1}", R1, 5000, 53))[2])[2] for n in range(3)]
    assert sorted(got) == [40000, 40001, 40002]
    assert shell.one(at(3), udp4("10.0.0.9", R1, 5000, 53))[:2] == ("drop", "ports_exhausted")
    shell.one(at(200), udp4("10.0.0.1", R1, 5000, 53))  # refreshed: 10.0.0.2 expires first
    out = shell.one(at(301.5), udp4("10.0.0.9", R1, 5000, 53))  # udp timeout 300 s
    assert out[:2] == ("pass", "") and fields(out[2])[2] == got[1]
    assert ep(17, "10.0.0.2", 5000) not in shell.table("bind")  # the expired owner went
    out = shell.one(at(302.5), udp4("10.0.0.8", R1, 5000, 53))
    assert fields(out[2])[2] == got[2]  # 10.0.0.3's, expired next
    assert shell.one(at(303), udp4("10.0.0.7", R1, 5000, 53))[:2] == ("drop", "ports_exhausted")


def test_an_expired_binding_takes_its_own_port_back() -> None:
    shell = Shell(cfg(sweep_interval=0), 1)
    first = fields(shell.one(at(0), udp4("10.0.0.1", R1, 5000, 53))[2])[2]
    writes = sum(s.sets for s in shell.stores[0].values())
    again = fields(shell.one(at(1000), udp4("10.0.0.1", R1, 5000, 53))[2])[2]
    assert again == first
    assert sum(s.sets for s in shell.stores[0].values()) - writes == 1  # bind only, rev kept


@pytest.mark.parametrize("forget", [False, True])
@pytest.mark.parametrize("fast", [True, False])
def test_a_rst_brings_the_expiry_earlier(fast: bool, forget: bool) -> None:
    config = cfg(ports="40000-40001", sweep_interval=0, timeouts={"tcp_transitory": 240})
    shell = Shell(config, 1)
    shell.nat.fast_path = fast
    port = fields(shell.one(at(0), tcp4(H1, R1, 5000, 80, "S"))[2])[2]
    shell.one(at(1), tcp4(R1, "192.0.2.1", 80, port, "SA"))
    shell([(at(2), tcp4(H1, R1, 5000, 80, "A"))] * 3)  # established: 7440 s
    shell.one(at(100), tcp4(H2, R1, 5000, 80, "S"))  # half-open: 240 s
    probe = tcp4(H3, R1, 5000, 80, "S")
    assert shell.one(at(300), probe)[:2] == ("drop", "ports_exhausted")
    shell([(at(301), tcp4(H1, R1, 5000, 80, "R"))] * 2)  # the batch path, if on: 240 s
    shell.one(at(330), tcp4(H2, R1, 5000, 80, "S"))  # H2 now expires at 570 s
    if forget:
        shell.nat.forget(0)
    assert shell.one(at(400), probe)[:2] == ("drop", "ports_exhausted")
    out = shell.one(at(560), probe)  # H1's binding expired at 541 s
    assert out[:2] == ("pass", "") and fields(out[2])[2] == port


def test_partition_affinity_and_exhaustion_per_partition() -> None:
    partitions, shell = 4, Shell(cfg(inside=["10.0.0.0/8"], ports="40000-40255"), 4)
    got: dict[int, list[int]] = {q: [] for q in range(partitions)}
    for n in range(600):
        host, sport = f"10.0.{n // 200}.{n % 200 + 1}", 7000
        home = endpoint_hash(17, socket.inet_aton(host), sport) % partitions
        out = shell.one(at(0), udp4(host, R1, sport, 53))
        if out[1] == "ports_exhausted":
            continue
        port = fields(out[2])[2]
        assert endpoint_hash(17, PUB, port) % partitions == home
        got[home].append(port)
    lay = layout(17, PUB, 40000, 40255, partitions)
    for q in range(partitions):
        assert sorted(got[q]) == list(lay.share[q])  # every port of the share, once


def test_layout_splits_the_range() -> None:
    lay = layout(6, PUB, 1024, 3071, 5)
    assert sorted(p for share in lay.share for p in share) == list(range(1024, 3072))
    for q, share in enumerate(lay.share):
        assert list(share) == sorted(share)
        for i, port in enumerate(share):
            assert lay.part[port - 1024] == q == endpoint_hash(6, PUB, port) % 5
            assert lay.slot[port - 1024] == i


def ep(proto: int, ip: str, port: int) -> bytes:
    return bytes((proto,)) + socket.inet_aton(ip) + port.to_bytes(2, "big")


# -- bounded state ---------------------------------------------------------------------


def test_sweep_deletes_expired_bindings_and_fragments_and_frees_ports() -> None:
    shell = Shell(cfg(ports="40000-40001", timeouts={"udp": 30}), 1)
    shell.one(at(0), udp4("10.0.0.1", R1, 5000, 53))
    shell.one(at(10), udp4("10.0.0.2", R1, 5000, 53))
    first = fragments4("10.0.0.3", R1, 5000, 53, bytes(40), frag_size=16)[0]
    assert shell.one(at(0), first)[1] == "ports_exhausted"  # remembered in frag all the same
    assert len(shell.table("bind")) == 2 and len(shell.table("frag")) == 1
    shell.one(at(20), udp4("10.0.0.2", R1, 5000, 53))  # refreshed
    shell.one(at(35), udp4(R2, "198.51.100.9", 1, 2))  # packet time moves on
    assert set(shell.table("bind")) == {ep(17, "10.0.0.2", 5000)}  # 10.0.0.1 swept at 31 s
    assert len(shell.table("frag")) == 0 and len(shell.table("rev")) == 1
    shell.one(at(60), udp4(R2, "198.51.100.9", 1, 2))
    assert not shell.table("bind") and not shell.table("rev")


def test_sweep_removes_the_earliest_first_up_to_its_limit() -> None:
    shell = Shell(cfg(sweep_interval=0, timeouts={"udp": 30}), 1)
    for n in range(6):
        shell.one(at(n), udp4(f"10.0.0.{n + 1}", R1, 5000, 53))
    state = BatchState(dict(shell.stores[0]), partition=0)
    shell.nat.sweep(state, SweepContext(0, at(100), limit=4))
    state.write_back()
    assert set(shell.table("bind")) == {ep(17, "10.0.0.5", 5000), ep(17, "10.0.0.6", 5000)}


def test_max_entries_evicts_half_open_tcp_first_then_refuses() -> None:
    shell = Shell(cfg(max_entries=3, sweep_interval=0), 1)
    shell.one(at(0), tcp4("10.0.0.1", R1, 5000, 80, "S"))
    out = shell.one(at(1), tcp4("10.0.0.2", R1, 5000, 80, "S"))
    shell.one(at(2), tcp4(R1, "192.0.2.1", 80, fields(out[2])[2], "SA"))  # answered
    shell.one(at(3), udp4("10.0.0.3", R1, 5000, 53))
    assert shell.one(at(4), udp4("10.0.0.4", R1, 5000, 53))[:2] == ("pass", "")
    assert ep(6, "10.0.0.1", 5000) not in shell.table("bind")  # the half-open one went
    assert shell.engine.counters["evicted"] == 1
    assert len(shell.table("bind")) == len(shell.table("rev")) == 3
    assert shell.one(at(5), udp4("10.0.0.5", R1, 5000, 53))[:2] == ("drop", "table_full")
    assert shell.one(at(5), udp4("10.0.0.4", R1, 5000, 53))[:2] == ("pass", "")  # existing


@pytest.mark.parametrize("partitions", [1, 3])
def test_batch_cuts_change_nothing_with_sweeps_and_max_entries(partitions: int) -> None:
    config = {**PROP_CONFIG, "ports": "40000-40030", "max_entries": 4}
    ref, traffic, packets = Shell(config, partitions), Traffic(8), []
    for _ in range(30):
        batch = traffic.round(12)
        traffic.learn(batch, ref(batch, 512))
        packets += batch
    results = []
    for size in (1, 7, 512):
        shell = Shell(config, partitions)
        outs = shell(packets, size)
        tables = [shell.table(t) for t in (*Nat.tables, CONTROL_TABLE)]
        results.append((outs, tables, shell.engine.counters))
    assert results[0] == results[1] == results[2]
    counters = results[0][2]
    assert counters["evicted"] and counters["drop:table_full"], counters


def test_a_forward_port_held_by_an_older_binding_is_never_allocated() -> None:
    forward = {"proto": "udp", "public": "192.0.2.1:40000", "inside": "10.0.0.5:53"}
    config = cfg(inside=["10.0.0.0/8"], ports="40000-40001", port_forwards=[forward])
    shell = Shell({**config, "sweep_interval": 0}, 1)
    fill(shell, [40000], at(0))  # left by a config without the forward
    assert fields(shell.one(at(1), new_flow(1))[2])[2] == 40001
    assert shell.one(at(1), new_flow(2))[1] == "ports_exhausted"
    assert fields(shell.one(at(1000), new_flow(3))[2])[2] == 40001  # new_flow(1)'s, expired
    assert shell.one(at(1000), new_flow(4))[1] == "ports_exhausted"
