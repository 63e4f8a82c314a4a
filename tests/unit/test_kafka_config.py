"""server.properties rendering and cluster layout; no broker, no JVM."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from snf.kafka.cluster import DEPLOY_DIR, KAFKA_VERSION
from snf.kafka.kraft_config import (
    ClusterInfo,
    free_ports,
    new_cluster_id,
    node_properties,
    plan,
    quorum_voters,
    render_properties,
    specs_of,
)

PORTS = [9001, 9002, 9011, 9012, 9021, 9022]


def _cluster(nodes: int, tmp_path: Path) -> ClusterInfo:
    return plan("t", nodes, tmp_path / "t", PORTS[: 2 * nodes])


def _parse(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_one_node_is_a_combined_loopback_node_with_replication_one(tmp_path: Path) -> None:
    specs = specs_of(_cluster(1, tmp_path))
    props = node_properties(specs[0], specs)
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9002"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9001,CONTROLLER://127.0.0.1:9002"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9001"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "t" / "node-1" / "data")
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "min.insync.replicas",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert props["num.partitions"] == "1"
    assert int(props["log.retention.hours"]) > 0


def test_three_nodes_share_voters_and_tolerate_one_loss(tmp_path: Path) -> None:
    specs = specs_of(_cluster(3, tmp_path))
    voters = "1@127.0.0.1:9002,2@127.0.0.1:9012,3@127.0.0.1:9022"
    assert quorum_voters(specs) == voters
    all_props = [node_properties(spec, specs) for spec in specs]
    assert [p["node.id"] for p in all_props] == ["1", "2", "3"]
    assert {p["controller.quorum.voters"] for p in all_props} == {voters}
    assert len({p["log.dirs"] for p in all_props}) == 3
    for props in all_props:
        assert props["default.replication.factor"] == "3"
        assert props["offsets.topic.replication.factor"] == "3"
        assert props["transaction.state.log.replication.factor"] == "3"
        assert props["min.insync.replicas"] == "2"
        assert props["transaction.state.log.min.isr"] == "2"
    assert all_props[2]["listeners"] == "PLAINTEXT://127.0.0.1:9021,CONTROLLER://127.0.0.1:9022"


@pytest.mark.parametrize("nodes", [1, 3])
def test_every_listener_is_on_loopback(nodes: int, tmp_path: Path) -> None:
    specs = specs_of(_cluster(nodes, tmp_path))
    for spec in specs:
        props = node_properties(spec, specs)
        hosts = re.findall(r"//([^:]+):", props["listeners"] + props["advertised.listeners"])
        assert set(hosts) == {"127.0.0.1"}


def test_rendered_text_parses_back_to_the_same_properties(tmp_path: Path) -> None:
    specs = specs_of(_cluster(3, tmp_path))
    props = node_properties(specs[1], specs)
    text = render_properties(props)
    assert text.startswith("#") and text.endswith("\n")
    assert _parse(text) == props


def test_plan_lays_out_nodes_and_bootstrap(tmp_path: Path) -> None:
    info = _cluster(3, tmp_path)
    assert info.bootstrap == "127.0.0.1:9001,127.0.0.1:9011,127.0.0.1:9021"
    node = info.node(2)
    assert (node.port, node.controller_port, node.pid) == (9011, 9012, 0)
    assert node.props == tmp_path / "t" / "node-2" / "server.properties"
    assert Path(node.log_file).parent == Path(node.log_dir).parent


def test_cluster_info_round_trips_through_json(tmp_path: Path) -> None:
    info = _cluster(3, tmp_path)
    info.nodes[0].pid = 4242
    assert ClusterInfo.from_json(info.to_json()) == info


def test_cluster_id_has_the_storage_tool_format() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_free_ports_are_distinct() -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6 and all(0 < p < 65536 for p in ports)


def test_pom_pins_the_version_the_code_expects() -> None:
    pom = (DEPLOY_DIR / "pom.xml").read_text()
    assert f"<kafka.version>{KAFKA_VERSION}</kafka.version>" in pom
    assert (DEPLOY_DIR / "log4j.properties").exists()
