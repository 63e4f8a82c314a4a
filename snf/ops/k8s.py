"""Kubernetes manifests for a pipeline (`snf render k8s PIPELINE`).

One set of objects per pipeline, all named `snf-<pipeline>[-<part>]`:

    ConfigMap     snf-<pipeline>           the pipeline file, mounted at /etc/snf
    Job           snf-<pipeline>-topics    `snf plan --apply-topics`: creates the topics
    Deployment    snf-<pipeline>-<fn>      one per function: `snf worker ... <fn>`; its pods
                                           carry prometheus.io/* annotations for /metrics
    ScaledObject  snf-<pipeline>-<fn>      one per autoscaled function (KEDA, Kafka lag)

Objects are plain dicts in Kubernetes' own field names, so they can be checked
against the Kubernetes schemas and written as YAML without a client library.

With Kafka client security settings (snf.kafka.security), every pod mounts the
Secret `snf-<pipeline>-kafka`, which the operator creates, at /etc/snf-kafka:
SNF_KAFKA_CONFIG names its `client.properties`, and the SASL password (and a
client key's password) come from its keys `sasl.password` (`ssl.key.password`)
through secretKeyRef. No secret value is ever written into a manifest.
Workers read the pipeline's control key (SNF_CONTROL_KEY) the same way, from
key `key` of the Secret `snf-<pipeline>-control`.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from snf import __version__
from snf.guarantee.control_auth import CONTROL_KEY_ENV

if TYPE_CHECKING:
    from snf.kafka.security import KafkaSecurity
    from snf.pipeline.model import Pipeline, PipelineFunction

__all__ = [
    "CONFIG_DIR",
    "DATA_DIR",
    "DEFAULT_IMAGE",
    "DEFAULT_NAMESPACE",
    "HEALTH_PORT",
    "KAFKA_DIR",
    "SCRAPE_ANNOTATIONS",
    "control_key_ref",
    "kafka_secret_name",
    "render_k8s",
    "write_manifests",
]

Obj = dict[str, Any]

DEFAULT_IMAGE = f"snf:{__version__}"  # as built by docker/Dockerfile, tagged with the version
DEFAULT_NAMESPACE = "default"
CONFIG_DIR = "/etc/snf"
PIPELINE_KEY = "pipeline.yaml"
PIPELINE_FILE = f"{CONFIG_DIR}/{PIPELINE_KEY}"
DATA_DIR = "/var/lib/snf"
HEALTH_PORT = 8080
# The common convention of Prometheus' kubernetes_sd relabelling (and of most charts).
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(HEALTH_PORT),
    "prometheus.io/path": "/metrics",
}
RUN_AS = 10001  # docker/Dockerfile's user `snf`; any non-root uid works
REQUESTS = {"cpu": "250m", "memory": "256Mi"}
LIMITS = {"cpu": "1", "memory": "1Gi"}
BROKERS_ENV = "SNF_BROKERS"
KAFKA_DIR = (
    "/etc/snf-kafka"  # the Kafka Secret's files (its own mount: /etc/snf is the ConfigMap's)
)
KAFKA_CONFIG_KEY = "client.properties"


def render_k8s(
    pipeline: Pipeline,
    *,
    image: str,
    namespace: str,
    brokers: str,
    pipeline_text: str,
    kafka: KafkaSecurity | None = None,
) -> list[Obj]:
    """All objects for one pipeline, in apply order (config, topics, workers).

    `kafka`: the client security settings in effect; the pods then read theirs
    from the Secret `kafka_secret_name(pipeline)` (module docstring).
    """
    objs = [
        _config_map(pipeline, namespace, pipeline_text),
        _topics_job(pipeline, namespace, image, brokers),
    ]
    digest = hashlib.sha256(pipeline_text.encode()).hexdigest()
    control = {"name": CONTROL_KEY_ENV, "valueFrom": {"secretKeyRef": control_key_ref(pipeline)}}
    for fn in pipeline.functions:
        deployment = _deployment(pipeline, fn, namespace, image, brokers, digest)
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            container["env"].append(dict(control))  # workers trust only signed lineage
        objs.append(deployment)
        if fn.autoscaled:
            objs.append(_scaled_object(pipeline, fn, namespace, brokers))
    if kafka is not None and kafka.security_protocol != "PLAINTEXT":
        for obj in objs:
            if obj["kind"] in ("Job", "Deployment"):
                _mount_kafka_secret(
                    obj["spec"]["template"]["spec"], kafka_secret_name(pipeline), kafka
                )
    return objs


def control_key_ref(pipeline: Pipeline) -> Obj:
    """The pipeline's control key (snf.guarantee.control_auth): key `key` of the
    Secret `snf-<pipeline>-control`, which the operator creates."""
    return {"name": f"snf-{pipeline.name}-control", "key": "key"}


def kafka_secret_name(pipeline: Pipeline) -> str:
    return f"snf-{pipeline.name}-kafka"


def _mount_kafka_secret(pod: Obj, secret: str, kafka: KafkaSecurity) -> None:
    """The Secret's files at KAFKA_DIR, and its secrets as environment variables."""
    from snf.kafka.security import env_name

    # 0440: readable through the pod's fsGroup, as the worker runs as a non-root user.
    pod["volumes"].append({"name": "kafka", "secret": {"secretName": secret, "defaultMode": 0o440}})
    env: list[Obj] = [{"name": "SNF_KAFKA_CONFIG", "value": f"{KAFKA_DIR}/{KAFKA_CONFIG_KEY}"}]
    keys = ["sasl.password"] if kafka.sasl else []
    keys += ["ssl.key.password"] if kafka.ssl_key_password is not None else []
    for key in keys:
        ref = {"secretKeyRef": {"name": secret, "key": key}}
        env.append({"name": env_name(key), "valueFrom": ref})
    for container in pod["containers"]:
        container["env"] += env
        container["volumeMounts"].append(
            {"name": "kafka", "mountPath": KAFKA_DIR, "readOnly": True}
        )


