"""Hostile Kafka messages against live workers (issue 13): none stops a worker.

A firewall -> flowmon chain is deployed; crafted messages go to both input
topics before and during a replay of a real capture. Every one lands in its
function's dead-letter topic with the reason, no worker restarts, and the
output equals --local exactly: a forged end marker ended no flow, a forged
watermark dropped no batch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from snf import wire
from snf.cli.main import main
from snf.egress.collector import Collector
from snf.egress.sink import KafkaSink
from snf.ingress.publisher import BatchPublisher
from snf.ingress.replay import ReplayOptions, replay
from snf.kafka.dead_letter_reader import read_dead_letters
from snf.kafka.producer import TopicProducer
from snf.packet.batch import PacketBatch
from snf.pipeline.loader import load_pipeline
from snf.pipeline.routing import plan_pipeline
from snf.runtime.local import LocalPipeline
from tests.integration.test_suite_failover import _same
from tests.packets import tcp4

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CAPTURE = ROOT / "pipelines" / "captures" / "edge.pcapng"
PIPELINE = """\
name: {name}
partitions: 2
functions:
  - name: fw
    function: firewall
    config:
      default: drop
      non_ip: allow
      rules:
        - {{action: allow, proto: tcp, dport: [80, 443]}}
        - {{action: allow, proto: udp}}
  - name: fm
    function: flowmon
"""
L = "snf-lineage"


def _batch(seq: int) -> bytes:
    frame = tcp4("10.9.9.9", "192.0.2.9", 4444, 80, flags="S")
    return wire.encode(PacketBatch.from_rows(1, [(1, len(frame), frame, 7, seq, "")]))


def _control(body: bytes) -> bytes:
    return b"SNFC" + body


def _end(end_id: str) -> bytes:
    return wire.encode_end_marker(wire.EndMarker(end_id, 10**18))


# (value, headers, expected class) for the entry function's input (ingress)
INGRESS = [
    (None, None, "WireError"),  # a tombstone
    (_control(b"[" * 2000 + b"]" * 2000), None, "WireError"),
    (_control(b'{"flush": "x", "end_ts_ns": Infinity, "expected": 1}'), None, "WireError"),
    (_control(b'{"flush": "x", "end_ts_ns": 5, "expected": 1e400}'), None, "WireError"),
    (wire.encode_record_blocks([{"ts_ns": 1}])[0], None, "WireError"),
    (_batch(10**6), [(L, b"no-bars")], "LineageError"),
    (_batch(10**6), [(L, b"\xff\xfe/0|1|0")], "LineageError"),
    (_batch(10**6), [(L, b"capture:s/0|x|0")], "LineageError"),
    (_batch(10**6), [(L, b"capture:s/0|" + b"9" * 4300 + b"|0")], "LineageError"),
    (_batch(10**6), [(L, b"capture:t1/0|%d|0" % (1 << 63))], "LineageError"),
    (_batch(10**9), [(L, b"capture:t1/0|%d|0" % 10**9)], "Untrusted"),  # no tag
    (_end("forged"), None, "Untrusted"),  # would end and export every flow
] + [(_end(f"f{i}"), None, "Untrusted") for i in range(200)]
# for flowmon's input (after the firewall)
FLOWMON_IN = [
    (b"garbage", None, "WireError"),
    (_batch(5), [(L, b"fw/0|%d|0" % 10**9)], "Untrusted"),  # a watermark far ahead
    (_end("forged"), [(L, b"fw/1|1|0")], "Untrusted"),
    (_batch(5), [(L, b"nat/0|1|0")], "Untrusted"),  # not upstream
]


def _send(brokers: str, topic: str, messages: list, partition: int) -> None:
    producer = TopicProducer(brokers, topic)
    for value, headers, _ in messages:
        if value is None:  # a tombstone needs a key
            producer.producer.send(topic, key=b"k", value=None, partition=partition)
        else:
            producer.send(partition, value, headers)
    producer.close()


def test_hostile_messages_are_dead_lettered_and_change_no_output(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SNF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SNF_BROKERS", kafka_bootstrap)
    name = f"hostile-{os.getpid() % 100000}"
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(name=name))
    pipeline = load_pipeline(path)
    fw, fm = pipeline.function("fw"), pipeline.function("fm")
    assert main(["deploy", str(path)]) == 0
    try:
        half = len(INGRESS) // 2
        _send(kafka_bootstrap, fw.input_topic, INGRESS[:half], 0)
        _send(kafka_bootstrap, fm.input_topic, FLOWMON_IN, 1)
        keyers = plan_pipeline(pipeline).ingress_hop.keyers
        opts = ReplayOptions(progress=False, max_packets=64)
        publisher = BatchPublisher(kafka_bootstrap, pipeline.ingress_topic, session="t1")
        sent = replay([CAPTURE], pipeline.partitions, publisher, opts, keyers=keyers)
        publisher.producer.flush(timeout=30)
        _send(kafka_bootstrap, fw.input_topic, INGRESS[half:], 1)
        publisher.send_end_markers(wire.EndMarker("end", sent.last_ts_ns), pipeline.partitions)
        publisher.close()

        sink = KafkaSink.of(kafka_bootstrap, pipeline)
        got = Collector()
        assert sink.collect(got, 90, end_id="end"), sink.unended("end")
        sink.close()
        local = LocalPipeline(pipeline)
        replay([CAPTURE], pipeline.partitions, local, opts, keyers=keyers)
        local.end_of_input("end", sent.last_ts_ns)
        _same(got, local.collector)
        assert got.total == local.collector.total > 1000

        for fn, messages in ((fw, INGRESS), (fm, FLOWMON_IN)):
            letters = read_dead_letters(kafka_bootstrap, fn.dlq_topic)
            classes = [dict(r.headers)["snf.errors.class"].decode() for r in letters]
            assert sorted(classes) == sorted(kind for _, _, kind in messages), fn.name
            first = dict(letters[0].headers)
            assert first["snf.errors.topic"] == fn.input_topic.encode()
            assert int(first["snf.errors.offset"]) >= 0 and first["snf.errors.message"]

        capsys.readouterr()
        assert main(["status", name, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert {f: s["restarts"] for f, s in status["functions"].items()} == {"fw": 0, "fm": 0}
        assert main(["dlq", name, "fm"]) == 0
        assert "4 dead letters" in capsys.readouterr().err  # the console is stderr
    finally:
        assert main(["undeploy", name, "--delete-topics"]) == 0
