"""Deploy a pipeline to a Kafka cluster: plan, topics, supervisor, scale, undeploy.

`plan` compares what a pipeline needs (Pipeline.topic_specs, consumer groups)
with what the cluster has, and changes nothing. `deploy` creates what is
missing (refusing to change a partition count: state is partitioned by it),
writes the deployment directory (snf.ops.deployment_dir), starts a detached
supervisor (snf.ops.supervisor) and waits until every function owns all its
input partitions. Redeploying a changed file bumps the generation: the
supervisor rolls the functions whose config changed, one instance at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snf.errors import SnfError
from snf.guarantee.control_auth import CONTROL_KEY_ENV, parse_key
from snf.kafka import admin
from snf.ops import deployment_dir as dp
from snf.ops.deployment_dir import Deployment, FunctionTarget
from snf.pipeline import names
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import Pipeline, PipelineFunction, TopicSpec

__all__ = [
    "DeployError",
    "GroupState",
    "Plan",
    "TopicChange",
    "apply_topics",
    "deploy",
    "plan",
    "scale",
    "undeploy",
    "wait_assigned",
]


class DeployError(SnfError):
    """A deployment that cannot be made as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class TopicChange:
    topic: str
    kind: str  # ingress | input | terminal | changelog
    want: TopicSpec
    action: str  # create | ok | differs
    have: dict[str, Any] = field(default_factory=dict)  # partitions, replication, configs
    differences: tuple[str, ...] = ()
    refused: bool = False  # a difference deploy cannot apply (partition count)


@dataclass(frozen=True)
class GroupState:
    group: str
    function: str
    exists: bool
    state: str = ""
    members: int = 0


@dataclass
class Plan:
    pipeline: Pipeline
    brokers: str
    topics: list[TopicChange]
    groups: list[GroupState]
    cluster_replication: bool = False  # the pipeline left its replication to the cluster

    @property
    def refused(self) -> list[TopicChange]:
        return [t for t in self.topics if t.refused]

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline.name,
            "brokers": self.brokers,
            "replication": self.pipeline.spec.replication,
            "topics": [
                {
                    "topic": t.topic,
                    "kind": t.kind,
                    "action": t.action,
                    "partitions": t.want.partitions,
                    "replication": t.want.replication,
                    "configs": t.want.configs,
                    "have": t.have,
                    "differences": list(t.differences),
                    "refused": t.refused,
                }
                for t in self.topics
            ],
            "groups": [g.__dict__ for g in self.groups],
        }


def _kinds(pipeline: Pipeline) -> dict[str, str]:
    kinds = {pipeline.ingress_topic: "ingress"}
    for fn in pipeline.functions:
        if not fn.entry:
            kinds[fn.input_topic] = "input"
        kinds.update(dict.fromkeys(fn.changelog_topics.values(), "changelog"))
    return kinds


def plan(pipeline: Pipeline, brokers: str) -> Plan:
    """What deploying `pipeline` would change on the cluster at `brokers` (read-only).

    Replication left to the cluster is resolved here: Plan.pipeline has it.
    """
    cluster_default = pipeline.unresolved
    if cluster_default:
        pipeline = pipeline.resolved(admin.cluster_replication(brokers))
    specs = pipeline.topic_specs()
    existing, groups = admin.describe_cluster(brokers, list(specs))
    kinds = _kinds(pipeline)
    changes = []
    for topic, want in specs.items():
        have = existing.get(topic)
        kind = kinds.get(topic, "terminal")
        if have is None:
            changes.append(TopicChange(topic, kind, want, "create"))
            continue
        diffs, refused = [], False
        if have["partitions"] != want.partitions:
            diffs.append(f"partitions {have['partitions']} -> {want.partitions}")
            refused = True
        if have["replication"] != want.replication:
            diffs.append(f"replication {have['replication']} -> {want.replication}")
        for key, value in want.configs.items():
            current = have["configs"].get(key, _DEFAULTS.get(key, "default"))
            if current != value:
                diffs.append(f"{key} {current} -> {value}")
        action = "differs" if diffs else "ok"
        changes.append(TopicChange(topic, kind, want, action, have, tuple(diffs), refused))
    states = []
    for fn in pipeline.functions:
        g = groups.get(fn.group_id)
        state = (g.get("group_state") or g.get("state") or "") if isinstance(g, dict) else ""
        states.append(GroupState(fn.group_id, fn.name, g is not None, str(state)))
    return Plan(pipeline, brokers, changes, states, cluster_default)


_DEFAULTS = {"cleanup.policy": "delete", "min.insync.replicas": "1"}


