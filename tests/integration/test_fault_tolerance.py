"""The chaos suite, short version: faults mid-stream on a three-broker KRaft cluster
(replication 3, min.insync.replicas 2), each run judged against --local by `snf chaos`.

Every verdict must be clean: no packet lost, extra, duplicated or reordered, no
packet changed (a NAT binding, a policer's bucket, a backend...), no flow record
missing or extra. The faults: a kill -9 of one instance of each function at a
seeded point of the stream, of every instance of one function, a worker stopped
longer than its session (a zombie when it wakes), and a kill -9 of the broker
leading a function's input, restarted later. The long version is
bench/chaos_suite.py (more seeds, more faults, recovery times).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from snf.cli.main import main
from snf.egress.collector import Collector
from snf.egress.sink import KafkaSink
from snf.ingress.replay import ReplayOptions, replay, source_id_for
from snf.kafka import cluster
from snf.ops import deployment_dir as dp
from snf.packet.batch import PacketBatch
from snf.pipeline.loader import load_pipeline
from snf.runtime.local import LocalPipeline
from tests.integration.test_replay import _acked_seq, _messages
from tests.integration.test_suite_failover import _same

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CAPTURE = ROOT / "pipelines" / "captures" / "edge.pcapng"
SEED = 20261126


@pytest.fixture(scope="module")
def edge3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The edge chain with replication 3 (min ISR 2), and two load-balancer instances."""
    text = (ROOT / "pipelines" / "edge.yaml").read_text()
    text = text.replace("partitions: 4\n", "partitions: 4\nreplication: 3\n", 1)
    text = text.replace("function: loadbalancer\n", "function: loadbalancer\n    instances: 2\n")
    path = tmp_path_factory.mktemp("ft") / "edge.yaml"
    path.write_text(text)
    return path


def chaos(
    pipeline: Path,
    brokers: cluster.ClusterInfo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *faults: str,
) -> dict[str, Any]:
    out = tmp_path / "chaos.json"
    argv = ["chaos", str(pipeline), str(CAPTURE), "-l", "10", *faults, "--seed", str(SEED)]
    argv += ["--brokers", brokers.bootstrap, "--cluster", brokers.name, "--timeout", "40"]
    argv += ["--json", str(out), "--no-progress", "--rundir", str(tmp_path / "run")]
    code = main(argv)
    capsys.readouterr()
    report = json.loads(out.read_text())
    logs = tmp_path / "run" / "workers"
    assert code == 0 and report["verdict"]["clean"], (
        json.dumps({k: report[k] for k in ("faults", "restarts", "run_error")}, indent=1)
        + "\n"
        + json.dumps(report["verdict"]["totals"])
        + f"\nlogs in {logs}"
    )
    totals = report["verdict"]["totals"]
    assert set(totals.values()) == {0}
    for fault in report["faults"]:
        assert fault["observed"] == "killed" or fault["kind"] == "stop", fault
        assert not fault["error"], fault
    return report


