"""The `snf` command line in-process: validate, run --local, replay and kafka status errors."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from snf.cli.main import main
from snf.packet.capture_file import read_capture
from tests.packets import read_pcap

REPO = Path(__file__).resolve().parents[2]
EDGE = REPO / "pipelines" / "perimeter.yaml"

BAD_PIPELINE = """\
name: edge-bad
partitions: 4
functions:
  - name: fw
    function: firewall
    config:
      rules:
        - {action: permit, proto: tcp}
      defualt: drop
"""


def test_validate_prints_the_chain(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EDGE)]) == 0
    err = capsys.readouterr().err
    assert "ok" in err
    assert "pipeline perimeter, 4 partitions: fw(firewall)" in err


def test_validate_shows_how_each_stage_is_partitioned(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(REPO / "pipelines" / "edge.yaml")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "  fw: input partitioned by the key of nat, then lb" in lines
    assert "  flows: input keeps its partition (no re-split)" in lines


def test_validate_bad_file_prints_one_unwrapped_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / ("a-long-pipeline-file-name-so-that-each-line-is-wider-than-a-terminal.yaml")
    path.write_text(BAD_PIPELINE)
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    first = re.escape(f"{path}:8: functions[0].config.rules[0].action: ")
    second = re.escape(f"{path}:9: functions[0].config.defualt: unknown field")
    assert any(re.fullmatch(f"(error: )?{first}.*'permit'", line) for line in lines), lines
    assert any(re.fullmatch(f"(error: )?{second}.*'default'\\?", line) for line in lines), lines
    assert "Traceback" not in "\n".join(lines)


def test_run_local_writes_results_that_agree_with_the_summary(
    traffic: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = traffic("tcpreplay-test.pcap")
    out, events, summary = tmp_path / "out.pcapng", tmp_path / "events", tmp_path / "run.json"
    argv = ["run", str(EDGE), str(capture), "--local", "--out", str(out)]
    argv += ["--events", str(events), "--json", str(summary), "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()

    result = json.loads(summary.read_text())
    _, expected = read_pcap(capture)
    assert result["mode"] == "local"
    assert result["packets"] == len(expected) == 179
    assert result["duplicates"] == 0
    egress = list(read_capture(out))
    assert len(egress) == result["egress"] > 0
    drops = result["functions"]["fw"]["drop"]
    assert sum(drops.values()) > 0
    assert result["egress"] + sum(drops.values()) == result["packets"]
    lines = (events / "fw.drop.jsonl").read_text().splitlines()
    assert len(lines) == sum(drops.values())
    assert {json.loads(x)["reason"] for x in lines} == set(drops)
    # Egress keeps capture order: the packets are a subsequence of the capture.
    wanted = iter(data for _, data in expected)
    assert all(any(p.data == data for data in wanted) for p in egress)


def test_run_local_with_a_missing_capture_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-capture.pcap"
    code = main(["run", str(EDGE), str(missing), "--local", "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    assert str(missing) in err
    assert "Traceback" not in err


def test_replay_with_an_unknown_pipeline_name(
    traffic: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./pipelines here
    monkeypatch.setenv("SNF_HOME", str(tmp_path / "home"))
    capture = traffic("zeek-ipv6.pcap")
    assert main(["replay", str(capture), "--pipeline", "no-such-pipeline"]) == 2
    err = capsys.readouterr().err
    assert "no pipeline file 'no-such-pipeline'" in err
    assert "pipelines/no-such-pipeline.yaml" in err


def test_kafka_status_of_an_unknown_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SNF_HOME", str(tmp_path))
    name = f"t-{uuid.uuid4().hex[:12]}"
    assert main(["kafka", "status", "--name", name, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["name"] == name
    assert status["running"] is False
    assert status["recorded"] is False


def test_run_local_chain_reports_every_port_and_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = REPO / "pipelines" / "monitoring.yaml"
    capture = REPO / "pipelines" / "captures" / "monitoring.pcapng"
    events, summary = tmp_path / "events", tmp_path / "run.json"
    argv = ["run", str(pipeline), str(capture), "--local", "--events", str(events)]
    assert main([*argv, "--json", str(summary), "--no-progress"]) == 0
    table = capsys.readouterr().err
    assert "alerts 47" in table and "exceed:rate=" in table

    result = json.loads(summary.read_text())
    functions = result["functions"]
    assert functions["ids"]["alerts"] == {"records": 47}
    assert functions["flows"]["flows"]["records"] > 0
    dropped = sum(
        n
        for port in ("drop", "exceed")
        for fn in functions.values()
        for n in fn.get(port, {}).values()
    )
    assert result["egress"] + dropped == result["packets"]
    files = sorted(p.name for p in events.iterdir())
    assert files == [
        "flows.flows.jsonl",
        "ids.alerts.jsonl",
        "ids.drop.jsonl",
        "police.exceed.jsonl",
    ]
    alert = json.loads((events / "ids.alerts.jsonl").read_text().splitlines()[0])
    assert {"ts", "packet_id", "sid", "rev", "msg", "action", "proto"} <= set(alert)


def test_schema_prints_the_shipped_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--builtin"]) == 0
    out = capsys.readouterr().out
    assert out == (REPO / "schemas" / "pipeline.schema.json").read_text()
    assert json.loads(out)["properties"]["wiring"]


def test_render_k8s_writes_one_manifest_per_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tap = REPO / "pipelines" / "tap.yaml"
    assert main(["render", "k8s", str(tap), "--out", str(tmp_path), "--brokers", "k:9092"]) == 0
    kinds = sorted(p.name.split("-")[1] for p in tmp_path.glob("*.yaml"))
    # ConfigMap, topics Job, five Deployments, and KEDA for the autoscaled firewall
    assert kinds.count("deployment") == 5 and kinds.count("scaledobject") == 1
    assert {"configmap", "job"} <= set(kinds)
    assert main(["render", "k8s", str(tap)]) == 0
    assert capsys.readouterr().out.count("\n---\n") >= 7  # one YAML stream on stdout


def test_validate_prints_every_link_of_a_graph(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(REPO / "pipelines" / "tap.yaml")]) == 0
    err = capsys.readouterr().err
    assert "pass -> egress (snf.tap.egress), flows (snf.tap.flows.in)" in err
    assert "alerts -> topic:tap-alerts (tap-alerts)" in err
    assert "blocked: input keeps its partition" in err