def apply_topics(p: Plan) -> list[str]:
    """Create the missing topics; refuse partition changes; return the names created.

    Changelogs too: Faust would create them itself, but a table first written
    late (the control table, at a flush) can meet a changelog its client has
    no metadata for yet and crash the agent (PartitionsMismatch). Created
    here, compacted as Faust makes them, they exist before the first event.
    """
    if p.refused:
        lines = "\n".join(f"  {t.topic}: {', '.join(t.differences)}" for t in p.refused)
        raise DeployError(
            f"refusing to change partition counts under live state:\n{lines}\n"
            "state and NAT bindings are partitioned by these counts; undeploy with "
            "--delete-topics first (state is lost), or keep the old counts"
        )
    created: list[str] = []
    by_rf: dict[int, dict[str, int]] = {}
    configs = {}
    for t in p.topics:
        if t.action == "create":
            by_rf.setdefault(t.want.replication, {})[t.topic] = t.want.partitions
            configs[t.topic] = t.want.configs
    for rf, topics in sorted(by_rf.items()):
        created += admin.ensure_topics(p.brokers, topics, rf, configs)
    return created


def config_hash(fn: PipelineFunction) -> str:
    """Changes when anything that shapes the function's workers changes."""
    data = fn.spec.model_dump(mode="json", exclude={"instances"})
    data["routes"] = {port: [str(r.dest) for r in rs] for port, rs in fn.routes.items()}
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def targets(pipeline: Pipeline) -> dict[str, FunctionTarget]:
    return {
        fn.name: FunctionTarget(
            name=fn.name,
            instances=fn.instances,
            min_instances=fn.min_instances,
            max_instances=fn.max_instances,
            lag_threshold=fn.lag_threshold,
            cooldown=fn.cooldown,
            config_hash=config_hash(fn),
            group_id=fn.group_id,
            input_topic=fn.input_topic,
        )
        for fn in pipeline.functions
    }


def deploy(
    path: Path,
    brokers: str,
    *,
    autoscale: bool = False,
    wait: float | None = 120.0,
    directory: Path | None = None,
    private: bool = False,
    name: str | None = None,
) -> tuple[Deployment, Plan, list[str]]:
    """Create the topics, write the deployment, start (or update) its supervisor."""
    pipeline = load_pipeline(path)
    if name:
        pipeline = pipeline.renamed(name, private=private)
    p = plan(pipeline, brokers)
    created = apply_topics(p)
    dep_dir = directory or dp.directory(pipeline.name)
    dep_dir.mkdir(parents=True, exist_ok=True)
    copy = dep_dir / "pipeline.yaml"
    shutil.copyfile(path, copy)
    use_control_key(dep_dir)
    previous = dp.load(dep_dir) if (dep_dir / dp.DEPLOYMENT_FILE).exists() else None
    if previous is not None and previous.brokers != brokers and dp.supervisor_alive(dep_dir):
        raise DeployError(
            f"{pipeline.name} is deployed on {previous.brokers}; undeploy it before "
            f"deploying to {brokers}"
        )
    functions = targets(pipeline)
    dep = Deployment(
        pipeline=pipeline.name,
        pipeline_file=copy,
        brokers=brokers,
        autoscale=autoscale,
        functions=functions,
        generation=previous.generation + 1 if previous else 1,
        base_dir=str(Path(path).resolve().parent),
        private=private,
    )
    dp.save(dep_dir, dep)
    if not dp.supervisor_alive(dep_dir):
        _start_supervisor(dep_dir)
    if wait:
        wait_assigned(dep_dir, pipeline, wait)
    return dep, p, created


def use_control_key(dep_dir: Path) -> None:
    """The deployment's control key in this process's environment, where the
    supervisor, its workers and an in-process replay find it, and in the
    deployment's directory, where `snf replay` finds it: SNF_CONTROL_KEY if
    set, else the deployment's own (made on first deploy)."""
    given = os.environ.get(CONTROL_KEY_ENV)
    if given:
        parse_key(given)  # a bad key fails here, not in every worker
    key = dp.control_key(dep_dir, create=True, value=given)
    os.environ[CONTROL_KEY_ENV] = key


def _start_supervisor(dep_dir: Path) -> None:
    log = (dep_dir / dp.LOG_FILE).open("ab")
    cmd = [sys.executable, "-m", "snf", "supervise", str(dep_dir)]
    subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 10
    while not dp.supervisor_alive(dep_dir):
        if time.monotonic() > deadline:
            raise DeployError(f"the supervisor did not start; see {dep_dir / dp.LOG_FILE}")
        time.sleep(0.05)


