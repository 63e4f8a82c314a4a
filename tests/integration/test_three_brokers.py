"""The example monitoring pipeline on a local three-broker cluster, one command per
step: `snf kafka up --nodes 3`, validate, plan, deploy, status, plan again, replay,
sink, a refused partition change, undeploy --delete-topics. Every topic gets replication 3 with
min.insync.replicas 2, and the output equals --local exactly.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dpkt
import pytest

from snf.cli.main import main
from snf.egress.collector import Collector
from snf.egress.sink import KafkaSink
from snf.ingress.publisher import BatchPublisher
from snf.kafka import admin, cluster
from snf.ops import deployment_dir as dp
from snf.ops.deploy import undeploy
from snf.pipeline import names
from snf.pipeline.loader import load_pipeline
from snf.runtime.local import LocalPipeline
from snf.wire import EndMarker
from tests.integration.test_deploy import ROOT, A, _replay, _status
from tests.integration.test_suite_failover import _same

pytestmark = pytest.mark.integration

FUNCTIONS = ["ids", "police", "flows"]


def _plan(path: Path, brokers: str, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["plan", str(path), "--brokers", brokers, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _files(directory: Path) -> dict[str, list[str]]:
    """Each JSON Lines file's lines, in an order that does not depend on arrival."""
    return {f.name: sorted(f.read_text().splitlines()) for f in directory.glob("*.jsonl")}


def _egress(path: Path) -> list[tuple[float, bytes]]:
    with path.open("rb") as f:
        return sorted((ts, bytes(buf)) for ts, buf in dpkt.pcapng.Reader(f))


