"""The ACLs of a secured cluster as data (snf.kafka.acls), the authorizer settings of
`snf kafka up --secure`, and `snf kafka acls` without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourceType

from snf.cli.main import main
from snf.kafka import acls, kraft_config, secure_cluster
from snf.pipeline import names

INGRESS, PREFIX = names.ingress_topic("edge"), names.pipeline_prefix("edge")


def _rows(found: list[ACL]) -> set[tuple[str, str, str, str, str, str]]:
    """(permission, principal, operation, resource type, name, pattern) of each."""
    return {
        (
            a.permission_type.name,
            a.principal,
            a.operation.name,
            a.resource_pattern.resource_type.name,
            a.resource_pattern.resource_name,
            a.resource_pattern.pattern_type.name,
        )
        for a in found
    }


def test_only_the_capture_user_may_write_ingress() -> None:
    rows = _rows(acls.pipeline_acls(INGRESS, PREFIX, worker="w", capture="cap"))
    writers = {r for r in rows if r[2] in ("WRITE", "ALL") and r[3] == "TOPIC"}
    assert ("ALLOW", "User:cap", "WRITE", "TOPIC", INGRESS, "LITERAL") in writers
    assert ("DENY", "User:w", "WRITE", "TOPIC", INGRESS, "LITERAL") in writers
    # The worker's prefixed ALLOW covers ingress too: the DENY above is what stops it.
    assert ("ALLOW", "User:w", "WRITE", "TOPIC", PREFIX, "PREFIXED") in writers
    assert {r[1] for r in rows} == {"User:cap", "User:w"}
    assert {r for r in rows if r[1] == "User:cap"} == {
        ("ALLOW", "User:cap", op, "TOPIC", INGRESS, "LITERAL") for op in ("WRITE", "DESCRIBE")
    }


def test_the_worker_gets_its_pipeline_prefix_and_nothing_else() -> None:
    rows = {r for r in _rows(acls.pipeline_acls(INGRESS, PREFIX)) if r[1] == "User:snf"}
    allowed = {(r[2], r[3]) for r in rows if r[0] == "ALLOW"}
    assert allowed == {
        ("READ", "TOPIC"),
        ("WRITE", "TOPIC"),
        ("DESCRIBE", "TOPIC"),
        ("CREATE", "TOPIC"),
        ("READ", "GROUP"),
        ("WRITE", "TRANSACTIONAL_ID"),
        ("DESCRIBE", "TRANSACTIONAL_ID"),
    }
    assert {r[4] for r in rows if r[0] == "ALLOW"} == {PREFIX}
    assert all(r[5] == "PREFIXED" for r in rows if r[0] == "ALLOW")
    # Its groups and changelogs carry the prefix; a one-shot run's names do not.
    assert names.group_id("edge", "fw").startswith(PREFIX)
    assert names.changelog_topic("edge", "fw", "state").startswith(PREFIX)
    assert not names.ingress_topic("edge-r1a2b").startswith(PREFIX)


def test_client_acls_cover_every_snf_name_but_never_alter() -> None:
    assert secure_cluster.CLIENT_PREFIX == names.PREFIX + "."
    rows = _rows(acls.client_acls("snf", secure_cluster.CLIENT_PREFIX))
    assert {r[3] for r in rows if r[2] == "ALL"} == {"TOPIC", "GROUP", "TRANSACTIONAL_ID"}
    assert all(r[4] == "snf." and r[5] == "PREFIXED" for r in rows if r[2] == "ALL")
    cluster_ops = {r[2] for r in rows if r[3] == "CLUSTER"}
    assert cluster_ops == {"DESCRIBE", "CREATE", "DESCRIBE_CONFIGS", "IDEMPOTENT_WRITE"}
    assert all(r[0] == "ALLOW" for r in rows)


def test_describe_is_one_line() -> None:
    acl = ACL(
        "User:capture",
        "*",
        ACLOperation.WRITE,
        ACLPermissionType.ALLOW,
        acls.ResourcePattern(ResourceType.TOPIC, INGRESS, ACLResourcePatternType.LITERAL),
    )
    assert acls.describe(acl) == f"ALLOW User:capture WRITE topic {INGRESS} (literal)"


def test_secure_nodes_run_the_authorizer(tmp_path: Path) -> None:
    info = kraft_config.plan("t", 1, tmp_path / "t", [9001, 9002])
    specs = kraft_config.specs_of(info)
    setup = kraft_config.SecureSetup(tmp_path / "ca.pem", tmp_path / "ks.pem", "adminpw")
    props = kraft_config.node_properties(specs[0], specs, setup)
    assert props["authorizer.class.name"].endswith(".StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    # The brokers log in as admin; the PLAINTEXT controller listener knows no one.
    assert props["super.users"].split(";") == ["User:admin", "User:ANONYMOUS"]
    assert "authorizer.class.name" not in kraft_config.node_properties(specs[0], specs)


def test_acls_command_without_a_secure_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SNF_HOME", str(tmp_path))
    monkeypatch.delenv("SNF_BROKERS", raising=False)
    assert main(["kafka", "acls", "edge", "--name", "nothing"]) == 1
    assert "no secure local cluster 'nothing'" in capsys.readouterr().err
    assert main(["kafka", "acls", "Not_A_Name"]) == 2
    assert "pipeline name 'Not_A_Name' must match" in capsys.readouterr().err
