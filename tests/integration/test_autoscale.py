"""A pipeline deployed with --autoscale on the real broker, through the `snf` commands:
the firewall (min 0) scales to zero when idle, cold-starts (and scales up) when
packets arrive, goes back to zero, and cold-starts again with its state intact.

The capture is cut in two by direction: first the packets to the servers (they
open the firewall's connections), then, once the firewall is back at zero
instances, the servers' replies, which only connection tracking lets through.
The Kafka output must equal the --local run of both parts exactly: no packet is
lost across scale-to-zero and cold start, and no connection either.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dpkt
import pytest

from snf.cli.main import main
from snf.egress.collector import Collector
from snf.egress.sink import KafkaSink
from snf.ingress.publisher import BatchPublisher
from snf.ingress.replay import ReplayOptions, ReplaySummary, replay
from snf.kafka import admin
from snf.ops import deployment_dir as dp
from snf.packet.batch import PacketBatch
from snf.packet.capture_file import read_capture
from snf.packet.pcapng_writer import PcapngWriter
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import EGRESS, Pipeline
from snf.pipeline.routing import plan_pipeline
from snf.runtime.local import LocalPipeline
from snf.runtime.worker.files import WorkerFiles
from snf.wire import EndMarker
from tests.integration.test_suite_failover import _same

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CAPTURE = ROOT / "pipelines" / "captures" / "monitoring.pcapng"
SERVERS = ipaddress.ip_network("10.5.0.0/16")

PIPELINE = """\
name: {name}
partitions: 2
functions:
  - name: fw
    function: firewall
    config:
      default: drop
      rules:
        - {{action: allow, proto: tcp, dst: 10.5.0.0/16, dport: [80, 8080]}}
        - {{action: allow, proto: udp, dst: 10.5.0.53, dport: 53}}
    instances: {{min: 0, max: 2, lag_threshold: 2, cooldown: 3}}
  - name: flows
    function: flowmon
    config: {{idle_timeout: 15, active_timeout: 300}}
"""


def _split(tmp_path: Path) -> tuple[Path, Path]:
    """The capture's packets to the servers, and the rest (the servers' replies)."""
    requests, replies = tmp_path / "requests.pcapng", tmp_path / "replies.pcapng"
    with PcapngWriter(requests) as to_servers, PcapngWriter(replies) as from_servers:
        for p in read_capture(CAPTURE):
            ip = dpkt.ethernet.Ethernet(p.data).data
            inbound = isinstance(ip, dpkt.ip.IP) and ipaddress.ip_address(ip.dst) in SERVERS
            (to_servers if inbound else from_servers).write(p.linktype, p.ts_ns, p.data)
    return requests, replies


def _replay(pipeline: Pipeline, publish: Callable, capture: Path) -> ReplaySummary:
    keyers = plan_pipeline(pipeline).ingress_hop.keyers
    opts = ReplayOptions(progress=False, max_packets=64)  # many batches: lag > threshold
    return replay([capture], pipeline.partitions, publish, opts, keyers=keyers)


def _status(name: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["status", name, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _until(
    what: str, check: Callable[[], Any], timeout: float, every: float = 0.2, seen: Any = None
) -> Any:
    """Poll `check` until it answers; `seen` (what it last looked at) goes in the failure."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"not {what} after {timeout:.0f}s: {seen}"
        time.sleep(every)
    return got


def _first_assignment(dep_dir: Path, function: str, since: float, timeout: float) -> float:
    """Wall time at which an instance of `function` first owned partitions after
    `since` (the worker stamps assignment.json; polled often, before a rebalance
    rewrites it; a stopped instance's file stays, with its older time)."""

    def stamped() -> float | None:
        times = []
        for datadir in dp.workers_dir(dep_dir).glob(f"{function}-*"):
            found = WorkerFiles(datadir).assignment()
            if found is not None and found.partitions and found.time >= since:
                times.append(found.time)
        return min(times, default=None)

    return _until(f"{function} assigned", stamped, timeout, every=0.02)


class _Publisher(BatchPublisher):
    first: float | None = None  # wall time of the first batch published

    def __call__(self, partition: int, batch: PacketBatch) -> None:
        if self.first is None:
            self.first = time.time()
        super().__call__(partition, batch)