def test_monitoring_on_three_brokers(
    three_brokers: cluster.ClusterInfo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    brokers = three_brokers.bootstrap
    assert admin.broker_count(brokers) == 3
    # Every command gets --brokers or reads the deployment: nothing falls back on
    # the session's broker or a recorded default cluster.
    monkeypatch.delenv("SNF_BROKERS", raising=False)
    monkeypatch.setenv("SNF_HOME", str(tmp_path / "home"))
    name = f"mon3-t{os.getpid() % 100000}"
    text = (ROOT / "pipelines" / "monitoring.yaml").read_text()
    assert "\nname: monitoring\npartitions: 4\n" in text
    text = text.replace("\nname: monitoring\n", f"\nname: {name}\nreplication: 3\n")
    path = tmp_path / "monitoring.yaml"
    path.write_text(text)
    pipeline = load_pipeline(path)
    prefix = f"{names.PREFIX}.{name}."

    assert main(["validate", str(path)]) == 0

    before = _plan(path, brokers, capsys)
    topics = {t["topic"]: t for t in before["topics"]}
    assert set(topics) == set(pipeline.topic_specs())
    assert {t["kind"] for t in topics.values()} == {"ingress", "input", "terminal", "changelog"}
    for t in topics.values():
        assert t["topic"].startswith(prefix), t
        assert (t["action"], t["partitions"], t["replication"]) == ("create", 4, 3), t
        assert t["configs"]["min.insync.replicas"] == "2", t
        policy = t["configs"].get("cleanup.policy", "delete")
        assert policy == ("compact" if t["kind"] == "changelog" else "delete"), t
        assert t["have"] == {} and not t["refused"], t
    assert {(g["function"], g["group"], g["exists"]) for g in before["groups"]} == {
        (f, names.group_id(name, f), False) for f in FUNCTIONS
    }

    assert main(["deploy", str(path), "--brokers", brokers]) == 0
    dep_dir = dp.directory(name)
    assert dep_dir.is_relative_to(tmp_path)
    try:
        status = _status(name, capsys)
        assert status["brokers"] == brokers and status["supervisor"]["alive"]
        for f in FUNCTIONS:
            fs = status["functions"][f]
            assert fs["running"] == 1, fs
            owned = sorted(p for inst in fs["instances"] for p in inst["partitions"])
            assert owned == [0, 1, 2, 3], fs

        after = _plan(path, brokers, capsys)
        assert [t["topic"] for t in after["topics"]] == list(topics)
        for t in after["topics"]:
            assert t["action"] == "ok" and t["differences"] == [], t
            have = t["have"]
            assert (have["partitions"], have["replication"]) == (4, 3), t
            assert have["configs"]["min.insync.replicas"] == "2", t
            # describe_configs reports what differs from the broker's defaults only
            # (cleanup.policy delete is the default).
            want_policy = "compact" if t["kind"] == "changelog" else None
            assert have["configs"].get("cleanup.policy") == want_policy, t
        assert {(g["function"], g["exists"]) for g in after["groups"]} == {
            (f, True) for f in FUNCTIONS
        }

        # Traffic through the deployed functions, compared with --local.
        publisher = BatchPublisher(brokers, pipeline.ingress_topic)
        sent = _replay(pipeline, publisher, A, None)
        publisher.send_end_markers(EndMarker("end", sent.last_ts_ns), pipeline.partitions)
        publisher.close()
        sink = KafkaSink.of(brokers, pipeline)
        got = Collector()
        try:
            assert sink.collect(got, 60, end_id="end"), sink.unended("end")
        finally:
            sink.close()
        local = LocalPipeline(pipeline)
        _replay(pipeline, local, A, None)
        local.end_of_input("end", sent.last_ts_ns)
        _same(got, local.collector)
        assert got.total == local.collector.total == sent.packets > 2000  # each packet once
        assert {w for w, r in got.records.items() if r} == {("ids", "alerts"), ("flows", "flows")}
        # The user's one command for the same: `snf sink` into files.
        out, events = tmp_path / "out.pcapng", tmp_path / "events"
        sink_args = ["--brokers", brokers, "-o", str(out), "--events", str(events)]
        assert main(["sink", "--pipeline", name, *sink_args, "--idle", "3"]) == 0
        local.collector.write_events(tmp_path / "ref-events")
        local.collector.write_pcapng(tmp_path / "ref.pcapng")
        assert _files(events) == _files(tmp_path / "ref-events") != {}
        assert _egress(out) == _egress(tmp_path / "ref.pcapng") != []

        # Another partition count is refused before anything is touched.
        generation = dp.load(dep_dir).generation
        deployed_file = (dep_dir / "pipeline.yaml").read_text()
        path.write_text(text.replace("\npartitions: 4\n", "\npartitions: 8\n"))
        refused = {t["topic"] for t in _plan(path, brokers, capsys)["topics"] if t["refused"]}
        assert refused == set(topics)
        assert main(["plan", str(path), "--brokers", brokers]) == 1
        capsys.readouterr()
        assert main(["deploy", str(path), "--brokers", brokers]) != 0
        err = capsys.readouterr().err
        assert "refusing to change partition counts" in err, err
        assert "state and NAT bindings are partitioned by these counts" in err, err
        for topic in refused:
            assert f"{topic}: partitions 4 -> 8" in err, err
        assert dp.load(dep_dir).generation == generation
        assert (dep_dir / "pipeline.yaml").read_text() == deployed_file
        counts = admin.topic_partitions(brokers)
        assert {t: counts[t] for t in topics} == dict.fromkeys(topics, 4)
        status = _status(name, capsys)
        assert status["generation"] == generation
        assert all(status["functions"][f]["running"] == 1 for f in FUNCTIONS)
    finally:
        if dep_dir.exists():
            code = main(["undeploy", name, "--delete-topics"])
            if code != 0:  # still stop the workers; the cluster goes with the module
                undeploy(dep_dir)
            assert code == 0
    assert not dep_dir.exists()
    # Faust's leader topics (snf.<name>.<fn>-__assignor-__leader) went too.
    # A deletion reaches the brokers' metadata one after the other (about 0.5 s apart
    # on this machine), and each query asks whichever broker is least loaded.
    deadline = time.monotonic() + 15
    while left := [t for t in admin.topic_partitions(brokers) if t.startswith(prefix)]:
        assert time.monotonic() < deadline, f"still listed after undeploy: {left}"
        time.sleep(0.2)
