"""snf.harness.verdict: a chaos run's output judged against the --local reference, without a broker.

Collectors are built by hand (crafted packets) and by LocalPipeline on the bundled
examples; each fault a crash can cause is planted once and must be the only thing
the verdict reports. Also `snf chaos`'s fault flags (snf.harness.chaos.parse_faults).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from snf.egress.collector import Collector
from snf.errors import ConfigError
from snf.harness.chaos import parse_faults
from snf.harness.verdict import SinkRecorder, Verdict, compare
from snf.ingress.replay import ReplayOptions, replay
from snf.packet.batch import PacketBatch
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import EGRESS, PortKey
from snf.runtime.local import LocalPipeline
from tests.packets import icmp4_error, tcp4

ROOT = Path(__file__).resolve().parents[2]
DROP: PortKey = ("fw", "drop")
FLOWS: PortKey = ("flows", "flows")
SID = 0x1234
T0 = 1_700_000_000 * 10**9


def _row(seq: int, sport: int = 1000, reason: str = "", data: bytes | None = None) -> tuple:
    data = data if data is not None else tcp4("10.0.0.1", "10.0.0.2", sport, 80, payload=b"x")
    return (T0 + seq * 1000, len(data), data, SID, seq, reason)


def _batch(rows: list[tuple]) -> PacketBatch:
    return PacketBatch.from_rows(LINKTYPE_ETHERNET, rows)


def _pair(rows: list[tuple], got_rows: list[tuple] | None = None) -> tuple[Collector, SinkRecorder]:
    """A reference with `rows` at egress, and an output that received `got_rows`."""
    ref, got = Collector(), SinkRecorder()
    ref.add(EGRESS, _batch(rows))
    got.add(EGRESS, _batch(rows if got_rows is None else got_rows))
    return ref, got


def _only(v: Verdict, **want: int) -> None:
    """The totals are zero except `want`."""
    totals = v.totals()
    assert totals == {k: want.get(k, 0) for k in totals}, totals
    assert v.clean is not any(want.values())


def _copy(col: Collector) -> SinkRecorder:
    """A collector's contents re-delivered to a SinkRecorder, in its arrival order."""
    out = SinkRecorder()
    for where, bucket in col.packets.items():
        rows = [(p.ts_ns, p.orig_len, p.data, s, q, p.reason) for (s, q), p in bucket.items()]
        for i in range(0, len(rows), 100):
            out.add(where, PacketBatch.from_rows(LINKTYPE_ETHERNET, rows[i : i + 100]))
    for where in col.records:
        out.add_records(where, col.record_list(where))
    return out


def _local(name: str) -> tuple[LocalPipeline, list]:
    pipeline = load_pipeline(ROOT / "pipelines" / f"{name}.yaml")
    capture = ROOT / "pipelines" / "captures" / f"{name}.pcapng"
    local = LocalPipeline(pipeline, SinkRecorder())
    opts = ReplayOptions(progress=False)
    s = replay([capture], pipeline.partitions, local, opts, keyers=local.ingress_hop.keyers)
    local.end_of_input(pipeline.name, s.last_ts_ns)
    sinks = pipeline.sink_topics()
    records = pipeline.record_topics()
    packet_ports = [k for t, k in sinks.items() if t not in records]
    return local, [packet_ports, [k for t, k in sinks.items() if t in records]]


def test_identical_runs_give_a_clean_verdict() -> None:
    for name in ("edge", "monitoring"):
        a, terminals = _local(name)
        b, _ = _local(name)
        v = compare(a.collector, b.collector, *terminals)
        _only(v)
        assert {p.terminal for p in v.packets} >= {"egress"}
        assert v.records and all(r.output == r.reference > 0 for r in v.records)
        report = v.to_json()
        assert report["clean"] is True
        assert set(report["terminals"]["egress"]) == {
            "kind", "reference", "output", "lost", "extra", "duplicated",
            "reordered", "reordered_flows", "divergent", "examples",
        }  # fmt: skip
        json.dumps(report)  # serialisable as it is


def test_a_missing_packet_is_lost_and_an_unknown_one_extra() -> None:
    rows = [_row(i) for i in range(5)]
    v = compare(*_pair(rows, rows[:2] + rows[3:]))
    _only(v, lost=1)
    assert v.packets[0].lost == [(SID, 2)]
    _only(compare(*_pair(rows[:4], rows)), extra=1)


def test_a_repeated_delivery_is_duplicated_and_counted_before_dedup() -> None:
    rows = [_row(i) for i in range(5)]
    ref, got = _pair(rows)
    got.add(EGRESS, _batch(rows[3:]))  # a batch re-processed after a crash
    v = compare(ref, got)
    _only(v, duplicated=2)
    assert got.count(EGRESS) == 5  # the deduplicated output alone would look clean
    assert v.to_json()["terminals"]["egress"]["duplicated"] == 2


def test_a_swapped_pair_within_a_flow_is_reordered() -> None:
    rows = [_row(i) for i in range(4)]
    v = compare(*_pair(rows, [rows[0], rows[2], rows[1], rows[3]]))
    _only(v, reordered=1)
    assert v.packets[0].reordered == [(SID, 1)] and v.packets[0].reordered_flows == 1


def test_flows_may_interleave_in_any_order() -> None:
    a = [_row(i, sport=1000) for i in range(0, 6, 2)]
    b = [_row(i, sport=2000) for i in range(1, 6, 2)]
    _only(compare(*_pair(a + b, b + a)))  # each flow in order: nothing to report


