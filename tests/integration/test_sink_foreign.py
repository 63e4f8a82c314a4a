"""`snf sink` on a shared `topic:NAME` that another producer also writes: it skips
and counts what is not snf's, and keeps the rest."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from snf.cli.main import main
from snf.guarantee.lineage import Lineage
from snf.kafka.admin import ensure_topics
from snf.kafka.producer import TopicProducer
from snf.packet.batch import PacketBatch
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.pipeline.loader import load_pipeline
from snf.wire import encode, encode_record_blocks
from tests.packets import tcp4

PIPELINE = """
name: {name}
partitions: 1
functions:
  - name: fw
    function: firewall
    config: {{default: allow}}
wiring:
  - {{from: ingress, to: fw}}
  - {{from: fw.pass, to: "topic:{shared}"}}
  - {{from: fw.drop, to: egress}}
"""


def test_sink_skips_and_counts_foreign_messages(kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(name=f"fx{tag}", shared=f"shared-{tag}"))
    pipeline = load_pipeline(path)
    ensure_topics(
        kafka_bootstrap, {t: 1 for t in [*pipeline.sink_topics(), pipeline.ingress_topic]}
    )
    rows = [(10**18 + q, 60, tcp4(sport=1000 + q), 0xF0, q, "") for q in range(2)]
    batch = encode(PacketBatch.from_rows(LINKTYPE_ETHERNET, rows))
    producer = TopicProducer(kafka_bootstrap, f"shared-{tag}")
    producer.send(0, batch, [Lineage("fw/0", 1, 0).header()])
    producer.send(0, b"someone else's JSON {}")
    producer.producer.send(f"shared-{tag}", value=None, key=b"k", partition=0)  # a tombstone
    producer.send(0, batch, [("snf-lineage", b"not|a|lineage")])
    producer.send(0, encode_record_blocks([{"ts_ns": 1}])[0])  # records on a packet topic
    producer.send(0, batch, [Lineage("fw/0", 2, 0).header()])  # the same ids again
    producer.close()

    summary, events = tmp_path / "summary.json", tmp_path / "events"
    args = ["--events", str(events), "--json", str(summary), "--idle", "3"]
    assert main(["sink", "--pipeline", str(path), *args, "--brokers", kafka_bootstrap]) == 0
    got = json.loads(summary.read_text())
    assert got["foreign"] == {
        "not snf wire format": 1,
        "null value": 1,
        "bad headers": 1,
        "records on a topic of packets": 1,
    }
    assert (got["distinct"], got["duplicates"]) == (2, 2)
    lines = (events / f"topic.shared-{tag}.jsonl").read_text().splitlines()
    assert [json.loads(x)["packet_id"] for x in lines] == [f"{0xF0:016x}:{q}" for q in range(2)]
