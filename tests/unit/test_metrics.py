"""A worker's Prometheus metrics (snf.runtime.worker.metrics) as the real Processor moves them.

The Processor runs without Faust (tests/worker_harness.py); its registry is read
with get_sample_value and through the text exposition, as Prometheus would.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from snf import wire
from snf.guarantee.lineage import Lineage
from snf.ops.status import metrics_url
from snf.packet.batch import PacketBatch
from snf.pipeline.loader import parse_pipeline
from snf.pipeline.routing import plan_pipeline
from snf.runtime.worker.files import StatsWriter, WorkerFiles
from snf.runtime.worker.metrics import FAMILIES, STAGES, WorkerMetrics, sample_names
from snf.runtime.worker.processor import InputRecord, Processor
from tests.packets import tcp4
from tests.worker_harness import LoggedTable, Sends, input_records, make_processor

# Port 443 passes, port 80 is dropped by rule 1 (reason "rule:1"), the rest by default.
FIREWALL = """\
name: m
partitions: 1
functions:
  - name: fw
    function: firewall
    processing_guarantee: {guarantee}
    config:
      default: drop
      rules:
        - {{action: allow, proto: tcp, dport: 443}}
        - {{action: drop, proto: tcp, dport: 80}}
"""
LABELS = {"pipeline": "m", "function": "fw", "instance": "fw-test"}


def firewall(guarantee: str = "exactly_once") -> tuple[Processor, LoggedTable]:
    table = LoggedTable()
    pipeline = parse_pipeline(FIREWALL.format(guarantee=guarantee))
    metrics = WorkerMetrics("m", "fw", "fw-test")
    fn = pipeline.functions[0]
    return Processor(fn, plan_pipeline(pipeline), table, Sends(), metrics), table


def batches(n: int, per_batch: int, *, timestamp: float | None = None) -> list[InputRecord]:
    """`n` batches, half their packets to port 443 (new connections), half to port 80."""
    records = []
    for offset in range(n):
        rows = []
        for i in range(per_batch):
            seq = offset * 1000 + i  # rising along the partition, as a replay's
            frame = tcp4("10.0.0.1", "192.0.2.1", 1000 + seq, 443 if i % 2 else 80, flags="S")
            rows.append((10**9 + seq, len(frame), frame, 7, seq, ""))
        value = wire.encode(PacketBatch.from_rows(1, rows, batch_id=offset))
        headers = [Lineage("capture:t/0", seq, 0).header()]  # seq: the batch's last
        records.append(InputRecord(0, offset, value, headers, timestamp))
    return records


def handle(processor: Processor, records: Sequence[InputRecord]) -> None:
    async def go() -> None:
        for r in records:
            await processor.handle(r)

    asyncio.run(go())


def value(processor: Processor, name: str, **labels: str) -> float | None:
    return processor.metrics.registry.get_sample_value(name, {**LABELS, **labels})


def test_packet_counters_follow_the_engine_by_port_and_reason() -> None:
    processor, _ = firewall()
    handle(processor, batches(3, 8))
    assert value(processor, "snf_packets_in_total") == 24
    assert value(processor, "snf_batches_total") == 3
    assert value(processor, "snf_packets_out_total", port="pass", reason="") == 12
    assert value(processor, "snf_packets_out_total", port="drop", reason="rule:1") == 12
    assert value(processor, "snf_packets_out_total", port="drop", reason="default") is None
    assert value(processor, "snf_packets_sent_total") == 24  # pass and drop both have topics
    handle(processor, batches(4, 2)[3:])  # one more batch moves them again
    assert value(processor, "snf_packets_in_total") == 26
    assert value(processor, "snf_batches_total") == 4


def test_every_stage_is_timed_once_per_batch() -> None:
    processor, _ = firewall()
    handle(processor, batches(5, 4))
    assert value(processor, "snf_stage_seconds_count", stage="reserve") == 0  # no reserved table
    for stage in (s for s in STAGES if s != "reserve"):
        count = value(processor, "snf_stage_seconds_count", stage=stage)
        total = value(processor, "snf_stage_seconds_sum", stage=stage)
        assert count == 5, stage
        assert total is not None and 0 < total < 5, stage
        assert value(processor, "snf_stage_seconds_bucket", stage=stage, le="+Inf") == 5


def test_without_the_journal_only_its_stages_stay_empty() -> None:
    processor, _ = firewall("at_least_once")
    handle(processor, batches(2, 4))
    assert value(processor, "snf_stage_seconds_count", stage="engine") == 2
    assert value(processor, "snf_stage_seconds_count", stage="produce") == 2
    assert value(processor, "snf_stage_seconds_count", stage="journal") == 0
    assert value(processor, "snf_stage_seconds_count", stage="state_apply") == 0
    # State writes happen inside the engine then, and are still counted.
    assert value(processor, "snf_state_writes_total", table="conn") == 4


def test_state_reads_writes_and_changelog_records_are_counted() -> None:
    processor, table = firewall()
    handle(processor, batches(2, 6))
    # 12 flows, each looked up once; the 6 to port 443 are new connections, written once.
    assert value(processor, "snf_state_reads_total", table="conn") == 12
    assert value(processor, "snf_state_writes_total", table="conn") == 6
    # The journal's before-image reads are not the core's.
    assert value(processor, "snf_state_reads_total", table="frag") == 0
    # Every write to the state table is a changelog record: state plus one entry a
    # batch, plus the engine's next sweep point (snf.core.engine), set by the first.
    assert value(processor, "snf_changelog_records_total") == len(table.log) == 6 + 2 + 1


def test_hop_latency_is_measured_from_the_kafka_timestamp() -> None:
    processor, _ = firewall()
    handle(processor, batches(3, 2, timestamp=time.time() - 5.0))
    assert value(processor, "snf_hop_latency_seconds_count") == 3
    total = value(processor, "snf_hop_latency_seconds_sum")
    assert total is not None and 15.0 <= total < 30.0
    assert value(processor, "snf_hop_latency_seconds_bucket", le="2.5") == 0
    untimed, _ = firewall()
    handle(untimed, batches(2, 2))  # no timestamp on the record: nothing observed
    assert value(untimed, "snf_hop_latency_seconds_count") == 0


def test_skipped_messages_are_counted_by_reason() -> None:
    processor, _ = firewall()
    records = batches(2, 2)
    garbage = InputRecord(0, 2, b"not a batch", [Lineage("up/0", 2, 0).header()])
    handle(processor, [*records, records[1], garbage])
    assert value(processor, "snf_messages_skipped_total", reason="redelivered") == 1
    assert value(processor, "snf_messages_skipped_total", reason="undecodable") == 1
    assert value(processor, "snf_batches_total") == 2


def test_lag_is_read_at_scrape_time_and_a_failing_source_only_hides_it() -> None:
    processor, _ = firewall()
    lag = {0: 3, 2: 7}
    processor.metrics.lag = lambda: lag
    assert value(processor, "snf_consumer_lag_messages", partition="2") == 7
    lag[2] = 0
    assert value(processor, "snf_consumer_lag_messages", partition="2") == 0

    def broken() -> dict[int, int]:
        raise RuntimeError("consumer not started")

    processor.metrics.lag = broken
    assert value(processor, "snf_consumer_lag_messages", partition="0") is None
    assert b"snf_packets_in_total" in generate_latest(processor.metrics.registry)


def test_workers_in_one_process_keep_their_own_registries() -> None:
    first, _ = firewall()
    second, _ = firewall()
    handle(first, batches(2, 2))
    assert value(first, "snf_packets_in_total") == 4
    assert value(second, "snf_packets_in_total") == 0


def test_the_exposition_names_only_declared_families() -> None:
    table, sends = LoggedTable(), Sends()
    processor, _ = make_processor(table, sends)  # flowmon: records and core metrics too
    handle(processor, input_records(6, random.Random(3)))
    processor.metrics.lag = lambda: {0: 0}
    text = generate_latest(processor.metrics.registry).decode()
    exposed = {
        s.name
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")  # prometheus_client's own, per child
    }
    assert exposed <= sample_names(), exposed - sample_names()
    assert {"snf_records_out_total", "snf_function_metric_total"} <= exposed
    typed = {f.name for f in text_string_to_metric_families(text)}
    assert {name.removesuffix("_total") for name in FAMILIES} <= typed


def test_status_finds_the_metrics_url_in_the_worker_s_stats(tmp_path: Path) -> None:
    files = WorkerFiles(tmp_path)
    stats = StatsWriter(files, Counter())
    stats.write(assigned=[0])
    assert metrics_url(files.stats(), os.getpid()) is None  # no health server (yet)
    stats.health_port = 41234
    stats.write(assigned=[0])
    assert metrics_url(files.stats(), os.getpid()) == "http://127.0.0.1:41234/metrics"
    assert metrics_url(files.stats(), os.getpid() + 1) is None  # an earlier process's file
    assert metrics_url(None, os.getpid()) is None
