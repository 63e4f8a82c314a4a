"""A secured cluster end to end: `snf kafka up --secure` (SASL_SSL, SCRAM-SHA-512),
a pipeline run over it identical to --local, a wrong password refused in one line,
and the ACLs of `snf kafka acls`: only the capture agent's user writes ingress."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kafka.errors as kerrors
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from snf.kafka import admin, cluster
from snf.kafka.secure_cluster import CAPTURE_USER, CLIENT_USER, user_config
from snf.kafka.security import KafkaSecurity, client_kwargs, load
from snf.pipeline import names
from tests.integration.conftest import _remove_cluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipelines" / "edge.yaml"
CAPTURE = ROOT / "pipelines" / "captures" / "edge.pcapng"


@pytest.fixture(scope="module")
def secure_cluster() -> Iterator[cluster.ClusterInfo]:
    name = f"pytest-secure-{os.getpid()}"
    info = cluster.up(nodes=1, name=name, secure=True)
    try:
        yield info
    finally:
        _remove_cluster(name)


def _snf(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SNF_KAFKA_", "SNF_BROKERS"))}
    cmd = [sys.executable, "-m", "snf", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=180, env={**clean, **env}, check=False
    )


def _run(tmp: Path, tag: str, config: str, *options: str) -> subprocess.CompletedProcess[str]:
    out, events = tmp / f"{tag}.pcapng", tmp / f"{tag}-events"
    args = ["run", str(PIPELINE), str(CAPTURE), "--out", str(out), "--events", str(events)]
    return _snf("--kafka-config", config, *args, *options, "--no-progress")


def test_secure_run_is_identical_to_local(
    secure_cluster: cluster.ClusterInfo, tmp_path: Path
) -> None:
    config = Path(secure_cluster.client_config)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "security.protocol=SASL_SSL" in config.read_text()

    local = _run(tmp_path, "local", str(config), "--local")
    assert local.returncode == 0, local.stderr
    got = _run(tmp_path, "kafka", str(config), "--brokers", secure_cluster.bootstrap)
    assert got.returncode == 0, got.stderr
    assert "(kafka)" in got.stderr
    assert (tmp_path / "kafka.pcapng").read_bytes() == (tmp_path / "local.pcapng").read_bytes()
    ref = {p.name: p.read_text() for p in (tmp_path / "local-events").iterdir()}
    assert {p.name: p.read_text() for p in (tmp_path / "kafka-events").iterdir()} == ref


def test_plaintext_client_is_not_let_in(secure_cluster: cluster.ClusterInfo) -> None:
    # No settings: the TLS listener never answers a plaintext metadata request.
    assert not cluster.is_reachable(secure_cluster.bootstrap, security=KafkaSecurity())


def test_wrong_password_fails_in_one_line(
    secure_cluster: cluster.ClusterInfo, tmp_path: Path
) -> None:
    config = secure_cluster.client_config
    got = _snf(
        "--kafka-config", config, "run", str(PIPELINE), str(CAPTURE),
        "--brokers", secure_cluster.bootstrap, "--no-progress",
        SNF_KAFKA_SASL_PASSWORD="not-the-password",
    )  # fmt: skip
    assert got.returncode == 1
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1, got.stderr
    assert lines[0].startswith(f"error: Kafka at {secure_cluster.bootstrap} refused us:")
    assert "authentication failed" in lines[0] and "Traceback" not in got.stderr
    assert "not-the-password" not in got.stderr


def _as(info: cluster.ClusterInfo, user: str) -> dict[str, Any]:
    """kafka-python's settings for logging in as `user` (its config file, written by up)."""
    return {"bootstrap_servers": info.bootstrap, **client_kwargs(load(user_config(info, user)))}


def test_only_the_capture_user_writes_ingress(secure_cluster: cluster.ClusterInfo) -> None:
    ingress = names.ingress_topic("acl")
    worker = load(Path(secure_cluster.client_config))
    with admin.admin_client(secure_cluster.bootstrap, security=worker) as client:
        client.create_topics({ingress: {"num_partitions": 1, "replication_factor": 1}})
    assert stat.S_IMODE(user_config(secure_cluster, CAPTURE_USER).stat().st_mode) == 0o600

    # `capture` has no ACLs yet: it may not even find where to start reading.
    reader = KafkaConsumer(**_as(secure_cluster, CAPTURE_USER))
    try:
        reader.assign([partition := TopicPartition(ingress, 0)])
        with pytest.raises(kerrors.TopicAuthorizationFailedError):
            reader.position(partition)
    finally:
        reader.close()

    got = _snf("kafka", "acls", "acl", "--name", secure_cluster.name)
    assert got.returncode == 0, got.stderr
    assert f"DENY User:snf WRITE topic {ingress} (literal)" in got.stdout

    for user, allowed in ((CLIENT_USER, False), (CAPTURE_USER, True)):
        producer = KafkaProducer(**_as(secure_cluster, user), retries=0)
        try:
            sent = producer.send(ingress, b"packet")
            if allowed:
                sent.get(timeout=15)
            else:
                with pytest.raises(kerrors.TopicAuthorizationFailedError):
                    sent.get(timeout=15)
        finally:
            producer.close(timeout=5)
