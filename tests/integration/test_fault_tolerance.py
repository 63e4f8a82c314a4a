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
from pathlib import Path
from typing import Any

import pytest

from snf.cli import main
from snf.kafka import cluster

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