def test_autoscaled_function_scales_to_zero_and_cold_starts_without_loss(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setenv("SNF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SNF_BROKERS", kafka_bootstrap)
    name = f"auto-{os.getpid() % 100000}-{int(time.time()) % 100000}"
    path = tmp_path / "auto.yaml"
    path.write_text(PIPELINE.format(name=name))
    pipeline = load_pipeline(path)
    requests, replies = _split(tmp_path)
    events: dict[tuple, dict] = {}  # every fw scale event seen, deduplicated

    def measured(key: str, seconds: float) -> None:  # in the --junitxml report
        request.node.user_properties.append((key, round(seconds, 2)))

    def fw_state() -> dict[str, Any]:
        status = _status(name, capsys)
        for e in status["scale_events"]:
            if e["function"] == "fw":
                events[(e["time"], e["from"], e["to"])] = e
        assert status["functions"]["flows"]["running"] == 1  # fixed: never scaled
        return status["functions"]["fw"]

    last: dict[str, Any] = {}

    def at_zero() -> bool:
        last.update(fw_state())
        return last["desired"] == 0 and last["running"] == 0 and not last["instances"]

    started = time.monotonic()
    assert main(["deploy", str(path), "--autoscale"]) == 0
    measured("deploy_s", time.monotonic() - started)
    dep_dir = dp.directory(name)
    try:
        # 1. No traffic: the firewall goes to zero after its 3 s cooldown.
        _until("scaled to zero while idle", at_zero, 30, seen=last)
        idle = [e for e in events.values() if e["to"] == 0]
        assert idle and idle[0]["from"] == 1 and idle[0]["reason"].startswith("idle"), events
        measured("deploy_to_zero_s", time.monotonic() - started)

        # 2. Packets while at zero: a cold start, and the lag (many batches per
        # partition, threshold 2 each) asks for the maximum of 2 instances. The second
        # one usually joins while the first is processing: what the first handled must
        # not be handled again by the second (the flow records would count it twice).
        publisher = _Publisher(kafka_bootstrap, pipeline.ingress_topic)
        s1 = _replay(pipeline, publisher, requests)
        publisher.producer.flush()
        published = time.monotonic()
        assert s1.batches > 2 * 2  # more than lag_threshold x max instances
        assert publisher.first is not None
        assigned = _first_assignment(dep_dir, "fw", publisher.first, 60)
        measured("cold_start_s", assigned - publisher.first)
        _until("scaled to 2", lambda: fw_state() and any(e["to"] == 2 for e in events.values()), 30)
        cold = [e for e in events.values() if e["from"] == 0]
        assert cold and cold[0]["reason"].startswith("cold start"), events

        # 3. Back to zero once every request is processed and committed.
        _until("scaled to zero after traffic", at_zero, 40, seen=last)
        measured("last_publish_to_zero_s", time.monotonic() - published)
        _until("fw lag 0", lambda: fw_state()["lag"] == 0, 10)  # all of it committed

        # 4. The replies, then the end marker: a second cold start, whose instances
        # must know the connections their predecessors opened.
        publisher.first = None
        s2 = _replay(pipeline, publisher, replies)
        end_ts = max(s1.last_ts_ns, s2.last_ts_ns)
        publisher.send_end_markers(EndMarker("end", end_ts), pipeline.partitions)
        publisher.producer.flush()
        assert publisher.first is not None
        assigned = _first_assignment(dep_dir, "fw", publisher.first, 60)
        measured("cold_start_with_state_s", assigned - publisher.first)
        publisher.close()

        sink = KafkaSink.of(kafka_bootstrap, pipeline)
        got = Collector()
        try:
            assert sink.collect(got, 90, end_id="end"), sink.unended("end")
        finally:
            sink.close()
        fw_state()
        assert len([e for e in events.values() if e["from"] == 0]) == 2, events

        local = LocalPipeline(pipeline)
        _replay(pipeline, local, requests)
        _replay(pipeline, local, replies)
        local.end_of_input("end", end_ts)
        _same(got, local.collector)
        assert got.total == local.collector.total == s1.packets + s2.packets

        # The replies pass only through connection tracking: without part 1's state
        # the firewall drops every one of them.
        alone = LocalPipeline(pipeline)
        _replay(pipeline, alone, replies)
        assert alone.port_totals()["fw"] == {"in": s2.packets, "pass": 0, "drop": s2.packets}
        passed = [k for k in got.packets[EGRESS] if k[0] == s2.source_id]
        assert len(passed) == s2.packets > 100
        measured("runtime_s", time.monotonic() - started)
        request.node.user_properties.append(
            ("fw_scale_events", sorted(events.values(), key=lambda e: e["time"]))
        )
    finally:
        assert main(["undeploy", name, "--delete-topics"]) == 0
    assert not dep_dir.exists()
    left = [t for t in admin.topic_partitions(kafka_bootstrap) if t.startswith(f"snf.{name}.")]
    assert left == []
