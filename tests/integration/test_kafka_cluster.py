"""The real broker: topic management, reachability probes and cluster records."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from snf.kafka.admin import delete_topics, ensure_topics, topic_partitions
from snf.kafka.cluster import (
    BrokerError,
    ClusterInfo,
    down,
    is_reachable,
    recorded,
    resolve_brokers,
    status,
    up,
)
from snf.kafka.kraft_config import free_ports

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(kafka_cluster: ClusterInfo | None) -> ClusterInfo:
    """The session's own broker (these tests look at its record and processes)."""
    if kafka_cluster is None:
        pytest.skip(reason="cluster tests need the project's own broker (not SNF_TEST_BROKERS)")
    return kafka_cluster


@pytest.fixture
def topic_names(broker: ClusterInfo) -> Iterator[list[str]]:
    """Unique topic names, deleted afterwards (the broker is shared)."""
    names = [f"test-cluster-{uuid.uuid4().hex[:8]}-{i}" for i in range(2)]
    yield names
    delete_topics(broker.bootstrap, names)


def _closed_port() -> str:
    return f"127.0.0.1:{free_ports(1)[0]}"


def test_up_is_idempotent(broker: ClusterInfo) -> None:
    started = time.monotonic()
    again = up(nodes=1, name=broker.name)
    assert again == broker
    assert time.monotonic() - started < 5
    state = status(broker.name)
    assert state["running"] and all(node["alive"] for node in state["nodes"])


def test_up_refuses_another_size_for_a_running_cluster(broker: ClusterInfo) -> None:
    with pytest.raises(BrokerError, match="already runs with 1 nodes"):
        up(nodes=3, name=broker.name)


def test_ensure_topics_is_idempotent(broker: ClusterInfo, topic_names: list[str]) -> None:
    a, b = topic_names
    wanted = {a: 3, b: 1}
    assert ensure_topics(broker.bootstrap, wanted) == sorted(wanted)
    assert ensure_topics(broker.bootstrap, wanted) == []
    counts = topic_partitions(broker.bootstrap)
    assert counts[a] == 3 and counts[b] == 1
    assert delete_topics(broker.bootstrap, [a, b]) == sorted([a, b])
    assert a not in topic_partitions(broker.bootstrap)
    assert ensure_topics(broker.bootstrap, {a: 2}) == [a]  # deletion really finished


def test_partition_mismatch_names_topic_and_both_counts(
    broker: ClusterInfo, topic_names: list[str]
) -> None:
    name = topic_names[0]
    ensure_topics(broker.bootstrap, {name: 2})
    with pytest.raises(BrokerError, match=rf"{name}.* 2 partitions.* 3 were asked"):
        ensure_topics(broker.bootstrap, {name: 3})


def test_ensure_topics_applies_topic_configs(broker: ClusterInfo, topic_names: list[str]) -> None:
    name = topic_names[0]
    configs = {name: {"cleanup.policy": "compact"}}
    assert ensure_topics(broker.bootstrap, {name: 1}, configs=configs) == [name]
    with pytest.raises(BrokerError, match="failed"):  # the broker's own refusal is reported
        ensure_topics(broker.bootstrap, {topic_names[1]: 1}, replication=5)


def test_ensure_topics_reports_a_missing_broker_clearly() -> None:
    bootstrap = _closed_port()
    started = time.monotonic()
    with pytest.raises(BrokerError, match=rf"no Kafka broker answers at {bootstrap} after 2 tries"):
        ensure_topics(bootstrap, {"x": 1}, retries=2)
    assert time.monotonic() - started < 5


def test_is_reachable(broker: ClusterInfo) -> None:
    assert is_reachable(broker.bootstrap)


def test_is_not_reachable_on_a_closed_port_and_returns_fast() -> None:
    started = time.monotonic()
    assert not is_reachable(_closed_port())
    assert time.monotonic() - started < 5


def test_is_not_reachable_on_a_silent_listener_within_the_timeout() -> None:
    with socket.socket() as silent:  # accepts TCP, never speaks Kafka
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        assert not is_reachable(f"127.0.0.1:{silent.getsockname()[1]}", timeout=2.0)
        assert time.monotonic() - started < 5


def test_resolve_brokers_precedence(
    broker: ClusterInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNF_HOME", str(tmp_path))
    monkeypatch.delenv("SNF_BROKERS", raising=False)
    assert resolve_brokers() is None

    # Record the live test broker as this home's "default" cluster.
    default = ClusterInfo.from_json(broker.to_json())
    default.name = "default"
    (tmp_path / "clusters" / "default").mkdir(parents=True)
    (tmp_path / "clusters" / "default" / "cluster.json").write_text(default.to_json())
    assert recorded("default") == default
    assert resolve_brokers() == broker.bootstrap

    monkeypatch.setenv("SNF_BROKERS", "10.0.0.1:9092")
    assert resolve_brokers() == "10.0.0.1:9092"
    assert resolve_brokers("10.0.0.2:9092") == "10.0.0.2:9092"


def test_resolve_brokers_ignores_a_record_whose_pids_are_not_kafka(
    broker: ClusterInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNF_HOME", str(tmp_path))
    monkeypatch.delenv("SNF_BROKERS", raising=False)
    stale = ClusterInfo.from_json(broker.to_json())
    for node in stale.nodes:
        node.pid = os.getpid()  # alive, but pytest, not kafka.Kafka: must not count
    (tmp_path / "clusters" / "default").mkdir(parents=True)
    (tmp_path / "clusters" / "default" / "cluster.json").write_text(stale.to_json())
    assert resolve_brokers() is None
    assert down("default") is False  # must not signal this process,
    assert Path(broker.nodes[0].log_dir).is_dir()  # nor delete data outside its own dir
    assert is_reachable(broker.bootstrap)


def test_down_of_a_never_started_cluster_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNF_HOME", str(tmp_path))
    assert down("never-started") is False
    assert status("never-started") == {"name": "never-started", "recorded": False, "running": False}
