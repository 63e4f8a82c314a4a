"""What a local KRaft cluster is: its nodes, their server.properties, and its record.

No processes here: `snf.kafka.cluster` formats, starts and stops what this module
describes. Every node is a combined broker+controller on loopback.
"""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "HOST",
    "ClusterInfo",
    "NodeInfo",
    "NodeSpec",
    "SecureSetup",
    "free_ports",
    "new_cluster_id",
    "node_properties",
    "plan",
    "quorum_voters",
    "render_properties",
    "secure_properties",
    "specs_of",
]

# Loopback only: a test broker must never be reachable from the network.
HOST = "127.0.0.1"


@dataclass(frozen=True)
class NodeSpec:
    """Where one node listens and stores its log."""

    node_id: int
    port: int  # PLAINTEXT listener for clients and replication
    controller_port: int  # CONTROLLER listener for the KRaft quorum
    log_dir: Path


def replication_for(nodes: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas): 3+ nodes survive losing one broker."""
    factor = min(nodes, 3)
    return factor, 2 if factor >= 3 else 1


def quorum_voters(specs: Sequence[NodeSpec]) -> str:
    """Static voter list; with it `StorageTool format` needs no --standalone flag."""
    return ",".join(f"{s.node_id}@{HOST}:{s.controller_port}" for s in specs)


@dataclass(frozen=True)
class SecureSetup:
    """What a `--secure` cluster's nodes share (made by snf.kafka.secure_cluster)."""

    ca: Path  # the CA certificate (PEM): the brokers' truststore and the clients' CA
    keystore: Path  # the brokers' private key and certificate chain (PEM)
    admin_password: str  # SCRAM user `admin`: inter-broker traffic
    users: dict[str, str] = field(default_factory=dict)  # SCRAM-SHA-512 users to create

    @property
    def scram_users(self) -> dict[str, str]:
        return {ADMIN_USER: self.admin_password, **self.users}


ADMIN_USER = "admin"
SCRAM = "SCRAM-SHA-512"


def secure_properties(spec: NodeSpec, secure: SecureSetup) -> dict[str, str]:
    """The client and inter-broker listener as SASL_SSL (SCRAM-SHA-512 over TLS).

    The controller listener stays PLAINTEXT: it binds to loopback only and carries
    the KRaft quorum among the nodes, never a client. Every broker authenticates to
    the others as `admin`. StandardAuthorizer denies what no ACL allows (snf.kafka.acls
    grants); the brokers' principals are super users: `admin`, and User:ANONYMOUS,
    which is what the PLAINTEXT controller listener calls every peer.
    """
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required"
        f' username="{ADMIN_USER}" password="{secure.admin_password}";'
    )
    return {
        "listeners": f"SASL_SSL://{HOST}:{spec.port},CONTROLLER://{HOST}:{spec.controller_port}",
        "advertised.listeners": f"SASL_SSL://{HOST}:{spec.port}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": SCRAM,
        "sasl.mechanism.inter.broker.protocol": SCRAM,
        f"listener.name.sasl_ssl.{SCRAM.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(secure.keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(secure.ca),
        "ssl.client.auth": "none",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        # Without ANONYMOUS the brokers could not register with the controllers. Anyone
        # on this host reaching a controller port is a super user: see docs/DEPLOY.md.
        "super.users": f"User:{ADMIN_USER};User:ANONYMOUS",
    }


def node_properties(
    spec: NodeSpec, specs: Sequence[NodeSpec], secure: SecureSetup | None = None
) -> dict[str, str]:
    """Properties for node `spec` of the cluster `specs` (which includes it)."""
    factor, min_isr = replication_for(len(specs))
    return {
        "process.roles": "broker,controller",
        "node.id": str(spec.node_id),
        "controller.quorum.voters": quorum_voters(specs),
        "listeners": f"PLAINTEXT://{HOST}:{spec.port},CONTROLLER://{HOST}:{spec.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{spec.port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(spec.log_dir),
        # Topics are declared by snf (names.py); a typo must fail, not create a topic.
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        "num.partitions": "1",
        "default.replication.factor": str(factor),
        "min.insync.replicas": str(min_isr),
        "unclean.leader.election.enable": "false",
        "offsets.topic.replication.factor": str(factor),
        # 50 partitions by default; 10 makes the first consumer group join faster.
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": str(factor),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": "10",
        # Tests start workers one after another; do not hold the first join back 3 s.
        "group.initial.rebalance.delay.ms": "0",
        # Bounded disk use for a local broker: a day or 1 GiB per partition.
        "log.retention.hours": "24",
        "log.retention.bytes": str(1 << 30),
        "log.segment.bytes": str(64 << 20),
        "log.retention.check.interval.ms": "60000",
        # Sized for a 2-core machine shared with Python workers.
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        **(secure_properties(spec, secure) if secure else {}),
    }


def render_properties(props: Mapping[str, str]) -> str:
    """Java properties text; values here never contain characters that need escaping."""
    lines = ["# Written by snf.kafka.cluster; regenerated on every `up`."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


@dataclass
class NodeInfo:
    """One started node, as recorded in cluster.json."""

    node_id: int
    port: int
    controller_port: int
    pid: int
    log_dir: str  # Kafka's log.dirs: the data, wiped by down()
    log_file: str  # the JVM's stdout/stderr: WARN and above, and crashes

    @property
    def props(self) -> Path:
        return Path(self.log_file).parent / "server.properties"


@dataclass
class ClusterInfo:
    """A cluster, as recorded in `<data_dir>/cluster.json`."""

    name: str
    bootstrap: str
    nodes: list[NodeInfo] = field(default_factory=list)
    data_dir: Path = Path()
    client_config: str = ""  # a `--secure` cluster: its clients' settings (0600)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "data_dir": str(self.data_dir)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterInfo:
        raw = json.loads(text)
        nodes = [NodeInfo(**n) for n in raw.pop("nodes")]
        return cls(nodes=nodes, data_dir=Path(raw.pop("data_dir")), **raw)

    def node(self, node_id: int) -> NodeInfo:
        return next(n for n in self.nodes if n.node_id == node_id)

    def save(self) -> None:
        """Write `<data_dir>/cluster.json` atomically: readers never see half a record."""
        tmp = self.data_dir / "cluster.json.tmp"
        tmp.write_text(self.to_json())
        tmp.replace(self.data_dir / "cluster.json")


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all bound at once, so none repeats)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def new_cluster_id() -> str:
    """Same format as `StorageTool random-uuid` (base64url of 16 bytes), without a JVM."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that look like a CLI flag
            return cid


def plan(name: str, nodes: int, data_dir: Path, ports: Sequence[int]) -> ClusterInfo:
    """Layout of a new cluster: `<data_dir>/node-<id>/{server.properties,kafka.out,data/}`.

    `ports` holds two per node (client, controller); pids are 0 until started.
    """
    infos = []
    for i in range(1, nodes + 1):
        node_dir = data_dir / f"node-{i}"
        data, out = str(node_dir / "data"), str(node_dir / "kafka.out")
        infos.append(NodeInfo(i, ports[2 * i - 2], ports[2 * i - 1], 0, data, out))
    bootstrap = ",".join(f"{HOST}:{n.port}" for n in infos)
    return ClusterInfo(name, bootstrap, infos, data_dir)


def specs_of(info: ClusterInfo) -> list[NodeSpec]:
    return [NodeSpec(n.node_id, n.port, n.controller_port, Path(n.log_dir)) for n in info.nodes]