def write_manifests(objs: list[Obj], out_dir: Path | None) -> str | list[Path]:
    """No out_dir: one multi-document YAML string. Else one file per object, in apply order.

    Files are numbered so `kubectl apply -f DIR` (which goes in file name order)
    creates the ConfigMap before the pods that mount it.
    """
    if out_dir is None:
        return "".join("---\n" + _dump(obj) for obj in objs)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, obj in enumerate(objs):
        path = out_dir / f"{i:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        path.write_text(_dump(obj), encoding="utf-8")
        paths.append(path)
    return paths


def labels(pipeline: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "snf",
        "app.kubernetes.io/instance": pipeline,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "snf",
    }


def _meta(name: str, namespace: str, pipeline: str, component: str) -> Obj:
    return {"name": name, "namespace": namespace, "labels": labels(pipeline, component)}


def _config_map(pipeline: Pipeline, namespace: str, text: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"snf-{pipeline.name}", namespace, pipeline.name, "config"),
        "data": {PIPELINE_KEY: text},
    }


def _topics_job(pipeline: Pipeline, namespace: str, image: str, brokers: str) -> Obj:
    meta = _meta(f"snf-{pipeline.name}-topics", namespace, pipeline.name, "topics")
    args = ["plan", PIPELINE_FILE, "--brokers", f"$({BROKERS_ENV})", "--apply-topics"]
    container = _container("topics", image, args, brokers)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 6,  # retries while the brokers come up
            # A Job's pod template is immutable: removing the finished Job lets the next
            # `kubectl apply` (say, with a new image) create it again. Creating topics is
            # idempotent, so running it again is harmless.
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": labels(pipeline.name, "topics")},
                "spec": _pod_spec(pipeline, container, "OnFailure"),
            },
        },
    }


