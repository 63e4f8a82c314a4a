"""Who may do what on a secured cluster: Kafka ACLs built as data, applied by an admin.

The clusters of `snf kafka up --secure` run StandardAuthorizer and deny what no ACL
allows. Names come from the caller (snf.pipeline.names): this layer derives none.

    client_acls(user, prefix)      everything on names starting with `prefix`, and the
                                   cluster rights a one-shot `snf run` needs
    pipeline_acls(ingress, prefix) one pipeline's roles: only the capture agent may
                                   write its ingress (docs/DEPLOY.md, "ACLs")
    apply_acls(bootstrap, acls)    create them (idempotent) as a user with Alter on the
                                   cluster (a super user, on a local cluster `admin`)
"""

from __future__ import annotations

import time

import kafka.errors as kerrors
from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)

from snf.kafka.admin import admin_client
from snf.kafka.errors import BrokerError
from snf.kafka.security import KafkaSecurity

__all__ = ["apply_acls", "client_acls", "describe", "pipeline_acls", "principal"]

CLUSTER = "kafka-cluster"  # the one name of Kafka's cluster resource
Op = ACLOperation


def principal(user: str) -> str:
    """The principal of a SASL user, as ACLs and super.users name it."""
    return f"User:{user}"


def _acl(
    user: str,
    op: ACLOperation,
    kind: ResourceType,
    name: str,
    prefixed: bool = False,
    allow: bool = True,
) -> ACL:
    pattern = ACLResourcePatternType.PREFIXED if prefixed else ACLResourcePatternType.LITERAL
    permission = ACLPermissionType.ALLOW if allow else ACLPermissionType.DENY
    return ACL(principal(user), "*", op, permission, ResourcePattern(kind, name, pattern))


def client_acls(user: str, prefix: str) -> list[ACL]:
    """All rights on topics, groups and transactional ids starting with `prefix`, and
    the cluster rights snf's admin clients and producers use (no Alter: `user` cannot
    change ACLs, so a DENY of pipeline_acls holds against it)."""
    kinds = (ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID)
    out = [_acl(user, Op.ALL, kind, prefix, prefixed=True) for kind in kinds]
    cluster_ops = (Op.DESCRIBE, Op.CREATE, Op.DESCRIBE_CONFIGS, Op.IDEMPOTENT_WRITE)
    return out + [_acl(user, op, ResourceType.CLUSTER, CLUSTER) for op in cluster_ops]


def pipeline_acls(
    ingress: str, prefix: str, worker: str = "snf", capture: str = "capture"
) -> list[ACL]:
    """One pipeline's ACLs: `capture` writes `ingress`, and nothing else does.

    `worker` reads and writes the pipeline's other topics (`prefix`: its names all
    start so), its consumer groups and transactional ids, and reads `ingress`; its
    DENY Write on `ingress` wins over any ALLOW it has there, prefixed or not.
    """
    topic = ResourceType.TOPIC
    worker_ops = [
        (topic, (Op.READ, Op.WRITE, Op.DESCRIBE, Op.CREATE)),
        (ResourceType.GROUP, (Op.READ,)),
        (ResourceType.TRANSACTIONAL_ID, (Op.WRITE, Op.DESCRIBE)),  # exactly-once
    ]
    out = [_acl(capture, op, topic, ingress) for op in (Op.WRITE, Op.DESCRIBE)]
    out += [_acl(worker, op, kind, prefix, True) for kind, ops in worker_ops for op in ops]
    out.append(_acl(worker, Op.WRITE, topic, ingress, allow=False))
    return out


def describe(acl: ACL) -> str:
    """One line: `ALLOW User:capture WRITE topic snf.edge.ingress (literal)`."""
    pattern = acl.resource_pattern
    return (
        f"{acl.permission_type.name} {acl.principal} {acl.operation.name}"
        f" {pattern.resource_type.name.lower()} {pattern.resource_name}"
        f" ({pattern.pattern_type.name.lower()})"
    )


_EVERY_ACL = ACLFilter(
    None,
    None,
    ACLOperation.ANY,
    ACLPermissionType.ANY,
    ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
)


def apply_acls(
    bootstrap: str,
    acls: list[ACL],
    security: KafkaSecurity | None = None,
    timeout: float = 15.0,
) -> None:
    """Create `acls` (existing ones are kept as they are) as `security`'s principal
    (default: the process's), which needs Alter on the cluster; return once the
    broker we asked enforces them, so a client started next sees them."""
    with admin_client(bootstrap, timeout, security) as admin:
        try:
            failed = admin.create_acls(acls)["failed"]
        except kerrors.KafkaError as exc:
            failed = [exc]
        if failed:
            raise BrokerError(f"creating ACLs at {bootstrap} failed: {_reason(failed[0])}")
        deadline = time.monotonic() + timeout
        while not set(acls) <= set(admin.describe_acls(_EVERY_ACL)[0]):
            if time.monotonic() > deadline:
                raise BrokerError(f"ACLs created at {bootstrap} not in force after {timeout}s")
            time.sleep(0.1)


def _reason(error: object) -> str:
    """What a refused CreateAcls means, in words (kafka-python gives error classes)."""
    kind = error if isinstance(error, type) else type(error)
    if kind is kerrors.SecurityDisabledError:
        return "the cluster has no authorizer (authorizer.class.name)"
    if kind is kerrors.ClusterAuthorizationFailedError:
        return "this user may not change ACLs (it needs Alter on the cluster)"
    return kind.__name__
