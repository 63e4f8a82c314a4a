"""A deployed pipeline's whole life on the real broker, through the `snf` commands:
validate, plan, deploy, replay while scaling 1 -> 3 -> 1, sink, status, kill -9 and
restart by the supervisor, undeploy. The output must equal --local exactly.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from snf import deployment as dp
from snf.cli import main
from snf.collect import Collector
from snf.kafka import admin
from snf.kafka.publisher import KafkaPublisher
from snf.local import LocalPipeline
from snf.pipeline import Pipeline, load_pipeline
from snf.replay import ReplayOptions, ReplaySummary, replay
from snf.routing import plan_pipeline
from snf.sink import KafkaSink
from snf.wire import Flush
from tests.integration.test_suite_failover import _same

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / "pipelines" / "captures"
A, B = CAPTURES / "monitoring.pcapng", CAPTURES / "edge.pcapng"


def _status(name: str, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["status", name, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _replay(pipeline: Pipeline, publisher, capture: Path, pps: float | None, **kw) -> ReplaySummary:
    keyers = plan_pipeline(pipeline).ingress_hop.keyers
    opts = ReplayOptions(progress=False, pps=pps, max_packets=64, **kw)
    return replay([capture], pipeline.partitions, publisher, opts, keyers=keyers)


def _while(action, replay_fn) -> ReplaySummary:
    """Run replay_fn in a thread and `action` while it runs (traffic flows)."""
    out: list[ReplaySummary] = []
    t = threading.Thread(target=lambda: out.append(replay_fn()))
    t.start()
    time.sleep(0.3)
    action()
    t.join(120)
    assert out, "the replay did not finish"
    return out[0]


def test_deployed_pipeline_scales_restarts_and_matches_local(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SNF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SNF_BROKERS", kafka_bootstrap)
    name = f"tap-t{os.getpid() % 100000}"
    text = (ROOT / "pipelines" / "tap.yaml").read_text()
    text = text.replace("name: tap\n", f"name: {name}\n").replace("topic:tap-", f"topic:{name}-")
    path = tmp_path / "tap.yaml"
    path.write_text(text)
    pipeline = load_pipeline(path)
    assert main(["validate", str(path)]) == 0
    assert main(["plan", str(path)]) == 0
    assert "create" in capsys.readouterr().err
    assert main(["deploy", str(path)]) == 0
    dep_dir = dp.directory(name)
    try:
        status = _status(name, capsys)
        assert status["supervisor"]["alive"]
        assert {f: s["running"] for f, s in status["functions"].items()} == dict.fromkeys(
            ["ids", "fw", "police", "flows", "blocked"], 1
        )

        publisher = KafkaPublisher(kafka_bootstrap, pipeline.ingress_topic)
        s1 = _while(
            lambda: main(["scale", name, "fw", "3"]), lambda: _replay(pipeline, publisher, A, 800)
        )
        status = _status(name, capsys)
        fw = status["functions"]["fw"]
        assert fw["running"] == 3
        owned = [p for inst in fw["instances"] for p in inst["partitions"]]
        assert sorted(owned) == [0, 1, 2, 3]  # every partition owned once
        s2 = _while(
            lambda: main(["scale", name, "fw", "1"]), lambda: _replay(pipeline, publisher, B, 800)
        )
        end_ts = max(s1.last_ts_ns, s2.last_ts_ns)
        publisher.flush_all(Flush("end", end_ts), pipeline.partitions)

        # A kill -9 once the pipeline is idle: the supervisor restarts the worker and
        # the successor restores the firewall's connections from the changelog.
        sink = KafkaSink(kafka_bootstrap, pipeline.sink_topics(), pipeline.terminal_ends())
        got = Collector()
        assert sink.collect(got, 90, flush_id="end"), sink.unflushed("end")
        # Killed after its offsets are committed: at-least-once replays nothing here
        # (a kill mid-batch is issue 5's subject).
        deadline = time.monotonic() + 30
        while any(f["lag"] != 0 for f in _status(name, capsys)["functions"].values()):
            assert time.monotonic() < deadline, "the functions never committed everything"
            time.sleep(0.5)
        victim = _status(name, capsys)["functions"]["fw"]["instances"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            fw = _status(name, capsys)["functions"]["fw"]
            inst = fw["instances"][0]
            restarted = inst["pid"] not in (None, victim) and inst["state"] == "running"
            if restarted and inst["partitions"] == [0, 1, 2, 3]:
                break
            assert time.monotonic() < deadline, fw
            time.sleep(0.5)
        assert fw["restarts"] == 1
        s3 = _replay(pipeline, publisher, A, None, source_id=77)
        publisher.flush_all(Flush("end2", max(end_ts, s3.last_ts_ns)), pipeline.partitions)
        publisher.close()
        assert sink.collect(got, 90, flush_id="end2"), sink.unflushed("end2")
        sink.close()

        local = LocalPipeline(pipeline)
        _replay(pipeline, local, A, None)
        _replay(pipeline, local, B, None)
        local.flush("end", end_ts)
        _replay(pipeline, local, A, None, source_id=77)
        local.flush("end2", max(end_ts, s3.last_ts_ns))
        _same(got, local.collector)
        assert got.total == local.collector.total > 3000

        assert main(["logs", name, "fw", "-n", "5"]) == 0
    finally:
        assert main(["undeploy", name, "--delete-topics"]) == 0
    assert not dep_dir.exists()
    left = [t for t in admin.topic_partitions(kafka_bootstrap) if t.startswith(f"snf.{name}.")]
    assert left == []
