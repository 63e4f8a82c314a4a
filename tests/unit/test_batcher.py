"""Batcher: captured packets -> per-partition PacketBatches (ids, cuts, routing, link types)."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from snf.ingress.accumulator import Batcher
from snf.packet.batch import PacketBatch
from snf.packet.capture_file import CapturedPacket
from snf.packet.linktypes import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW
from tests.packets import sll, tcp4, tcp6, udp4

SOURCE = 0x5EED_0000_0001
T0 = 1_700_000_000 * 10**9
Sent = list[tuple[int, PacketBatch]]


def _frame(flow: int, reply: bool, i: int, *, ether: bool = True) -> bytes:
    """Packet i of flow `flow`, in the client->server or server->client direction."""
    payload = bytes([i % 256]) * (i % 7)
    if flow % 3 == 0:
        a, b, sp, dp = f"10.0.{flow}.1", f"192.0.2.{flow + 1}", 40000 + flow, 80
        build = tcp4
    elif flow % 3 == 1:
        a, b, sp, dp = f"10.1.{flow}.1", f"198.51.100.{flow + 1}", 50000 + flow, 53
        build = udp4
    else:
        a, b, sp, dp = f"2001:db8:{flow:x}::1", f"2001:db8:ffff::{flow:x}", 30000 + flow, 443
        build = tcp6
    if reply:
        a, b, sp, dp = b, a, dp, sp
    return build(a, b, sp, dp, payload=payload, ether=ether)


def _traffic(flows: int = 24, rounds: int = 4) -> tuple[list[CapturedPacket], list[int]]:
    """Interleaved flows, both directions; returns (packets, flow label per packet)."""
    packets, labels = [], []
    for r in range(rounds):
        for f in range(flows):
            data = _frame(f, reply=bool(r % 2), i=r)
            ts = T0 + (r * flows + f) * 1000
            packets.append(CapturedPacket(ts, len(data) + (f % 5), data, LINKTYPE_ETHERNET))
            labels.append(f)
    return packets, labels


def _feed(batcher: Batcher, packets: list[CapturedPacket], chunk: int) -> Sent:
    sent: Sent = []
    for start in range(0, len(packets), chunk):
        sent += batcher.add(packets[start : start + chunk])
    return sent + batcher.cut_all()


def _seqs(batch: PacketBatch) -> list[int]:
    return [seq for _, seq in batch.packet_ids()]


def _sized(size: int) -> CapturedPacket:
    """An Ethernet/IPv4/TCP frame of exactly `size` bytes, always the same flow."""
    data = tcp4("10.0.0.1", "10.0.0.2", 1234, 80, payload=bytes(size - 54))
    assert len(data) == size
    return CapturedPacket(T0, size, data, LINKTYPE_ETHERNET)


def test_cuts_a_batch_at_max_packets() -> None:
    batcher = Batcher(1, SOURCE, max_packets=4)
    full = batcher.add([_sized(60) for _ in range(10)])
    assert [_seqs(b) for _, b in full] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    rest = batcher.cut_all()
    assert [_seqs(b) for _, b in rest] == [[8, 9]]
    assert batcher.cut_all() == []


def test_cuts_a_batch_when_it_reaches_max_bytes() -> None:
    # Cumulative bytes: 100, 200, 260 -> cut; 200, 260 -> cut; 60, 360 -> cut; 70 pending.
    sizes = [100, 100, 60, 200, 60, 60, 300, 70]
    batcher = Batcher(3, SOURCE, max_bytes=250)
    full = batcher.add([_sized(s) for s in sizes])
    assert [_seqs(b) for _, b in full] == [[0, 1, 2], [3, 4], [5, 6]]
    for _, b in full:
        assert len(b.payload) >= 250
        assert len(b.payload) - len(b.packet(len(b) - 1)) < 250  # cut as soon as reached
    assert [_seqs(b) for _, b in batcher.cut_all()] == [[7]]


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_every_packet_gets_one_seq_in_capture_order(chunk: int) -> None:
    packets, _ = _traffic()
    sent = _feed(Batcher(4, SOURCE, max_packets=5), packets, chunk)
    got: dict[int, tuple] = {}
    for _, batch in sent:
        for ts, orig, data, sid, seq, reason in batch.rows():
            assert seq not in got
            assert sid == SOURCE and reason == ""
            got[seq] = (ts, orig, bytes(data))
    assert sorted(got) == list(range(len(packets)))
    assert [got[i] for i in range(len(packets))] == [(p.ts_ns, p.orig_len, p.data) for p in packets]


def test_first_seq_continues_numbering() -> None:
    packets, _ = _traffic(flows=3, rounds=2)
    sent = _feed(Batcher(2, SOURCE, first_seq=1000), packets, 4)
    assert sorted(s for _, b in sent for s in _seqs(b)) == list(range(1000, 1000 + len(packets)))


def test_seqs_increase_within_each_partition() -> None:
    packets, _ = _traffic()
    sent = _feed(Batcher(4, SOURCE, max_packets=3), packets, 10)
    per_part: dict[int, list[int]] = defaultdict(list)
    for part, batch in sent:
        per_part[part] += _seqs(batch)
    assert len(per_part) > 1
    for seqs in per_part.values():
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_both_directions_of_a_flow_land_in_one_partition() -> None:
    packets, labels = _traffic(flows=30)
    sent = _feed(Batcher(8, SOURCE, max_packets=4), packets, 16)
    parts_of_flow: dict[int, set[int]] = defaultdict(set)
    for part, batch in sent:
        assert 0 <= part < 8
        for seq in _seqs(batch):
            parts_of_flow[labels[seq]].add(part)
    assert len(parts_of_flow) == 30
    assert all(len(parts) == 1 for parts in parts_of_flow.values())
    assert len(set().union(*parts_of_flow.values())) > 2  # flows really spread


def _mixed_link_types() -> tuple[list[CapturedPacket], list[int]]:
    """The same flows seen through three link types, switching in the middle of a chunk."""
    packets, labels = [], []
    kinds = [LINKTYPE_ETHERNET, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL]
    for i in range(40):
        flow, reply = i % 5, bool(i % 2)
        lt = kinds[(i // 3) % len(kinds)]
        ip = _frame(flow, reply, i, ether=False)
        data = {
            LINKTYPE_ETHERNET: _frame(flow, reply, i),
            LINKTYPE_RAW: ip,
            LINKTYPE_LINUX_SLL: sll(ip),
        }[lt]
        packets.append(CapturedPacket(T0 + i, len(data), data, lt))
        labels.append(flow)
    return packets, labels


def test_link_type_change_mid_chunk_never_mixes_link_types_in_a_batch() -> None:
    packets, labels = _mixed_link_types()
    sent = _feed(Batcher(3, SOURCE, max_packets=4), packets, len(packets))
    parts_of_flow: dict[int, set[int]] = defaultdict(set)
    seen = []
    for part, batch in sent:
        for i, seq in enumerate(_seqs(batch)):
            assert packets[seq].linktype == batch.linktype
            assert batch.packet(i) == packets[seq].data
            parts_of_flow[labels[seq]].add(part)
            seen.append(seq)
    assert sorted(seen) == list(range(len(packets)))
    assert {b.linktype for _, b in sent} == {LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL}
    # The flow key looks through the link layer: a flow stays on one partition.
    assert all(len(parts) == 1 for parts in parts_of_flow.values())


def test_seqs_increase_within_each_partition_across_link_types() -> None:
    packets, _ = _mixed_link_types()
    sent = _feed(Batcher(3, SOURCE, max_packets=4), packets, len(packets))
    per_part: dict[int, list[int]] = defaultdict(list)
    for part, batch in sent:
        per_part[part] += _seqs(batch)
    for seqs in per_part.values():
        assert seqs == sorted(seqs)


def test_flush_returns_every_pending_packet_in_partition_order() -> None:
    packets, _ = _traffic()
    batcher = Batcher(5, SOURCE)
    assert batcher.add(packets) == []  # nothing reached a limit
    flushed = batcher.cut_all()
    assert sorted(s for _, b in flushed for s in _seqs(b)) == list(range(len(packets)))
    parts = [part for part, _ in flushed]
    assert parts == sorted(parts) and len(set(parts)) == len(parts)
    assert batcher.cut_all() == []


def test_stats_add_up() -> None:
    packets, _ = _traffic()
    batcher = Batcher(4, SOURCE, max_packets=3, max_bytes=400)
    sent = _feed(batcher, packets, 9)
    stats = batcher.stats
    assert stats.packets == len(packets) == sum(len(b) for _, b in sent)
    assert stats.bytes == sum(len(p.data) for p in packets) == sum(len(b.payload) for _, b in sent)
    assert stats.batches == len(sent)
    per_part = Counter()
    for part, batch in sent:
        per_part[part] += len(batch)
    assert stats.per_partition == dict(per_part)
    assert sum(stats.per_partition.values()) == stats.packets


def test_batch_ids_are_unique() -> None:
    packets, _ = _traffic()
    batcher = Batcher(4, SOURCE, max_packets=2)
    sent = _feed(batcher, packets, 5)
    sent += _feed(batcher, packets, 11)  # a second pass through the same batcher
    ids = [b.batch_id for _, b in sent]
    assert len(ids) > 10
    assert len(set(ids)) == len(ids)


def test_keyers_choose_the_partition_and_see_each_packet() -> None:
    from snf.core.contract import Decisions, FunctionConfig, NetworkFunction

    class ByDport(NetworkFunction):
        kind = "bydport"
        Config = FunctionConfig
        key = "custom"

        def process(self, batch, headers, state):  # type: ignore[no-untyped-def]
            return Decisions()

        def key_hashes(self, batch, headers):  # type: ignore[no-untyped-def]
            # Read the bytes themselves, as the NAT does for ICMP errors.
            assert [len(p) for p in batch.packets()] == [len(p) for p in packets_data]
            return [d if d != 53 else None for d in headers.dport]

    packets = [
        CapturedPacket(1000 + i, 60, udp4("10.0.0.1", "10.0.0.2", 4000 + i, 100 + i % 3), 1)
        for i in range(9)
    ] + [CapturedPacket(2000, 60, udp4("10.0.0.1", "10.0.0.2", 5353, 53), 1)]
    packets_data = [p.data for p in packets]
    batcher = Batcher(4, 1, keyers=[ByDport(FunctionConfig())])
    got = batcher.add(packets) + batcher.cut_all()
    placed = {seq: part for part, b in got for _, seq in b.packet_ids()}
    for i in range(9):
        assert placed[i] == (100 + i % 3) % 4
    flow = [part for part, b in got for _, seq in b.packet_ids() if seq == 9]
    assert len(flow) == 1  # no preference (None): the flow hash decides
