"""Talking to a broker: admin clients that always close, probes, and topic management.

Every call here works on any broker (ours from `snf.kafka.cluster` or one named by
SNF_BROKERS). A broker that does not answer is retried with backoff and then
reported as a BrokerError that says where and how often we tried.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import kafka.errors as kerrors
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, MemberToRemove
from kafka.net.compat import KafkaNetClient

from snf.kafka.errors import BrokerError
from snf.kafka.kraft_config import HOST
from snf.kafka.login_probe import refusals
from snf.kafka.security import KafkaSecurity, client_kwargs

__all__ = [
    "UNREACHABLE",
    "admin_client",
    "broker_count",
    "cluster_replication",
    "delete_topics",
    "describe_cluster",
    "ensure_topics",
    "evict_member",
    "quiet",
    "retrying",
    "tcp_open",
    "topic_partitions",
]

T = TypeVar("T")
# Errors that mean "nobody answers (yet)", as opposed to "the broker said no".
UNREACHABLE = (
    OSError,
    kerrors.KafkaConnectionError,
    kerrors.KafkaTimeoutError,
    kerrors.NodeNotReadyError,
    kerrors.RequestTimedOutError,
)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence kafka-python, which logs every refused connection while we poll."""
    logger = logging.getLogger("kafka")
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def admin_client(
    bootstrap: str, timeout: float = 10.0, security: KafkaSecurity | None = None
) -> Iterator[KafkaAdminClient]:
    """A KafkaAdminClient that is always closed, even when bootstrapping fails;
    `security` defaults to the process's (snf.kafka.security.current)."""
    made: list[KafkaNetClient] = []

    def factory(**configs: Any) -> KafkaNetClient:
        made.append(KafkaNetClient(**configs))
        return made[-1]

    ms = max(int(timeout * 1000), 500)
    try:
        with refusals(bootstrap, security):
            client = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="snf-admin",
                kafka_client=factory,
                bootstrap_timeout_ms=ms,
                request_timeout_ms=ms,
                reconnect_backoff_max_ms=1000,
                **client_kwargs(security),
            )
    except Exception:
        # A failed bootstrap in __init__ leaves kafka-python's IO thread running.
        for net_client in made:
            net_client._net.stop(1000)
            net_client.close()
        raise
    try:
        yield client
    finally:
        client.close()


def tcp_open(bootstrap: str, timeout: float = 1.0) -> bool:
    """Whether any bootstrap address accepts TCP; a closed port answers at once."""
    for hostport in bootstrap.split(","):
        host, _, port = hostport.strip().rpartition(":")
        with contextlib.suppress(OSError, ValueError):
            socket.create_connection((host or HOST, int(port)), timeout=timeout).close()
            return True
    return False


def broker_count(
    bootstrap: str, timeout: float = 5.0, security: KafkaSecurity | None = None
) -> int:
    """Unfenced brokers the cluster reports, after a successful topic listing."""
    with admin_client(bootstrap, timeout, security) as admin:
        admin.list_topics()
        return sum(not b.get("is_fenced", False) for b in admin.describe_cluster()["brokers"])


def cluster_replication(bootstrap: str, retries: int = 5) -> int:
    """The replication factor a topic gets from this cluster when none is asked for:
    min(3, brokers), so a lost broker loses nothing once there are three."""

    def action(admin: KafkaAdminClient) -> int:
        brokers = admin.describe_cluster()["brokers"]
        return max(1, min(3, sum(not b.get("is_fenced", False) for b in brokers)))

    return retrying(bootstrap, retries, action)


def retrying(bootstrap: str, retries: int, action: Callable[[KafkaAdminClient], T]) -> T:
    """Run `action` on a fresh client; retry while nobody answers, with doubling backoff."""
    started, delay = time.monotonic(), 0.5
    last: Exception | None = None
    retries = max(retries, 1)
    for attempt in range(1, retries + 1):
        try:
            if not tcp_open(bootstrap):
                raise ConnectionRefusedError(f"nothing listens at {bootstrap}")
            with contextlib.ExitStack() as stack:
                with quiet():  # only the connecting; warnings of the action itself stay
                    admin = stack.enter_context(admin_client(bootstrap))
                return action(admin)
        except UNREACHABLE as exc:
            last = exc
        except kerrors.KafkaError as exc:
            if not exc.retriable:
                raise BrokerError(f"Kafka at {bootstrap} refused: {exc}") from exc
            last = exc
        if attempt < retries:
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise BrokerError(
        f"no Kafka broker answers at {bootstrap} after {retries} tries"
        f" ({time.monotonic() - started:.0f}s; last error: {last}); start one with"
        " `snf kafka up` or point SNF_BROKERS at a running broker"
    )


def _partitions(admin: KafkaAdminClient, internal: bool = True) -> dict[str, int]:
    return {
        t["name"]: len(t["partitions"])
        for t in admin.describe_topics()
        if internal or not t.get("is_internal", False)
    }


