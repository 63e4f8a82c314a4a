"""A real Apache Kafka (KRaft) cluster on loopback that snf starts and stops itself.

Jars come from Maven Central (deploy/kafka/pom.xml) into a cache outside the work
tree; each cluster lives under `<snf_home>/clusters/<name>/` (layout: config.plan)
and is recorded in `cluster.json` so any process can find, check or stop it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from snf.errors import SnfError
from snf.kafka import kraft_config as config
from snf.kafka import secure_cluster
from snf.kafka.admin import broker_count, quiet, tcp_open
from snf.kafka.errors import BrokerError
from snf.kafka.kraft_config import ClusterInfo, NodeInfo
from snf.kafka.security import CONFIG_ENV, KafkaSecurity, load
from snf.kafka.settings import brokers_from_env, snf_home

__all__ = [
    "KAFKA_VERSION",
    "ClusterInfo",
    "NodeInfo",
    "check_name",
    "cluster_security",
    "down",
    "ensure_jars",
    "is_reachable",
    "kill_node",
    "recorded",
    "resolve_brokers",
    "start_node",
    "status",
    "up",
    "wait_ready",
]

KAFKA_VERSION = "3.9.1"
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
JVM_OPTS = ["-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true"]


_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_name(name: str) -> str:
    """A cluster name is one directory name under SNF_HOME/clusters: never a path."""
    if not _NAME.fullmatch(name) or name in (".", "..") or name.endswith(".lock"):
        raise BrokerError(
            f"invalid cluster name {name!r}: use letters, digits, '.', '_' and '-'"
            " (not '.' or '..', not ending in .lock)"
        )
    return name


def _cluster_dir(name: str) -> Path:
    # Its lock file sits next to it: <name>.lock.
    return snf_home() / "clusters" / check_name(name)


def cluster_security(info: ClusterInfo) -> KafkaSecurity:
    """How to talk to a cluster we started: its own client config, or plaintext
    (explicitly, whatever the process's settings are)."""
    return load(Path(info.client_config)) if info.client_config else KafkaSecurity()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise up/down/download across processes (pytest workers, the CLI)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _tool(name: str) -> str:
    if not (found := shutil.which(name)):
        raise BrokerError(f"`{name}` is not on PATH; the local Kafka broker needs JDK 17 and Maven")
    return found


def ensure_jars(progress: Callable[[str], None] | None = None) -> Path:
    """The directory of broker jars, downloaded with Maven on first use."""
    pom = DEPLOY_DIR / "pom.xml"
    base = snf_home() / f"kafka-{KAFKA_VERSION}"
    libs, stamp = base / "libs", base / "complete.stamp"
    # The stamp is written last and holds the pom's hash: a half download or an edited
    # pom is fetched again.
    want = hashlib.sha256(pom.read_bytes()).hexdigest()
    with _locked(base / ".lock"):
        if stamp.exists() and stamp.read_text() == want:
            return libs
        _tool("java")
        cmd = [_tool("mvn"), "-q", "-B", "-f", str(pom), "dependency:copy-dependencies"]
        cmd += ["-DincludeScope=runtime", f"-DoutputDirectory={libs}"]
        stamp.unlink(missing_ok=True)
        shutil.rmtree(libs, ignore_errors=True)
        if progress:
            progress(f"downloading Kafka {KAFKA_VERSION} jars into {libs} (once)")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            out = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # colours despite -B
            tail = "\n".join(out.splitlines()[-20:])
            raise BrokerError(f"mvn could not fetch the Kafka {KAFKA_VERSION} jars:\n{tail}")
        stamp.write_text(want)
        return libs


def is_reachable(
    bootstrap: str, timeout: float = 5.0, security: KafkaSecurity | None = None
) -> bool:
    """Whether a broker at `bootstrap` answers a metadata request within about `timeout`.

    A broker that answers but refuses our credentials or TLS is no "no": that is
    raised as a BrokerError naming the cause, as retrying would never help.
    """
    if not tcp_open(bootstrap, min(timeout, 2.0)):
        return False
    try:
        with quiet():
            return broker_count(bootstrap, timeout, security) > 0
    except SnfError:
        raise  # refused (snf.kafka.security.refusals) or misconfigured, not unreachable
    except Exception:
        return False


_children: dict[int, subprocess.Popen[bytes]] = {}  # polled so dead nodes are reaped


def _alive(node: NodeInfo) -> bool:
    """A live java running kafka.Kafka on this node's properties (pids get reused)."""
    if (child := _children.get(node.pid)) is not None and child.poll() is None:
        # Our own child: its pid is not reused before we reap it, and right after
        # Popen returns the kernel may still show an empty cmdline (exec in progress).
        return True
    try:
        args = Path(f"/proc/{node.pid}/cmdline").read_bytes().decode().split("\0")
    except (OSError, UnicodeDecodeError):
        return False
    # A zombie has an empty cmdline, so it fails here too.
    return Path(args[0]).name == "java" and "kafka.Kafka" in args and str(node.props) in args


def _spawn(node: NodeInfo, libs: Path) -> int:
    node_dir = node.props.parent
    cmd = [_tool("java"), *JVM_OPTS, "-cp", f"{libs}/*", f"-Dkafka.logs.dir={node_dir}"]
    cmd += [f"-Dlog4j.configuration=file:{DEPLOY_DIR / 'log4j.properties'}"]
    with open(node.log_file, "ab") as out:
        proc = subprocess.Popen(
            [*cmd, "kafka.Kafka", str(node.props)],
            cwd=node_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the broker outlives this Python process
        )
    _children[proc.pid] = proc
    return proc.pid


def recorded(name: str = "default") -> ClusterInfo | None:
    try:
        return ClusterInfo.from_json((_cluster_dir(name) / "cluster.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def wait_ready(info: ClusterInfo, timeout: float = 90.0) -> None:
    """Block until every node is registered and unfenced; BrokerError if a node dies."""
    deadline, sec = time.monotonic() + timeout, cluster_security(info)
    while True:
        for node in info.nodes:
            if not _alive(node):  # its log exists: _spawn opened it before starting it
                lines = Path(node.log_file).read_text(errors="replace").splitlines()
                tail = [ln for ln in lines if not ln.lstrip().startswith(("at ", "... "))][-12:]
                raise BrokerError(
                    f"Kafka node {node.node_id} of cluster {info.name!r} is not running;"
                    f" last lines of {node.log_file}:\n" + "\n".join(tail)
                )
        # Every node must answer itself: after a restart the others still list the
        # killed incarnation until its session times out.
        addresses = [f"{config.HOST}:{n.port}" for n in info.nodes]
        with contextlib.suppress(Exception), quiet():
            if all(tcp_open(a) and broker_count(a, 5.0, sec) >= len(addresses) for a in addresses):
                return
        if time.monotonic() > deadline:
            raise BrokerError(f"Kafka cluster {info.name!r} not ready after {timeout:.0f}s")
        time.sleep(0.25)


def _create(name: str, nodes: int, libs: Path, secure: bool) -> ClusterInfo:
    """Lay out and format fresh storage for every node (formats run in parallel).

    `secure`: TLS material, SCRAM users (created by the format) and their client
    config files first (snf.kafka.secure_cluster).
    """
    data_dir = _cluster_dir(name)
    shutil.rmtree(data_dir, ignore_errors=True)  # stale state never leaks between runs
    info = config.plan(name, nodes, data_dir, config.free_ports(2 * nodes))
    data_dir.mkdir(parents=True, mode=0o700)  # server.properties holds a password if secure
    setup = secure_cluster.prepare(data_dir) if secure else None
    if setup is not None:
        info.client_config = str(secure_cluster.write_client_configs(data_dir, setup, name))
    specs, cluster_id, formats = config.specs_of(info), config.new_cluster_id(), []
    for node, spec in zip(info.nodes, specs, strict=True):
        node.props.parent.mkdir(parents=True)
        props = config.node_properties(spec, specs, setup)
        node.props.write_text(config.render_properties(props))
        cmd = [_tool("java"), "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format"]
        cmd += ["-t", cluster_id, "-c", str(node.props)]
        cmd += secure_cluster.scram_args(setup) if setup else []
        formats.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for node, proc in zip(info.nodes, formats, strict=True):
        out = proc.communicate(timeout=120)[0].decode(errors="replace")
        if proc.returncode != 0:
            raise BrokerError(f"formatting storage of Kafka node {node.node_id} failed:\n{out}")
    return info


def up(
    nodes: int = 1, name: str = "default", wait_timeout: float = 90.0, secure: bool = False
) -> ClusterInfo:
    """Start a fresh `nodes`-broker cluster, or return cluster `name` if it already runs.

    `secure`: clients must use SASL_SSL (SCRAM-SHA-512 over TLS) with the settings
    in the file `ClusterInfo.client_config` names, and need ACLs: that file's user
    gets all rights on names starting `snf.` (secure_cluster.grant_clients).
    """
    if nodes < 1:
        raise BrokerError(f"a Kafka cluster needs at least one node, not {nodes}")
    with _locked(_cluster_dir(name).parent / f"{name}.lock"):
        current = recorded(name)
        if current and all(map(_alive, current.nodes)) and _answers(current):
            shape = (len(current.nodes), bool(current.client_config))
            if shape != (nodes, secure):
                raise BrokerError(
                    f"Kafka cluster {name!r} already runs with {len(current.nodes)} nodes"
                    f" ({'secure' if current.client_config else 'plaintext'}), not {nodes}"
                    f" ({'secure' if secure else 'plaintext'}); run down({name!r}) first"
                )
            return current
        if current:
            _stop(name, current, 30.0)  # leftovers of a crashed or half-started run
        libs = ensure_jars()
        info = _create(name, nodes, libs, secure)
        for node in info.nodes:
            node.pid = _spawn(node, libs)
        info.save()  # before waiting, so down() can clean up an interrupted start
        try:
            wait_ready(info, wait_timeout)
            if secure:
                secure_cluster.grant_clients(info)
        except BaseException:
            _stop(name, info, 10.0)
            raise
        return info


def _answers(info: ClusterInfo) -> bool:
    try:
        return is_reachable(info.bootstrap, security=cluster_security(info))
    except SnfError:  # say, its client config was deleted
        return False


def _stop(name: str, info: ClusterInfo, timeout: float) -> bool:
    """SIGTERM our live nodes, SIGKILL after `timeout`, then drop the record and data.

    Deletes only under `<snf_home>/clusters/<name>/`, whatever paths the record names.
    """
    running = [n for n in info.nodes if _alive(n)]
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        for node in filter(_alive, running):
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, sig)
        deadline = time.monotonic() + wait
        while any(map(_alive, running)) and time.monotonic() < deadline:
            time.sleep(0.1)
    own = _cluster_dir(name)
    (own / "cluster.json").unlink(missing_ok=True)
    for node in info.nodes:  # logs and properties stay for a post-mortem
        if Path(node.log_dir).resolve().is_relative_to(own.resolve()):
            shutil.rmtree(node.log_dir, ignore_errors=True)
    return bool(running)


def down(name: str = "default", timeout: float = 30.0) -> bool:
    """Stop cluster `name` and delete its data; False if nothing of it was running."""
    with _locked(_cluster_dir(name).parent / f"{name}.lock"):
        info = recorded(name)
        return _stop(name, info, timeout) if info else False


def status(name: str = "default") -> dict[str, Any]:
    """The record of cluster `name` plus liveness of each node and of the bootstrap."""
    info = recorded(name)
    if info is None:
        return {"name": name, "recorded": False, "running": False}
    nodes = [{**asdict(n), "alive": _alive(n)} for n in info.nodes]
    reachable = _answers(info)
    running = reachable and all(n["alive"] for n in nodes)
    head = {"name": name, "recorded": True, "running": running, "reachable": reachable}
    return {**head, "bootstrap": info.bootstrap, "data_dir": str(info.data_dir), "nodes": nodes}


def resolve_brokers(explicit: str | None = None) -> str | None:
    """explicit > $SNF_BROKERS > the recorded default cluster, if a node of it lives > None.

    A secure default cluster brings its client config along, unless one is set:
    `snf kafka up --secure` then `snf run ...` needs no --kafka-config.
    """
    if explicit:
        return explicit
    if env := brokers_from_env():
        return env
    info = recorded("default")
    if info is None or not any(map(_alive, info.nodes)):
        return None
    if info.client_config and not os.environ.get(CONFIG_ENV):
        os.environ[CONFIG_ENV] = info.client_config  # children (workers) inherit it
    return info.bootstrap


def kill_node(info: ClusterInfo, node_id: int, sig: int = signal.SIGKILL) -> bool:
    """Signal one node, for fault tests; False if it was not running."""
    node = info.node(node_id)
    if alive := _alive(node):
        os.kill(node.pid, sig)
    return alive


def start_node(info: ClusterInfo, node_id: int) -> ClusterInfo:
    """Restart a stopped node on its existing storage and record its new pid."""
    node = info.node(node_id)
    if _alive(node):
        raise BrokerError(f"node {node_id} of Kafka cluster {info.name!r} is already running")
    node.pid = _spawn(node, ensure_jars())
    info.save()
    return info
