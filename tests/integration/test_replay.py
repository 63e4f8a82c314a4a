"""The capture agent over the real broker: ids, partitioning by flow, damage, a down broker,
and a SIGKILL mid-replay followed by --resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from snf import wire
from snf.egress.collector import Collector
from snf.ingress.replay import source_id_for
from snf.kafka import admin
from snf.packet.batch import PacketBatch
from snf.packet.capture_file import read_capture
from snf.packet.parse import parse_packet_batch
from snf.pipeline.loader import load_pipeline
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
            assert isinstance(in_order[-1], wire.EndMarker)
            assert not any(isinstance(m, wire.EndMarker) for m in in_order[:-1])
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


# -- killed mid-replay, resumed -----------------------------------------------------

RESUME_CAPTURE = (
    Path(__file__).resolve().parents[2] / "pipelines" / "captures" / "monitoring.pcapng"
)
LOOPS = 3  # 3 x 2200 packets: 3.3 s at 2000 pps, so the kill lands mid-replay
PPS = 2000


def _messages(brokers: str, topic: str) -> list[tuple[int, int, object]]:
    """(partition, offset, decoded message) of every message of the topic."""
    consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts)
    out = []
    while any(consumer.position(tp) < end[tp] for tp in parts):
        for tp, records in consumer.poll(timeout_ms=500).items():
            out += [(tp.partition, r.offset, wire.decode_any(r.value)) for r in records]
    consumer.close()
    return out


def _end_offsets(brokers: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=None)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    ends = {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}
    consumer.close()
    return ends


def _acked_seq(checkpoint: Path) -> int:
    try:
        return json.loads(checkpoint.read_text())["acked_seq"]  # replaced by rename: never torn
    except FileNotFoundError:
        return -1


def test_replay_killed_and_resumed_loses_nothing_and_resends_only_the_kill_window(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    expected = [(p.ts_ns, p.data) for p in read_capture(RESUME_CAPTURE)] * LOOPS
    total, source_id = len(expected), source_id_for([RESUME_CAPTURE])
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(name=f"resume-{uuid.uuid4().hex[:8]}"))
    pipeline = load_pipeline(path)
    topic = pipeline.ingress_topic
    checkpoint = tmp_path / "replay.json"
    cmd = [
        *(sys.executable, "-m", "snf", "replay", str(RESUME_CAPTURE), "--pipeline", str(path)),
        *("--brokers", kafka_bootstrap, "-p", str(PPS), "-l", str(LOOPS)),
        *("--flush", "--no-progress", "--checkpoint", str(checkpoint)),
    ]
    admin.ensure_topics(kafka_bootstrap, pipeline.topics())
    try:
        agent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # SIGKILL ~1 s in: 0.3 s after the first checkpoint write that shows
        # acknowledged packets, so between two writes (every 0.5 s), with
        # batches published and acknowledged since the last one, and in flight.
        deadline = time.monotonic() + 20
        while _acked_seq(checkpoint) < 0:
            assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
            assert time.monotonic() < deadline, "no packet acknowledged within 20 s"
            time.sleep(0.02)
        time.sleep(0.3)
        agent.send_signal(signal.SIGKILL)
        agent.communicate()
        at_kill = json.loads(checkpoint.read_text())
        k = at_kill["acked_seq"]
        assert not at_kill["complete"] and 0 <= k < total - 1  # killed mid-replay
        boundary = _end_offsets(kafka_bootstrap, topic)  # what the dead agent got into the log

        resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=60)
        assert resumed.returncode == 0, resumed.stderr
        assert f"packets 0..{k} were acknowledged" in resumed.stderr
        assert f"sent {total - k - 1} packets" in resumed.stderr
        assert f"resumed after {k + 1} acknowledged packets" in resumed.stderr
        done = json.loads(checkpoint.read_text())
        assert (done["acked_seq"], done["complete"], done["flushed"]) == (total - 1, True, True)

        first: dict[int, int] = {}  # seq -> partition, published by the killed agent
        second: dict[int, int] = {}  # ... by the resumed one
        flushes: dict[int, list[wire.EndMarker]] = defaultdict(list)
        collector = Collector()  # the sink's dedup by packet id
        for part, offset, msg in _messages(kafka_bootstrap, topic):
            if isinstance(msg, wire.EndMarker):
                assert offset >= boundary[part]  # the killed agent never flushed
                flushes[part].append(msg)
                continue
            assert isinstance(msg, PacketBatch) and not flushes[part]  # flush comes last
            collector.add(("", "ingress"), msg)
            run = first if offset < boundary[part] else second
            for i, (sid, seq) in enumerate(msg.packet_ids()):
                assert sid == source_id and 0 <= seq < total  # no new ids
                assert (int(msg.records["ts_ns"][i]), msg.packet(i)) == expected[seq]
                assert seq not in run  # each agent sends a packet once
                run[seq] = part
        assert set(first) >= set(range(k + 1))  # the acknowledged prefix is in the log
        assert sorted(second) == list(range(k + 1, total))  # resumed: exactly the rest
        assert set(first) | set(second) == set(range(total))  # nothing lost
        resent = set(first) & set(second)
        assert all(k < seq <= max(first) for seq in resent)  # only the kill's window
        assert all(first[seq] == second[seq] for seq in resent)  # same partition too
        assert len(resent) <= PPS  # the checkpoint lags by at most ~0.5 s plus in-flight
        assert (collector.total, collector.duplicates, collector.conflicts) == (
            total,
            len(resent),
            0,
        )
        last_ts = max(ts for ts, _ in expected)
        assert {p: [f.end_ts_ns for f in fs] for p, fs in flushes.items()} == {
            p: [last_ts] for p in range(pipeline.partitions)
        }
        print(
            f"killed at {len(first)} published, {k + 1} acknowledged in the checkpoint; "
            f"resent {len(resent)} of {total} (same ids)"
        )
    finally:
        admin.delete_topics(kafka_bootstrap, list(pipeline.topics()))