def assignment(dep_dir: Path, function: str) -> tuple[set[int], int, int]:
    """Partitions the running instances of `function` own, instances running, wanted.

    Partitions count only once the instances agree: each has written its
    assignment since the newest of them started, and no partition is claimed
    twice (a stale file from before a rebalance would be).
    """
    state = dp.read_state(dep_dir) or {}
    fn = (state.get("functions") or {}).get(function) or {}
    try:  # instances of an older config do not count: a roll is under way
        want = dp.load(dep_dir).functions[function].config_hash
    except (dp.DeploymentError, KeyError):
        want = None
    running = [
        i
        for i in fn.get("instances", [])
        if i.get("state") == "running" and (want is None or i.get("config_hash") == want)
    ]
    newest = max((i.get("started") or 0 for i in running), default=0)
    claims: list[int] = []
    for inst in running:
        found = dp.worker_files(dep_dir, function, inst["instance"]).assignment()
        if found is None or found.time < newest:
            return set(), len(running), int(fn.get("desired", -1))
        claims += found.partitions
    owned = set(claims) if len(claims) == len(set(claims)) else set()
    return owned, len(running), int(fn.get("desired", -1))


def wait_assigned(dep_dir: Path, pipeline: Pipeline, timeout: float) -> None:
    """Until each function runs its desired instances and they own every partition
    (a function scaled to zero owns none, and that is fine)."""
    deadline = time.monotonic() + timeout
    while True:
        if not dp.supervisor_alive(dep_dir):
            raise DeployError(f"the supervisor exited; see {dep_dir / dp.LOG_FILE}")
        missing = []
        for fn in pipeline.functions:
            owned, running, desired = assignment(dep_dir, fn.name)
            if desired < 0 or running != desired or (desired and len(owned) < fn.partitions):
                missing.append(
                    f"{fn.name} ({running}/{max(desired, 0)} running, "
                    f"{len(owned)}/{fn.partitions} partitions)"
                )
        if not missing:
            return
        if time.monotonic() > deadline:
            raise DeployError(
                f"not ready after {timeout:.0f}s: {'; '.join(missing)}; logs: snf logs "
                f"{pipeline.name} FUNCTION, or {dep_dir}"
            )
        time.sleep(0.2)


def scale(dep_dir: Path, function: str, n: int, wait: float | None = 120.0) -> Deployment:
    dep = dp.load(dep_dir)
    if function not in dep.functions:
        known = ", ".join(dep.functions)
        raise DeployError(f"{dep.pipeline} has no function {function!r}; it has: {known}")
    pipeline = load_pipeline(dep.pipeline_file, base_dir=Path(dep.base_dir))
    pipeline = pipeline.renamed(dep.pipeline, private=dep.private)
    partitions = pipeline.function(function).partitions
    if not 0 <= n <= partitions:
        raise DeployError(f"{function} can run 0 to {partitions} instances (its partitions)")
    dep.functions[function].instances = n
    dp.save(dep_dir, dep)
    if wait:
        deadline = time.monotonic() + wait
        while assignment(dep_dir, function)[2] != n and time.monotonic() < deadline:
            time.sleep(0.1)  # the supervisor has not read the new target yet
        wait_assigned(dep_dir, pipeline, max(1.0, deadline - time.monotonic()))
    return dep


def undeploy(
    dep_dir: Path, delete_topics: bool = False, timeout: float = 60.0, keep_directory: bool = False
) -> list[str]:
    """Stop the supervisor (it stops the workers); delete topics only when asked."""
    dep = dp.load(dep_dir)
    pid = dp.read_pid(dep_dir)
    if pid is not None and dp.supervisor_alive(dep_dir):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while dp.supervisor_alive(dep_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
    dp.kill_orphans(dep_dir)
    deleted: list[str] = []
    if delete_topics:
        pipeline = load_pipeline(dep.pipeline_file, base_dir=Path(dep.base_dir))
        pipeline = pipeline.renamed(dep.pipeline, private=dep.private)
        topics = [t for t, s in pipeline.topic_specs().items() if _owned(pipeline, t)]
        leaders = [names.leader_topic(pipeline.name, f.name) for f in pipeline.functions]
        deleted = admin.delete_topics(dep.brokers, [*topics, *leaders])
    if not keep_directory:
        shutil.rmtree(dep_dir, ignore_errors=True)
    return deleted


def _owned(pipeline: Pipeline, topic: str) -> bool:
    """The pipeline's own topics; external topic:NAME ones belong to someone else."""
    return topic.startswith(f"{names.PREFIX}.{pipeline.name}.")
