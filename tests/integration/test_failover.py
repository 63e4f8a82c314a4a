"""Kill -9 the firewall worker: its replacement restores the state from the changelog."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from snf.egress.collector import Collector
from snf.egress.sink import KafkaSink
from snf.guarantee.journal import table_key
from snf.harness.oneshot import create_topics
from snf.ingress.publisher import BatchPublisher
from snf.ingress.replay import ReplayOptions, replay
from snf.kafka import admin
from snf.ops.worker_process import start_worker, wait_all_stopped
from snf.packet.pcapng_writer import PcapngWriter
from snf.pipeline import names
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import EGRESS
from tests.packets import tcp4

pytestmark = pytest.mark.integration

PIPELINE = """\
name: failover
partitions: 4
functions:
  - name: fw
    function: firewall
    config:
      default: drop
      rules: [{action: allow, proto: tcp, src: 10.0.0.0/8, dport: 443}]
"""
SERVER = "198.51.100.7"
CLIENTS = [(f"10.0.{i // 200}.{i % 200 + 1}", 20000 + i) for i in range(120)]
T0 = 1_700_000_000 * 10**9


def _write(path: Path, frames: list[bytes], t0: int) -> Path:
    with PcapngWriter(path) as w:
        for i, frame in enumerate(frames):
            w.write(1, t0 + i * 1_000_000, frame)
    return path


def _changelog_keys(brokers: str, topic: str, prefix: bytes = b"") -> int:
    """Distinct live keys starting with `prefix` (a core table's: b"conn\\0")."""
    consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not parts:
            return 0
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        keys: set[bytes] = set()
        while any(consumer.position(tp) < end[tp] for tp in parts):
            for records in consumer.poll(timeout_ms=500).values():
                keys.update(
                    r.key for r in records if r.value is not None and r.key.startswith(prefix)
                )
        return len(keys)
    finally:
        consumer.close()


def _fully_committed(brokers: str, group: str, topic: str) -> bool:
    """Has the group committed every offset of `topic`? Then a successor skips it all."""
    consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=None)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        end = consumer.end_offsets(parts)
    finally:
        consumer.close()
    with admin.admin_client(brokers) as client:
        committed = client.list_group_offsets({group: None})[group]
    return all(tp in committed and committed[tp].offset >= end[tp] for tp in parts)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def test_replacement_worker_keeps_every_connection(kafka_bootstrap: str, tmp_path: Path) -> None:
    brokers = kafka_bootstrap
    path = tmp_path / "failover.yaml"
    path.write_text(PIPELINE)
    run = load_pipeline(path).renamed(f"failover-{int(time.time()) % 100000}")
    create_topics(brokers, run)
    quiet = ReplayOptions(progress=False)

    syns = [tcp4(c, SERVER, port, 443, flags="S") for c, port in CLIENTS]
    synacks = [tcp4(SERVER, c, 443, port, flags="SA") for c, port in CLIENTS]
    strangers = [
        tcp4("203.0.113.9", c, 40000 + i, 22, flags="S") for i, (c, _) in enumerate(CLIENTS[:20])
    ]
    part1 = _write(tmp_path / "part1.pcapng", syns, T0)
    part2 = _write(tmp_path / "part2.pcapng", synacks + strangers, T0 + 10**9)

    first = start_worker(path, "fw", 0, brokers, tmp_path / "a", name=run.name)
    workers = [first]
    try:
        # A message that is not a batch must be skipped, not crash the worker.
        producer = KafkaProducer(bootstrap_servers=brokers)
        producer.send(run.ingress_topic, value=b"not a packet batch", partition=0)
        producer.flush()
        producer.close()

        publisher = BatchPublisher(brokers, run.ingress_topic)
        replay([part1], run.partitions, publisher, quiet)
        publisher.close()
        collector = Collector()
        sink = KafkaSink.of(brokers, run)
        assert sink.collect(collector, 60, packets=len(syns))
        assert collector.count(EGRESS) == len(syns)  # the rule allows every SYN

        changelog = names.changelog_topic(run.name, "fw", "state")  # all its tables
        _wait(
            lambda: _changelog_keys(brokers, changelog, table_key("conn", b"")) >= len(CLIENTS),
            30,
            "the connections to reach the changelog",
        )
        # Without this, the successor could re-read part 1 and rebuild the state itself.
        _wait(
            lambda: _fully_committed(brokers, run.functions[0].group_id, run.ingress_topic),
            30,
            "the worker to commit its input offsets",
        )
        assert first.alive(), "the worker died on the bad message"
        first.kill()  # SIGKILL: no clean shutdown, no final commit
        first.proc.wait(10)

        # A fresh datadir: the only way to know the connections is the changelog.
        second = start_worker(path, "fw", 0, brokers, tmp_path / "b", name=run.name)
        workers.append(second)
        publisher = BatchPublisher(brokers, run.ingress_topic)
        replay([part2], run.partitions, publisher, quiet)
        publisher.close()
        expected = len(syns) + len(synacks) + len(strangers)
        assert sink.collect(collector, 90, packets=expected), collector.total
        sink.close()

        passed = collector.packets[EGRESS]
        dropped = collector.packets[("fw", "drop")]
        # Every SYN-ACK only passes through connection state restored from the changelog.
        assert len(passed) == len(syns) + len(synacks)
        assert len(dropped) == len(strangers)
        assert {p.reason for p in dropped.values()} == {"default"}
        assert collector.conflicts == 0
    finally:
        wait_all_stopped(workers)
        internal = [names.leader_topic(run.name, "fw")]
        admin.delete_topics(brokers, [*run.topics(), *run.changelog_topics(), *internal])
