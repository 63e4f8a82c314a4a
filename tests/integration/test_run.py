"""`snf run` over the real broker: every packet accounted for, identical to --local."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from snf.egress.collector import Collector
from snf.harness.oneshot import RunOptions, run_pipeline
from snf.ingress.replay import ReplayOptions
from snf.kafka import admin
from snf.packet.parse import parse_batch
from snf.pipeline.model import EGRESS
from tests.conftest import traffic_dir

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = sorted(traffic_dir().glob("*.pcap"))

STRICT = """\
name: strict
partitions: 3
functions:
  - name: fw
    function: firewall
    config:
      default: allow
      non_ip: drop
      timeouts: {tcp: 5, udp: 2}
      rules:
        - {action: drop, proto: udp, dport: [53, 137-138, "5353"]}
        - {action: drop, proto: tcp, src: 10.0.0.0/8, dport: 1024-65535}
        - {action: drop, dst: "2001:db8::/32"}
        - {action: allow, proto: tcp, dport: 80}
"""


def _run(pipeline: Path, local: bool, brokers: str, tmp: Path, tag: str) -> tuple:
    out = tmp / f"{tag}.pcapng"
    events = tmp / f"{tag}-events"
    opts = RunOptions(
        out=out,
        events=events,
        local=local,
        brokers=brokers,
        timeout=60,
        replay=ReplayOptions(progress=False, max_packets=64),
    )
    result = run_pipeline(pipeline, CAPTURES, opts)
    return result, out.read_bytes(), {p.name: p.read_text() for p in events.iterdir()}


@pytest.mark.parametrize("which", ["perimeter", "strict"])
def test_kafka_run_is_identical_to_local(kafka_bootstrap: str, tmp_path: Path, which: str) -> None:
    if which == "perimeter":
        pipeline = ROOT / "pipelines" / "perimeter.yaml"
    else:
        pipeline = tmp_path / "strict.yaml"
        pipeline.write_text(STRICT)
    ref, ref_pcap, ref_events = _run(pipeline, True, kafka_bootstrap, tmp_path, "local")
    got, got_pcap, got_events = _run(pipeline, False, kafka_bootstrap, tmp_path, "kafka")

    sent = got.replay.packets
    assert sent == ref.replay.packets == 1305  # all eight real captures
    col = got.collector
    assert col.total == sent  # passed + dropped = sent
    assert col.count(EGRESS) + col.count(("fw", "drop")) == sent
    assert 0 < col.count(EGRESS) < sent  # the rule set really decides something
    assert col.conflicts == 0
    assert got_pcap == ref_pcap  # byte-identical Wireshark file
    assert got_events == ref_events
    _assert_flows_in_order(col)


def _assert_flows_in_order(col: Collector) -> None:
    """Each flow's packets reached the sink in capture order (arrival, not the sorted file)."""
    last: dict[bytes, int] = {}
    for (_, seq), packet in col.packets[EGRESS].items():  # dict order = arrival order
        flow = parse_batch(packet.linktype, [packet.data]).flow[0]
        assert seq > last.get(flow, -1), f"packet {seq} overtook an earlier one of its flow"
        last[flow] = seq


def test_run_tears_down_its_topics(kafka_bootstrap: str, tmp_path: Path) -> None:
    before = set(admin.topic_partitions(kafka_bootstrap))
    opts = RunOptions(brokers=kafka_bootstrap, replay=ReplayOptions(progress=False))
    run_pipeline(ROOT / "pipelines" / "edge.yaml", CAPTURES[:1], opts)  # four functions
    after = set(admin.topic_partitions(kafka_bootstrap))
    leaked = {t for t in after - before if t.startswith("snf.")}
    assert not leaked


def test_cli_run_writes_results_and_summary(kafka_bootstrap: str, tmp_path: Path) -> None:
    out, summary = tmp_path / "out.pcapng", tmp_path / "summary.json"
    cmd = [
        sys.executable,
        "-m",
        "snf",
        "run",
        str(ROOT / "pipelines" / "perimeter.yaml"),
        *map(str, CAPTURES),
        "--out",
        str(out),
        "--json",
        str(summary),
        "--brokers",
        kafka_bootstrap,
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "fw" in proc.stderr and "egress" in proc.stderr  # the per-function table
    report = json.loads(summary.read_text())
    assert report["mode"] == "kafka"
    assert report["packets"] == 1305
    dropped = sum(report["functions"]["fw"]["drop"].values())
    assert report["egress"] + dropped == 1305
    assert out.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"  # a pcapng section header


def test_bad_pipeline_is_rejected_before_anything_starts(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nfunctions:\n  - name: fw\n    function: firewall\n"
        "    config: {default: block}\n"
    )
    before = set(admin.topic_partitions(kafka_bootstrap))
    cmd = [
        sys.executable,
        "-m",
        "snf",
        "run",
        str(bad),
        str(CAPTURES[0]),
        "--brokers",
        kafka_bootstrap,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{bad}:5: functions[0].config.default" in proc.stderr.replace("\n", "")
    assert set(admin.topic_partitions(kafka_bootstrap)) == before
