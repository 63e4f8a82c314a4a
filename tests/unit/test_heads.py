"""Heads after ingress: cut packets, functions on heads, and the sink's join.

The property that makes heads safe: a pipeline fed heads (cut where a Kafka
worker cuts them) and joined back from the ingress copies produces exactly
what it produces from whole packets (snf.runtime.local with heads=True).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from snf.egress.collector import Collector
from snf.egress.wholes import WholeStore
from snf.ingress.replay import ReplayOptions, replay
from snf.packet.batch import PacketBatch
from snf.packet.heads import cut_heads, head_lengths
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.parse import parse_packet_batch
from snf.pipeline.loader import load_pipeline
from snf.runtime.local import LocalPipeline
from tests.packets import fragments4, icmp4_echo, tcp4, tcp6, udp4

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = [
    *sorted((ROOT.parent / "shared" / "traffic").glob("*.pcap")),
    ROOT / "pipelines" / "captures" / "edge.pcapng",
    ROOT / "pipelines" / "captures" / "monitoring.pcapng",
]


def batch_of(frames: list[bytes], first_seq: int = 0) -> PacketBatch:
    rows = [(i * 1000, len(f), f, 7, first_seq + i, "") for i, f in enumerate(frames)]
    return PacketBatch.from_rows(LINKTYPE_ETHERNET, rows)


def test_plain_tcp_and_udp_are_cut_after_their_l4_header() -> None:
    payload = b"x" * 300
    frames = [
        tcp4("10.0.0.1", "10.0.0.2", 1000, 80, "PA", payload),
        udp4("10.0.0.1", "10.0.0.2", 1000, 53, payload),
        tcp4("10.0.0.1", "10.0.0.2", 1000, 80, "PA", payload, vlan=10, options=bytes(8)),
        tcp6("2001:db8::1", "2001:db8::2", 1000, 80, "PA", payload),
    ]
    assert head_lengths(batch_of(frames)).tolist() == [
        14 + 20 + 20,
        14 + 20 + 8,
        18 + 28 + 20,
        14 + 40 + 20,
    ]


def test_what_is_not_plain_travels_whole() -> None:
    frames = [
        icmp4_echo("10.0.0.1", "10.0.0.2", ident=1, payload=b"p" * 200),  # not TCP/UDP
        *fragments4("10.0.0.1", "10.0.0.2", 1, 53, bytes(3000), ip_id=7),  # fragments
        b"\xff" * 14 + b"\x08\x00" + b"junk",  # cut short
        tcp4("10.0.0.1", "10.0.0.2", 1000, 80, "PA", b"")[:40],  # L4 header incomplete
    ]
    batch = batch_of(frames)
    assert head_lengths(batch).tolist() == batch.records["cap_len"].tolist()
    assert cut_heads(batch) is batch


def test_a_head_parses_like_its_whole_packet() -> None:
    frames = [tcp4("10.0.0.1", "10.0.0.2", 1000 + i, 80, "PA", b"y" * (100 + i)) for i in range(80)]
    whole = batch_of(frames)
    heads = cut_heads(whole)
    assert heads.records["full_len"].tolist() == whole.records["cap_len"].tolist()
    a, b = parse_packet_batch(whole), parse_packet_batch(heads)
    for f in dataclasses.fields(a):
        assert getattr(a, f.name) == getattr(b, f.name), f.name


def test_the_join_restores_every_byte_and_bounds_its_memory() -> None:
    frames = [udp4("10.0.0.1", "10.0.0.2", 1000 + i, 53, bytes([i]) * 500) for i in range(4)]
    whole = batch_of(frames)
    heads = cut_heads(whole)
    store = WholeStore()
    store.add(whole)
    ids = whole.packet_ids()
    joined = store.join(ids, heads.packets(), heads.records["cap_len"], heads.records["full_len"])
    assert joined == whole.packets()
    small = WholeStore(max_bytes=1)
    small.add(batch_of(frames[:2]))
    small.add(batch_of(frames[2:], first_seq=2))  # evicts the first batch's copies
    assert small.evicted == 2 and len(small) == 2
    rest = small.join(
        ids[:2], heads.packets()[:2], heads.records["cap_len"][:2], heads.records["full_len"][:2]
    )
    assert rest == heads.packets()[:2] and small.missing == 2


def _run(pipeline: Path, capture: Path, heads: bool, loop: int) -> Collector:
    p = load_pipeline(pipeline)
    local = LocalPipeline(p, heads=heads)
    opts = ReplayOptions(loop=loop, progress=False)
    summary = replay([capture], p.partitions, local, opts, keyers=local.ingress_hop.keyers)
    local.end_of_input(p.name, summary.last_ts_ns)
    return local.collector


@pytest.mark.parametrize("pipeline", ["perimeter", "edge", "monitoring", "tap"])
@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_heads_through_every_example_give_the_same_output(pipeline: str, capture: Path) -> None:
    path = ROOT / "pipelines" / f"{pipeline}.yaml"
    loop = 3 if capture.stat().st_size < 200_000 else 1
    whole, heads = _run(path, capture, False, loop), _run(path, capture, True, loop)
    assert whole.packets == heads.packets
    assert whole.records == heads.records
    assert heads.wholes.missing == 0


def test_heads_are_really_shipped() -> None:
    got = _run(
        ROOT / "pipelines" / "edge.yaml", ROOT / "pipelines" / "captures" / "edge.pcapng", True, 1
    )
    chunks = [c for t in got._terminals.values() for c in t.spool.chunks()]  # as received
    cut = sum(int(np.count_nonzero(rows["full_len"])) for rows, _ in chunks)
    assert cut > 0
    kept = sum(len(d) for _, datas in chunks for d in datas)
    assert kept < sum(int(rows["full_len"].sum()) for rows, _ in chunks)