def ensure_topics(
    bootstrap: str,
    topics: dict[str, int],
    replication: int = 1,
    configs: dict[str, dict[str, str]] | None = None,
    retries: int = 5,
    timeout: float = 30.0,
) -> list[str]:
    """Create the missing ones of `topics` (name -> partitions); return the names created.

    Idempotent. A topic that exists with another partition count is an error: Faust
    tables and their source topics must agree, and partitions cannot be removed.
    Returns only once every created partition has a leader.
    """
    configs = configs or {}

    def action(admin: KafkaAdminClient) -> list[str]:
        existing = _partitions(admin)
        _check_counts(topics, existing)
        missing = {name: n for name, n in topics.items() if name not in existing}
        if not missing:
            return []
        request = {
            name: {
                "num_partitions": n,
                "replication_factor": replication,
                "configs": configs.get(name, {}),
            }
            for name, n in missing.items()
        }
        result = admin.create_topics(request, raise_errors=False)
        created = []
        for topic in result["topics"]:
            error = kerrors.for_code(topic["error_code"])
            if error is kerrors.NoError:
                created.append(topic["name"])
            elif error is not kerrors.TopicAlreadyExistsError:  # lost a race: fine
                message = topic.get("error_message") or error.__name__
                raise BrokerError(f"creating topic {topic['name']!r} failed: {message}")
        try:
            admin.wait_for_topics(list(missing), timeout_ms=int(timeout * 1000))
        except kerrors.KafkaTimeoutError as exc:
            raise BrokerError(f"new topics at {bootstrap} have no leader yet: {exc}") from exc
        _check_counts(topics, _partitions(admin))  # whoever won a race used our counts?
        return sorted(created)

    return retrying(bootstrap, retries, action)


def _check_counts(wanted: dict[str, int], existing: dict[str, int]) -> None:
    for name, n in wanted.items():
        if name in existing and existing[name] != n:
            raise BrokerError(
                f"topic {name!r} exists with {existing[name]} partitions,"
                f" but {n} were asked for; delete it or use {existing[name]}"
            )


def delete_topics(
    bootstrap: str, names: list[str], retries: int = 5, timeout: float = 30.0
) -> list[str]:
    """Delete those of `names` that exist; return them once metadata no longer lists them."""

    def action(admin: KafkaAdminClient) -> list[str]:
        # Ask for every name: one broker's metadata may not list a topic yet that
        # another just created. Unknown ones are reported as such, not deleted.
        present = []
        if names:
            for topic in admin.delete_topics(sorted(set(names)), raise_errors=False)["topics"]:
                error = kerrors.for_code(topic["error_code"])
                if error is kerrors.NoError:
                    present.append(topic["name"])
                elif error is not kerrors.UnknownTopicOrPartitionError:
                    raise BrokerError(f"deleting topic {topic['name']!r} failed: {error.__name__}")
        # Deletion finishes asynchronously, and brokers learn of it at different
        # times; re-creating a topic too early fails. Each query may go to another
        # broker, so wait for several clean answers in a row.
        deadline, clean = time.monotonic() + timeout, 0
        while clean < 3:
            clean = 0 if set(present) & set(admin.list_topics()) else clean + 1
            if time.monotonic() > deadline:
                raise BrokerError(f"topics {present} still listed {timeout:.0f}s after delete")
            time.sleep(0.1)
        return sorted(present)

    return retrying(bootstrap, retries, action)


def describe_cluster(
    bootstrap: str, topics: list[str], retries: int = 5
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Which of `topics` exist (partitions, replication, configs), and the consumer groups."""

    def action(client: KafkaAdminClient) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        present = sorted(set(topics) & set(client.list_topics()))
        found: dict[str, dict[str, Any]] = {}
        if present:
            for t in client.describe_topics(present):
                parts = t["partitions"]
                rf = len(parts[0]["replica_nodes"]) if parts else 0
                found[t["name"]] = {"partitions": len(parts), "replication": rf, "configs": {}}
            resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in present]
            described = client.describe_configs(resources).get("topic", {})
            for t, configs in described.items():
                found[t]["configs"] = {k: v["value"] for k, v in configs.items()}
        groups = {g["group_id"] if isinstance(g, dict) else g[0]: g for g in client.list_groups()}
        return found, groups

    return retrying(bootstrap, retries, action)


def topic_partitions(bootstrap: str, retries: int = 5) -> dict[str, int]:
    """Partition count of every non-internal topic."""
    return retrying(bootstrap, retries, lambda admin: _partitions(admin, internal=False))


def evict_member(bootstrap: str, group: str, member_id: str, reason: str = "") -> bool:
    """Remove a dead member from its consumer group now (LeaveGroup on its behalf),
    instead of waiting for its session to expire: its partitions move at once."""
    with admin_client(bootstrap, timeout=5.0) as client:
        member = MemberToRemove(member_id=member_id, group_instance_id=None, reason=reason)
        errors = client.remove_group_members(group, [member])
    return all(e is kerrors.NoError for e in errors.values())