def test_icmp_errors_are_not_ordered() -> None:
    # The NAT keys an ICMP error by the flow it reports on: two errors between the
    # same hosts may take two partitions, so their order is not a fault.
    err = [icmp4_error("10.0.0.9", "10.0.0.1", original=bytes([n]) * 28) for n in (1, 2)]
    rows = [_row(i, data=d) for i, d in enumerate(err)]
    _only(compare(*_pair(rows, rows[::-1])))


def test_a_changed_byte_or_reason_is_divergent() -> None:
    rows = [_row(i) for i in range(3)]
    changed = bytearray(rows[1][2])
    changed[-1] ^= 0xFF
    v = compare(*_pair(rows, [rows[0], _row(1, data=bytes(changed)), rows[2]]))
    _only(v, divergent=1)
    assert v.packets[0].divergent[0].startswith("0000000000001234:1: bytes (6 10.0.0.1:1000")

    ref, got = Collector(), SinkRecorder()
    ref.add(DROP, _batch([_row(0, reason="default")]))
    got.add(DROP, _batch([_row(0, reason="conn")]))
    v = compare(ref, got, [EGRESS, DROP])
    _only(v, divergent=1)
    assert "reason 'default' -> 'conn'" in v.packets[1].divergent[0]
    assert [p.terminal for p in v.packets] == ["egress", "fw.drop"]  # egress listed, empty


def test_a_packet_out_of_another_port_is_divergent_not_lost() -> None:
    # A policer that charged replayed packets twice drops packets it passed in --local.
    exceed: PortKey = ("police", "exceed")
    ref, got = Collector(), SinkRecorder()
    ref.add(EGRESS, _batch([_row(0), _row(1)]))
    got.add(EGRESS, _batch([_row(0)]))
    got.add(exceed, _batch([_row(1, reason="rate")]))
    v = compare(ref, got, [EGRESS, exceed])
    _only(v, divergent=1)
    assert v.packets[0].divergent == [
        "0000000000001234:1: port egress -> police.exceed, reason 'rate'"
    ]
    # Replayed after it had passed, and dropped this time: out of two ports. Extra at
    # the second one, and only that (not also reordered among that port's packets).
    ref, got = _pair([_row(0)])
    ref.add(exceed, _batch([_row(2, reason="rate")]))
    got.add(exceed, _batch([_row(2, reason="rate"), _row(0, reason="rate")]))
    v = compare(ref, got, [EGRESS, exceed])
    _only(v, extra=1)
    assert v.packets[1].extra == [(SID, 0)]


def test_a_rewritten_nat_port_is_divergent() -> None:
    # State divergence made visible: the NAT gave one connection another public port.
    local, terminals = _local("edge")
    got = _copy(local.collector)
    bucket = got.packets[EGRESS]
    pid = next(k for k, p in bucket.items() if p.data[26:30] == bytes([198, 51, 100, 1]))
    data = bytearray(bucket[pid].data)
    data[34:36] = (int.from_bytes(data[34:36], "big") ^ 1).to_bytes(2, "big")
    bucket[pid].data = bytes(data)
    v = compare(local.collector, got, *terminals)
    _only(v, divergent=1)
    assert "198.51.100.1" in v.packets[0].divergent[0]


def test_a_changed_or_repeated_record_is_a_record_divergence() -> None:
    local, terminals = _local("monitoring")
    got = _copy(local.collector)
    flows = got.records[FLOWS]
    text = next(iter(flows))
    _ts, record = flows.pop(text)
    got.add_records(FLOWS, [{**record, "packetDeltaCount": record["packetDeltaCount"] * 2}])
    got.add_records(FLOWS, [got.record_list(FLOWS)[0]])  # the same record delivered again
    v = compare(local.collector, got, *terminals)
    _only(v, records_missing=1, records_extra=1, duplicated=1)
    flows_v = next(r for r in v.records if r.terminal == "flows.flows")
    assert flows_v.missing == [record]
    report = v.to_json()["terminals"]["flows.flows"]
    assert (report["missing"], report["extra"], report["duplicated"]) == (1, 1, 1)


def test_the_table_names_every_terminal() -> None:
    local, terminals = _local("monitoring")
    rows = [_row(i) for i in range(3)]
    ref, got = _pair(rows, [rows[0], rows[0], rows[2]])
    console = Console(record=True, width=200)
    console.print(compare(ref, got).table("chaos"))
    console.print(compare(local.collector, _copy(local.collector), *terminals).table("again"))
    text = console.export_text()
    assert "NOT CLEAN" in text and "CLEAN" in text and "before its dedup by" in text
    for name in ("egress", "ids.drop", "police.exceed", "ids.alerts", "flows.flows"):
        assert name in text


def test_fault_flags_pair_in_command_line_order() -> None:
    # `snf chaos` passes its --kill/--stop/--at/--for values as one ordered list.
    faults = parse_faults(
        [("kill", "fw"), ("at", "40%"), ("stop", "nat:1"), ("at", "0.5"), ("for", "500ms")]
    )
    assert [(f.kind, f.function, f.instance, f.at, f.duration) for f in faults] == [
        ("kill", "fw", None, 0.4, 0.0),
        ("stop", "nat", 1, 0.5, 0.5),
    ]
    for bad in (
        [("at", "40%")],  # no fault before it
        [("kill", "fw")],  # no --at
        [("kill", "fw"), ("at", "40%"), ("for", "2s")],  # a kill lasts no time
        [("stop", "fw"), ("at", "140%"), ("for", "2s")],
        [("stop", "fw:x"), ("at", "10%"), ("for", "2s")],
        [("stop", "fw"), ("at", "10%")],  # no --for
    ):
        with pytest.raises(ConfigError):
            parse_faults(bad)