@pytest.mark.parametrize("function", ["fw", "nat", "lb", "flows"])
def test_kill_one_instance_mid_stream(
    function: str,
    three_brokers: cluster.ClusterInfo,
    edge3: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    at = random.Random(f"{SEED}-{function}").randrange(15, 86)  # a seeded point
    report = chaos(edge3, three_brokers, tmp_path, capsys, "--kill", function, "--at", f"{at}%")
    (fault,) = report["faults"]
    assert 0 < fault["sent"] < report["packets"]  # mid-stream
    assert report["restarts"][function] == 1  # the supervisor brought it back


def test_kill_every_instance_of_a_function(
    three_brokers: cluster.ClusterInfo, edge3: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report = chaos(
        edge3,
        three_brokers,
        tmp_path,
        capsys,
        "--kill",
        "lb:0",
        "--at",
        "45%",
        "--kill",
        "lb:1",
        "--at",
        "45%",
    )
    assert report["restarts"]["lb"] == 2


def test_a_zombie_stopped_past_its_session_never_writes_again(
    three_brokers: cluster.ClusterInfo, edge3: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # 14 s > the 10 s session: the group evicts the stopped worker (the supervisor
    # sees a live process and waits). On SIGCONT it exits at once, before sending
    # anything it still held, and the supervisor restarts it.
    report = chaos(
        edge3, three_brokers, tmp_path, capsys, "--stop", "nat", "--at", "40%", "--for", "14s"
    )
    assert report["restarts"]["nat"] == 1
    log = (tmp_path / "run" / "workers" / "nat-0.log").read_text()
    assert "possibly fenced; exiting" in log


def test_kill_the_broker_leading_an_input_then_restart_it(
    three_brokers: cluster.ClusterInfo, edge3: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report = chaos(
        edge3,
        three_brokers,
        tmp_path,
        capsys,
        "--kill-broker",
        "leader:nat",
        "--at",
        "35%",
        "--for",
        "8s",
    )
    (fault,) = report["faults"]
    assert fault["kind"] == "kill-broker" and fault["continued_at"]  # restarted
    cluster.wait_ready(cluster.recorded(three_brokers.name))  # all three back for the next test


def test_scaling_and_a_resumed_capture_agent_on_a_deployment(
    three_brokers: cluster.ClusterInfo,
    edge3: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A deployed chain while traffic flows: nat scales 1 -> 2 -> 1, and the capture
    agent is killed mid-replay and resumed. The firewall drops the packets the resumed
    agent sends again (counted), so no stage sees one twice, and the output is --local's."""
    monkeypatch.setenv("SNF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SNF_BROKERS", three_brokers.bootstrap)
    name = f"ft{uuid.uuid4().hex[:6]}"
    path = tmp_path / "edge.yaml"
    path.write_text(edge3.read_text().replace("name: edge\n", f"name: {name}\n", 1))
    pipeline = load_pipeline(path)
    checkpoint = tmp_path / "replay.json"
    cmd = [
        *(sys.executable, "-m", "snf", "replay", str(CAPTURE), "--pipeline", name),
        *("-p", "1000", "-l", "5", "--flush", "--no-progress", "--checkpoint", str(checkpoint)),
    ]
    assert main(["deploy", str(path)]) == 0
    try:
        agent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        up = _in_thread(lambda: main(["scale", name, "nat", "2"]))  # while traffic flows
        deadline = time.monotonic() + 20
        while _acked_seq(checkpoint) < 2500:
            assert time.monotonic() < deadline and agent.poll() is None
            time.sleep(0.02)
        agent.kill()  # mid-replay: packets sent that the checkpoint does not have yet
        agent.wait()
        resumed = subprocess.Popen([*cmd, "--resume"], stderr=subprocess.PIPE, text=True)
        up.join(60)
        down = _in_thread(lambda: main(["scale", name, "nat", "1"]))
        assert resumed.wait(120) == 0, resumed.stderr.read() if resumed.stderr else ""
        down.join(60)
        end_id = (
            f"replay-{source_id_for([CAPTURE]):x}-{json.loads(checkpoint.read_text())['run_id']}"
        )

        sink = KafkaSink.of(three_brokers.bootstrap, pipeline)
        got = Collector()
        assert sink.collect(got, 90, end_id=end_id), sink.unended(end_id)
        sink.close()
        resent = _resent(three_brokers.bootstrap, pipeline.ingress_topic)
        stats = dp.workers_dir(dp.directory(name)) / "fw-0" / "stats.json"
        dropped = -1
        deadline = time.monotonic() + 10  # stats.json is rewritten every 2 s
        while dropped != resent and time.monotonic() < deadline:
            dropped = json.loads(stats.read_text())["counters"].get("duplicate_in_packets", 0)
            time.sleep(0.5)
        assert resent > 0 and dropped == resent  # the firewall dropped exactly the repeats
        assert got.duplicates == 0  # so nothing downstream saw a packet twice

        local = LocalPipeline(pipeline)
        keyers = local.ingress_hop.keyers
        summary = replay(
            [CAPTURE],
            pipeline.partitions,
            local,
            ReplayOptions(progress=False, loop=5),
            keyers=keyers,
        )
        local.end_of_input(end_id, summary.last_ts_ns)
        _same(got, local.collector)
    finally:
        assert main(["undeploy", name, "--delete-topics"]) == 0


def _in_thread(action: Any) -> threading.Thread:
    t = threading.Thread(target=action)
    t.start()
    return t


def _resent(brokers: str, topic: str) -> int:
    """Packets the ingress log holds twice: those the resumed agent sent again."""
    seen: set[tuple[int, int]] = set()
    twice = 0
    for _part, _offset, msg in _messages(brokers, topic):
        if isinstance(msg, PacketBatch):
            for pid in msg.packet_ids():
                twice += pid in seen
                seen.add(pid)
    return twice
