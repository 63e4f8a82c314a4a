"""The capture agent over the real broker: ids, partitioning by flow, damage, a down broker."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from snf import wire
from snf.kafka import admin
from snf.parse import parse_packet_batch
from snf.pipeline import load_pipeline
from tests.conftest import traffic_dir
from tests.packets import read_pcap

pytestmark = pytest.mark.integration

PIPELINE = "name: {name}\npartitions: 5\nfunctions:\n  - {{name: fw, function: firewall}}\n"


def _consume_all(brokers: str, topic: str) -> dict[int, list]:
    """Every message per partition, in order: PacketBatches and flush markers."""
    consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts)
    batches: dict[int, list] = defaultdict(list)
    while any(consumer.position(tp) < end[tp] for tp in parts):
        for tp, records in consumer.poll(timeout_ms=500).items():
            batches[tp.partition] += [wire.decode_any(r.value) for r in records]
    consumer.close()
    return batches


def test_replay_truncated_capture_partitioned_by_flow(kafka_bootstrap: str, tmp_path: Path) -> None:
    source = traffic_dir() / "zeek-http-bro.org.pcap"
    raw = source.read_bytes()
    damaged = tmp_path / "damaged.pcap"
    damaged.write_bytes(raw[: len(raw) * 2 // 3])  # cut inside a record
    _, read_by_dpkt = read_pcap(damaged)
    # The cut falls inside a record's data: dpkt hands back the partial record,
    # the capture agent must not (it is damaged), and must keep all before it.
    before_damage = read_by_dpkt[:-1]
    assert len(read_by_dpkt[-1][1]) < len(raw)  # sanity
    assert 0 < len(before_damage) < 751

    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(name=f"replaytest-{uuid.uuid4().hex[:8]}"))
    pipeline = load_pipeline(path)
    admin.ensure_topics(kafka_bootstrap, pipeline.topics())
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "snf",
                "replay",
                str(damaged),
                "--pipeline",
                str(path),
                "--brokers",
                kafka_bootstrap,
                "--topspeed",
                "--batch",
                "50",
                "--no-progress",
                "--flush",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert "truncated" in proc.stderr
        assert f"sent {len(before_damage)} packets" in proc.stderr

        batches = _consume_all(kafka_bootstrap, pipeline.ingress_topic)
        # --flush: every partition ends with one end-of-input marker, after its packets.
        ends = set()
        for in_order in batches.values():
            assert isinstance(in_order[-1], wire.Flush)
            assert not any(isinstance(m, wire.Flush) for m in in_order[:-1])
            ends.add(in_order.pop().end_ts_ns)
        last_ts = max(int(b.records["ts_ns"].max()) for bs in batches.values() for b in bs)
        assert ends == {last_ts}  # "now" for the flush is the latest packet time
        flows_at: dict[bytes, set[int]] = defaultdict(set)
        seqs: list[int] = []
        for partition, in_order in batches.items():
            part_seqs = []
            for batch in in_order:
                assert len(batch) <= 50
                headers = parse_packet_batch(batch)
                for flow in headers.flow:
                    flows_at[flow].add(partition)
                part_seqs += [seq for _, seq in batch.packet_ids()]
            assert part_seqs == sorted(part_seqs)  # capture order within each partition
            seqs += part_seqs
        assert sorted(seqs) == list(range(len(before_damage)))  # nothing lost, nothing twice
        assert all(len(parts) == 1 for parts in flows_at.values())  # both directions together
        assert len(batches) > 1  # the flows really spread over partitions
        data = [b.packet(i) for bs in batches.values() for b in bs for i in range(len(b))]
        assert sorted(data) == sorted(pkt for _, pkt in before_damage)
    finally:
        admin.delete_topics(kafka_bootstrap, list(pipeline.topics()))


def test_replay_to_a_down_broker_is_retried_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(name="nobroker"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snf",
            "replay",
            str(traffic_dir() / "zeek-ipv6.pcap"),
            "--pipeline",
            str(path),
            "--brokers",
            "127.0.0.1:9",
            "-t",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "no Kafka broker answers at 127.0.0.1:9 after 4 tries" in proc.stderr