def _deployment(
    pipeline: Pipeline,
    fn: PipelineFunction,
    namespace: str,
    image: str,
    brokers: str,
    digest: str,
) -> Obj:
    meta = _meta(f"snf-{pipeline.name}-{fn.name}", namespace, pipeline.name, fn.name)
    args = [
        "worker", PIPELINE_FILE, fn.name,
        "--brokers", brokers,
        "--datadir", DATA_DIR,
        "--health-port", str(HEALTH_PORT),
    ]  # fmt: skip
    container = _container("worker", image, args, brokers)
    container["ports"] = [{"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}]
    probe = {"periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    container["livenessProbe"] = {"httpGet": {"path": "/livez", "port": HEALTH_PORT}, **probe}
    container["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": HEALTH_PORT}, **probe}
    container["volumeMounts"].append({"name": "state", "mountPath": DATA_DIR})
    # The RocksDB state is a cache of the changelog topics: a new pod restores it from
    # Kafka, so an emptyDir (lost with the pod) is all the disk a worker needs.
    pod = _pod_spec(pipeline, container, "Always", {"name": "state", "emptyDir": {}})
    spec: Obj = {
        "selector": {"matchLabels": labels(pipeline.name, fn.name)},
        "template": {
            # A changed pipeline file changes this hash and so rolls the workers.
            "metadata": {
                "labels": labels(pipeline.name, fn.name),
                "annotations": {"snf/pipeline-sha256": digest, **SCRAPE_ANNOTATIONS},
            },
            "spec": pod,
        },
    }
    if not fn.autoscaled:
        # Autoscaled: no replicas, or every `kubectl apply` would reset KEDA's count.
        spec = {"replicas": fn.instances, **spec}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}


def _scaled_object(pipeline: Pipeline, fn: PipelineFunction, namespace: str, brokers: str) -> Obj:
    name = f"snf-{pipeline.name}-{fn.name}"
    # Consumers beyond the partition count would sit idle.
    max_replicas = min(fn.max_instances, fn.partitions)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _meta(name, namespace, pipeline.name, fn.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": min(fn.min_instances, max_replicas),  # 0: scale to zero
            "maxReplicaCount": max_replicas,
            "cooldownPeriod": math.ceil(fn.cooldown),  # idle seconds before going to zero
            "triggers": [
                {
                    "type": "kafka",
                    "metadata": {
                        "bootstrapServers": brokers,
                        "consumerGroup": fn.group_id,
                        "topic": fn.input_topic,
                        "lagThreshold": str(fn.lag_threshold),
                        # A group with no committed offset yet counts the whole topic as lag,
                        # so the first batch wakes a function that sits at zero.
                        "offsetResetPolicy": "earliest",
                        "allowIdleConsumers": "false",
                    },
                }
            ],
        },
    }


def _container(name: str, image: str, args: list[str], brokers: str) -> Obj:
    return {
        "name": name,
        "image": image,
        "command": ["snf"],  # independent of the image's entrypoint
        "args": args,
        "env": [{"name": BROKERS_ENV, "value": brokers}],
        "resources": {"requests": dict(REQUESTS), "limits": dict(LIMITS)},
        "volumeMounts": [
            {"name": "pipeline", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,  # writes go to the emptyDirs only
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _pod_spec(pipeline: Pipeline, container: Obj, restart: str, *volumes: Obj) -> Obj:
    return {
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": 30,  # a worker commits offsets and leaves its group
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "pipeline", "configMap": {"name": f"snf-{pipeline.name}"}},
            {"name": "tmp", "emptyDir": {}},
            *volumes,
        ],
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the pipeline file) as literal blocks, so they stay readable."""

    def ignore_aliases(self, data: Any) -> bool:
        return True  # no &id001 anchors: kubectl accepts them, people reading the YAML do not


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(obj: Obj) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
