"""One real Kafka broker for the whole integration session.

Default: the project's own KRaft broker (snf kafka up, jars from Maven Central).
SNF_TEST_KAFKA=testcontainers runs the same tests against testcontainers'
Kafka where a Docker engine exists; SNF_TEST_BROKERS points them at a running
cluster. There is no fake broker.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from snf.cli.main import main
from snf.kafka import cluster

KAFKA_IMAGE = "apache/kafka:3.9.1"


def docker_available() -> bool:
    try:
        import docker  # testcontainers' dependency

        docker.from_env().ping()
        return True
    except Exception:
        return False


def _remove_cluster(name: str) -> None:
    cluster.down(name=name)
    # A per-session name: remove its logs too, or every session leaves a folder.
    clusters = cluster.snf_home() / "clusters"
    shutil.rmtree(clusters / name, ignore_errors=True)
    (clusters / f"{name}.lock").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[cluster.ClusterInfo | None]:
    """The project's own broker for this session (None when the tests use another one).

    Named per session, so concurrent test sessions never stop each other's broker.
    """
    if os.environ.get("SNF_TEST_BROKERS") or os.environ.get("SNF_TEST_KAFKA", "local") != "local":
        yield None
        return
    name = f"pytest-{os.getpid()}"
    info = cluster.up(nodes=1, name=name)
    try:
        yield info
    finally:
        _remove_cluster(name)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_cluster: cluster.ClusterInfo | None) -> Iterator[str]:
    if kafka_cluster is not None:
        yield kafka_cluster.bootstrap
    elif os.environ.get("SNF_TEST_BROKERS"):
        yield os.environ["SNF_TEST_BROKERS"]
    else:
        no_docker = "SNF_TEST_KAFKA=testcontainers needs a Docker engine; none answers here"
        if not docker_available():
            pytest.skip(reason=no_docker)
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka:
            yield kafka.get_bootstrap_server()


@pytest.fixture
def brokers_env(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point every snf command of the test at the session broker."""
    monkeypatch.setenv("SNF_BROKERS", kafka_bootstrap)
    return kafka_bootstrap


@pytest.fixture(scope="session")
def three_brokers() -> Iterator[cluster.ClusterInfo]:
    """A fresh 3-node KRaft cluster of its own, started like a user would (shared by
    the three-broker and fault-tolerance tests)."""
    if os.environ.get("SNF_TEST_BROKERS") or os.environ.get("SNF_TEST_KAFKA", "local") != "local":
        pytest.skip(reason="the three-broker test starts the project's own cluster")
    name = f"pytest3-{os.getpid()}"
    try:
        assert main(["kafka", "up", "--nodes", "3", "--name", name]) == 0
        info = cluster.recorded(name)
        assert info is not None and len(info.nodes) == 3
        yield info
    finally:
        _remove_cluster(name)
