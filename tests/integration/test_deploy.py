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

from snf.cli.main import main
from snf.egress.collector import Collector
from snf.egress.sink import KafkaSink
from snf.ingress.publisher import BatchPublisher
from snf.ingress.replay import ReplayOptions, ReplaySummary, replay
from snf.kafka import admin
from snf.ops import deployment_dir as dp
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import Pipeline
from snf.pipeline.routing import plan_pipeline
from snf.runtime.local import LocalPipeline
from snf.wire import EndMarker
from tests.integration.test_suite_failover import _same

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / "pipelines" / "captures"
A, B = CAPTURES / "monitoring.pcapng", CAPTURES / "edge.pcapng"


def _status(name: str, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["status", name, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A worker's /metrics: (sample name, sorted labels) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sample(samples: dict, name: str, **labels: str) -> float | None:
    """The one sample of `name` whose labels include `labels` (None: none)."""
    want = labels.items()
    found = [v for (n, ls), v in samples.items() if n == name and want <= dict(ls).items()]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


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

        publisher = BatchPublisher(kafka_bootstrap, pipeline.ingress_topic)
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
        publisher.send_end_markers(EndMarker("end", end_ts), pipeline.partitions)

        # A kill -9 once the pipeline is idle: the supervisor restarts the worker and
        # the successor restores the firewall's connections from the changelog.
        sink = KafkaSink.of(kafka_bootstrap, pipeline)
        got = Collector()
        assert sink.collect(got, 90, end_id="end"), sink.unended("end")
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
        publisher.send_end_markers(
            EndMarker("end2", max(end_ts, s3.last_ts_ns)), pipeline.partitions
        )
        publisher.close()
        assert sink.collect(got, 90, end_id="end2"), sink.unended("end2")
        sink.close()

        local = LocalPipeline(pipeline)
        _replay(pipeline, local, A, None)
        _replay(pipeline, local, B, None)
        local.end_of_input("end", end_ts)
        _replay(pipeline, local, A, None, source_id=77)
        local.end_of_input("end2", max(end_ts, s3.last_ts_ns))
        _same(got, local.collector)
        assert got.total == local.collector.total > 3000

        assert main(["logs", name, "fw", "-n", "5"]) == 0
    finally:
        assert main(["undeploy", name, "--delete-topics"]) == 0
    assert not dep_dir.exists()
    left = [t for t in admin.topic_partitions(kafka_bootstrap) if t.startswith(f"snf.{name}.")]
    assert left == []


STATEFUL = """\
name: {name}
partitions: 4
functions:
  - name: fw
    function: firewall
    instances: 2
    config:
      default: drop
      rules: [{{action: allow, proto: tcp, src: 10.0.0.0/8, dport: 443}}]
      timeouts: {{tcp: {timeout}}}
"""


def _wait_generation(name: str, generation: int, capsys: pytest.CaptureFixture[str]) -> dict:
    """Until the supervisor runs `generation` everywhere, every instance ready."""
    deadline = time.monotonic() + 120
    while True:
        status = _status(name, capsys)
        fw = status["functions"]["fw"]
        target = json.loads((dp.directory(name) / "deployment.json").read_text())
        want = target["functions"]["fw"]["config_hash"]
        ready = all(
            i["config_hash"] == want and i["state"] == "running" and i["partitions"]
            for i in fw["instances"]
        )
        if status["generation"] == generation and ready and fw["running"] == 2:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


def test_redeploy_rolls_instances_and_keeps_state(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.integration.test_suite_failover import CLIENTS, SERVER, _write
    from tests.packets import tcp4

    monkeypatch.setenv("SNF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SNF_BROKERS", kafka_bootstrap)
    name = f"roll-t{os.getpid() % 100000}"
    path = tmp_path / "p.yaml"
    path.write_text(STATEFUL.format(name=name, timeout=3600))
    syns = [tcp4(c, SERVER, port, 443, flags="S") for c, port in CLIENTS]
    replies = [tcp4(SERVER, c, 443, port, flags="SA") for c, port in CLIENTS]
    part1 = _write(tmp_path / "part1.pcapng", syns, 10**18)
    part2 = _write(tmp_path / "part2.pcapng", replies, 10**18 + 10**9)
    assert main(["deploy", str(path)]) == 0
    try:
        before = _status(name, capsys)["functions"]["fw"]["instances"]
        pipeline = load_pipeline(path)
        publisher = BatchPublisher(kafka_bootstrap, pipeline.ingress_topic)
        _replay(pipeline, publisher, part1, None)
        publisher.producer.flush(timeout=30)
        deadline = time.monotonic() + 30
        while _status(name, capsys)["functions"]["fw"]["lag"] != 0:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        _status_and_top_find_the_metrics(name, capsys, len(syns))

        # A changed config: the same deploy command rolls fw, one instance at a time.
        path.write_text(STATEFUL.format(name=name, timeout=7200))
        assert main(["deploy", str(path)]) == 0
        after = _wait_generation(name, 2, capsys)["functions"]["fw"]["instances"]
        assert {i["pid"] for i in after}.isdisjoint({i["pid"] for i in before})
        assert all(i["restarts"] == 0 for i in after)  # replaced, not crashed

        # The replies pass only if the connections from part 1 survived the roll.
        _replay(pipeline, publisher, part2, None)
        publisher.send_end_markers(EndMarker("end", 10**18 + 2 * 10**9), pipeline.partitions)
        publisher.close()
        sink = KafkaSink.of(kafka_bootstrap, pipeline)
        got = Collector()
        assert sink.collect(got, 60, end_id="end"), sink.unended("end")
        sink.close()
        assert got.count(("", "egress")) == 2 * len(CLIENTS)
        assert got.count(("fw", "drop")) == 0
        _sink_follow_survives_ctrl_c(name, tmp_path, 2 * len(CLIENTS))
    finally:
        assert main(["undeploy", name, "--delete-topics"]) == 0


def test_worker_serves_liveness_and_readiness(kafka_bootstrap: str, tmp_path: Path) -> None:
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from snf.harness.oneshot import create_topics
    from snf.kafka.kraft_config import free_ports

    name = f"probe-t{os.getpid() % 100000}"
    path = tmp_path / "p.yaml"
    path.write_text(STATEFUL.format(name=name, timeout=60).replace("instances: 2", "instances: 1"))
    pipeline = load_pipeline(path)
    create_topics(kafka_bootstrap, pipeline)
    port = free_ports(1)[0]
    cmd = [
        sys.executable,
        "-m",
        "snf",
        "worker",
        str(path),
        "fw",
        "--brokers",
        kafka_bootstrap,
        "--datadir",
        str(tmp_path / "d"),
        "--health-port",
        str(port),
    ]
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def get(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0  # not listening yet

    try:
        deadline = time.monotonic() + 60
        while get("/readyz") != 200:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.2)
        assert get("/livez") == 200
        assert get("/nope") == 404
        _metrics_count_a_published_batch(kafka_bootstrap, pipeline, f"http://127.0.0.1:{port}")
        proc.send_signal(signal.SIGTERM)  # a drain, then Faust's own shutdown
        assert proc.wait(30) == 0
        assert "drained and committed" in (tmp_path / "worker.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        admin.delete_topics(kafka_bootstrap, list(pipeline.topic_specs()))


def _status_and_top_find_the_metrics(
    name: str, capsys: pytest.CaptureFixture[str], packets: int
) -> None:
    """Each supervised worker's /metrics, found through `snf status`, counted what it
    handled under its own instance number; `snf top --once` shows every instance."""
    deadline = time.monotonic() + 30
    while not all(i["metrics_url"] for i in _status(name, capsys)["functions"]["fw"]["instances"]):
        assert time.monotonic() < deadline, "no metrics URL in snf status"
        time.sleep(0.5)  # stats.json comes every 2 s
    total = 0.0
    for inst in _status(name, capsys)["functions"]["fw"]["instances"]:
        samples = _scrape(inst["metrics_url"])
        got = _sample(samples, "snf_packets_in_total", instance=str(inst["instance"]))
        assert got is not None, inst
        total += got
    assert total == packets
    capsys.readouterr()
    assert main(["top", name, "--once", "--interval", "0.2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "│ fw " in line]
    assert len(rows) == 2 and "no answer" not in "".join(rows), rows


def _metrics_count_a_published_batch(brokers: str, pipeline: Pipeline, base: str) -> None:
    """One batch of 8 packets to partition 0: /metrics counts it, times it, and sees the
    Kafka timestamp it was published with."""
    from snf.packet.batch import PacketBatch
    from tests.packets import tcp4

    frames = [tcp4("10.0.0.1", "192.0.2.1", 1000 + i, 443, flags="S") for i in range(8)]
    rows = [(10**9 + i, len(f), f, 7, i, "") for i, f in enumerate(frames)]
    publisher = BatchPublisher(brokers, pipeline.ingress_topic)
    publisher(0, PacketBatch.from_rows(1, rows))
    publisher.close()
    labels = {"pipeline": pipeline.name, "function": "fw"}
    deadline = time.monotonic() + 30
    while True:
        samples = _scrape(f"{base}/metrics")
        lag = _sample(samples, "snf_consumer_lag_messages", partition="0", **labels)
        if _sample(samples, "snf_packets_in_total", **labels) == 8 and lag is not None:
            break
        assert time.monotonic() < deadline, samples
        time.sleep(0.2)
    assert _sample(samples, "snf_batches_total", **labels) == 1
    assert _sample(samples, "snf_packets_out_total", port="pass", **labels) == 8
    assert _sample(samples, "snf_stage_seconds_count", stage="engine", **labels) == 1
    assert _sample(samples, "snf_hop_latency_seconds_count", **labels) == 1
    assert lag == 0  # handled, and the fetcher knows partition 0's end
    assert _sample(samples, "snf_state_writes_total", table="conn", **labels) == 8


def _sink_follow_survives_ctrl_c(name: str, tmp_path: Path, expected: int) -> None:
    """`snf sink --follow` streams until Ctrl-C and leaves a complete, valid pcapng."""
    import subprocess
    import sys

    from snf.packet.capture_file import CaptureError, read_capture

    def count() -> int:
        try:
            return len(list(read_capture(out)))
        except (CaptureError, OSError):
            return 0  # not created, or its header not written yet

    out = tmp_path / "follow.pcapng"
    cmd = [sys.executable, "-m", "snf", "sink", "--pipeline", name, "--out", str(out), "--follow"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    # Until everything is in: a pcapng EPB is written (and flushed) whole per packet.
    while count() < expected:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"{expected} packets at egress" in err.decode()
    assert count() == expected
