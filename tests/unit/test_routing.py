"""snf.pipeline.routing: which hop each stage gets, and how a StageRouter splits batches."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snf import wire
from snf.core.contract import Decisions, FinishContext, FunctionConfig, NetworkFunction, Record
from snf.core.engine import FunctionEngine
from snf.core.tables import CONTROL_TABLE, BatchState
from snf.egress.collector import Collector
from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers
from snf.pipeline.routing import Hop, StageRouter, plan
from tests.packets import tcp4, udp4


class Fake(NetworkFunction):
    kind = "fake"
    Config = FunctionConfig

    def __init__(self, key: str, consistent: bool = True, want: Sequence[int | None] = ()):
        super().__init__(FunctionConfig())
        self.key = key  # type: ignore[assignment]
        self.key_flow_consistent = consistent
        self.want = list(want)
        self.calls = 0

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        return Decisions(["pass"] * len(batch), [""] * len(batch))

    def key_hashes(self, batch: PacketBatch, headers: Headers) -> Sequence[int | None]:
        self.calls += 1
        return self.want[: len(batch)]


def modes(hops: list[Hop], functions: list[Fake]) -> list[str]:
    out = []
    for h in hops:
        if h.mode == "key":
            out.append("key" + "+".join(str(functions.index(k)) for k in h.keyers))  # type: ignore[arg-type]
        else:
            out.append(h.mode)
    return out


@pytest.mark.parametrize(
    ("chain", "expected"),
    [
        # A flow-keyed chain is partitioned once, at ingress, and never split.
        (["flow"], ["flow"]),
        (["flow", "flow", "any"], ["flow", "keep", "keep"]),
        # firewall -> nat: ingress is keyed by the NAT's flow-consistent key.
        (["flow", "customfc"], ["key1", "key1"]),
        (["customfc", "flow"], ["key0", "keep"]),
        # firewall -> nat -> loadbalancer: one partitioning serves both keys.
        (["customfc", "customfc"], ["key0+1", "key1"]),
        (["flow", "customfc", "customfc", "flow"], ["key1+2", "key1+2", "key2", "keep"]),
        (["customfc", "custom"], ["key0", "key1"]),
        # A key that splits flows (ratelimit by src) serves only "any" stages before it...
        (["any", "custom"], ["key1", "key1"]),
        (["flow", "custom"], ["flow", "key1"]),
        # ...and a flow stage after it must re-key by flow.
        (["custom", "any", "flow"], ["key0", "keep", "flow"]),
        (["any"], ["flow"]),
    ],
)
def test_plan(chain: list[str], expected: list[str]) -> None:
    functions = [
        Fake("custom" if k.startswith("custom") else k, consistent=k != "custom") for k in chain
    ]
    assert modes(plan(functions), functions) == expected


def _batch(n: int) -> PacketBatch:
    rows = [(i * 1000, 60, udp4("10.0.0.1", "10.0.0.2", 1000 + i, 53), 7, i, "") for i in range(n)]
    return PacketBatch.from_rows(1, rows)


def test_keep_passes_the_batch_whole() -> None:
    batch = _batch(5)
    assert StageRouter(Hop("keep"), 4).route(batch, 2) == [(2, batch)]


def test_a_batch_already_in_place_is_not_split() -> None:
    f = Fake("custom", want=[6, 2, None, 10, 14])  # all == 2 mod 4, or no preference
    batch = _batch(5)
    router = StageRouter(Hop("key", (f,), (0,)), 4)
    assert router.route(batch, 2) == [(2, batch)]
    assert router.split_batches == 0


def test_same_key_as_before_and_nothing_rewritten_skips_the_key() -> None:
    f = Fake("custom", want=[1, 2, 3])
    router = StageRouter(Hop("key", (f,), (1,)), 4, previous=Hop("key", (f,), (1,)))
    batch = _batch(3)
    assert router.route(batch, 0, rewritten=False) == [(0, batch)]
    assert f.calls == 0
    assert len(router.route(batch, 0, rewritten=True)) == 3  # rewrites may move packets


@settings(max_examples=60, deadline=None)
@given(
    want=st.lists(st.one_of(st.none(), st.integers(0, 2**64 - 1)), min_size=1, max_size=40),
    partitions=st.integers(1, 6),
    data=st.data(),
)
def test_split_sends_every_packet_to_its_key_partition_in_order(
    want: list[int | None], partitions: int, data: st.DataObject
) -> None:
    current = data.draw(st.integers(0, partitions - 1))
    batch = _batch(len(want))
    parts = StageRouter(Hop("key", (Fake("custom", want=want),), (0,)), partitions).route(
        batch, current
    )
    placed: dict[int, int] = {}
    for p, part in parts:
        seqs = [seq for _, seq in part.packet_ids()]
        assert seqs == sorted(seqs)  # order kept within each part
        for seq in seqs:
            placed[seq] = p
    assert sorted(placed) == list(range(len(want)))  # nothing lost or duplicated
    for i, w in enumerate(want):
        assert placed[i] == (current if w is None else w % partitions)


def test_flow_hop_keeps_both_directions_of_a_flow_together() -> None:
    rows = [
        (0, 60, tcp4("10.0.0.1", "10.9.9.9", 1234, 80), 1, 0, ""),
        (1, 60, tcp4("10.9.9.9", "10.0.0.1", 80, 1234, flags="SA"), 1, 1, ""),
    ]
    parts = StageRouter(Hop("flow"), 16).route(PacketBatch.from_rows(1, rows), 0)
    assert sum(len(b) for _, b in parts) == 2
    assert len({p for p, b in parts}) == 1


# -- wire: control and record messages ---------------------------------------


def test_flush_and_records_round_trip_and_packets_still_decode() -> None:
    flush = wire.EndMarker("run-1", 123, 4)
    assert wire.decode_any(wire.encode_end_marker(flush)) == flush
    block = wire.decode_any(wire.encode_record_blocks([{"ts_ns": 1, "a": "b"}], "run-1")[0])
    assert block == wire.RecordBlock([{"ts_ns": 1, "a": "b"}], "run-1")
    batch = _batch(2)
    decoded = wire.decode_any(wire.encode(batch))
    assert isinstance(decoded, PacketBatch) and decoded.packets() == batch.packets()


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (wire.CONTROL_MAGIC + b"{not json", "not valid JSON"),
        (wire.CONTROL_MAGIC + b'{"flush": "x"}', "bad control message"),
        (wire.RECORDS_MAGIC + b"[1]", "must be a JSON object"),
        (wire.RECORDS_MAGIC + b'{"records": 3}', "without a records list"),
    ],
)
def test_bad_control_and_record_messages_are_wire_errors(message: bytes, error: str) -> None:
    with pytest.raises(wire.WireError, match=error):
        wire.decode_any(message)


# -- records in the collector and flush in the engine ------------------------


def test_collector_dedups_records_and_orders_them_by_time(tmp_path: Path) -> None:
    col = Collector()
    assert col.add_records(("f", "alerts"), [{"ts_ns": 5, "sid": 2}, {"ts_ns": 1, "sid": 1}]) == 2
    assert col.add_records(("f", "alerts"), [{"sid": 2, "ts_ns": 5}]) == 0  # same record again
    assert col.duplicate_records == 1
    assert col.record_list(("f", "alerts")) == [{"ts_ns": 1, "sid": 1}, {"ts_ns": 5, "sid": 2}]
    (path,) = col.write_events(tmp_path)
    assert path.name == "f.alerts.jsonl"
    assert [json.loads(line)["sid"] for line in path.read_text().splitlines()] == [1, 2]


class Finishing(NetworkFunction):
    kind = "flushing"
    record_ports: ClassVar[tuple[str, ...]] = ("flows",)
    tables: ClassVar[tuple[str, ...]] = ("t",)
    Config = FunctionConfig

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        return Decisions(["pass"] * len(batch), [""] * len(batch))

    def finish(self, state: BatchState, ctx: FinishContext) -> dict[str, list[Record]]:
        return {"flows": [{"ts_ns": ctx.end_ts_ns, "partition": ctx.partition}]}


def test_engine_finishes_once_on_the_last_expected_marker() -> None:
    engine = FunctionEngine(Finishing(FunctionConfig()))
    stores = BatchState.memory(("t", CONTROL_TABLE))
    marker = wire.EndMarker("run", 99, expected=3)
    assert engine.end_of_input(marker, 1, BatchState(stores)) is None
    assert engine.end_of_input(marker, 1, BatchState(stores)) is None
    out = engine.end_of_input(marker, 1, BatchState(stores))
    assert out is not None and out.records == {"flows": [{"ts_ns": 99, "partition": 1}]}
    # The end is state (a restarted worker keeps it), pruned to its id among the ended:
    # a replayed marker does not finish again.
    assert stores[CONTROL_TABLE].data == {b"ends:open": [], b"ends:done": ["run"]}
    assert engine.end_of_input(marker, 1, BatchState(stores)) is None


def test_a_packet_follows_the_first_key_that_cares() -> None:
    first = Fake("custom", want=[1, None, None])
    second = Fake("custom", want=[2, 3, None])
    router = StageRouter(Hop("key", (first, second), (0, 1)), 4)
    parts = router.route(_batch(3), 0)
    assert [(p, [s for _, s in b.packet_ids()]) for p, b in parts] == [(0, [2]), (1, [0]), (3, [1])]


def test_many_records_are_cut_into_bounded_blocks_with_end_on_the_last() -> None:
    records = [{"ts_ns": i, "pad": "x" * 100} for i in range(1000)]
    blocks = [wire.decode_any(m) for m in wire.encode_record_blocks(records, "f", 10_000)]
    assert len(blocks) > 5
    assert all(isinstance(b, wire.RecordBlock) for b in blocks)
    assert [b.end for b in blocks] == [""] * (len(blocks) - 1) + ["f"]
    assert [r for b in blocks for r in b.records] == records  # type: ignore[union-attr]
    (empty,) = [wire.decode_any(m) for m in wire.encode_record_blocks([], "f")]
    assert empty == wire.RecordBlock([], "f")
