"""`snf render k8s` (snf.ops.k8s): manifests checked against the Kubernetes and KEDA schemas.

Core objects are validated with kubernetes-validate (the API's JSON schemas, strict:
unknown fields fail), the ScaledObject with jsonschema against KEDA's CRD schema
(tests/data/keda/), closed the same way. No cluster, no broker.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from snf.cli.main import _parser
from snf.ops.k8s import DATA_DIR, HEALTH_PORT, render_k8s, write_manifests
from snf.pipeline.loader import load_pipeline, parse_pipeline

REPO = Path(__file__).resolve().parents[2]
KEDA_CRD = REPO / "tests" / "data" / "keda" / "scaledobjects.keda.sh.yaml"
K8S_VERSION = "1.30"
IMAGE = "registry.example/snf:0.1.0"
BROKERS = "kafka-0.kafka:9092,kafka-1.kafka:9092"

# fw: a fixed count; flows: scaled on lag, down to zero.
EDGE = """\
name: edge
partitions: 4
functions:
  - name: fw
    function: firewall
    instances: 2
    config: {rules: [{action: allow, proto: tcp}]}
  - name: flows
    function: flowmon
    instances: {min: 0, max: 4, lag_threshold: 500, cooldown: 30.5}
"""

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
)

Obj = dict[str, Any]


def render(text: str = EDGE, **kw: Any) -> list[Obj]:
    opts = {"image": IMAGE, "namespace": "net", "brokers": BROKERS, **kw}
    return render_k8s(parse_pipeline(text), pipeline_text=text, **opts)


def of_kind(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def container(deployment: Obj) -> Obj:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def closed(schema: Any) -> Any:
    """The schema with unknown fields rejected, as the API server's strict validation does."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    open_ = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and not open_:
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def keda() -> jsonschema.Validator:
    crd = yaml.safe_load(KEDA_CRD.read_text(encoding="utf-8"))
    assert crd["spec"]["names"]["kind"] == "ScaledObject"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    # CRD schemas are OpenAPI 3.0 schemas: draft 4 keywords.
    return jsonschema.Draft4Validator(closed(version["schema"]["openAPIV3Schema"]))


# --- schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_pipelines_render_valid_kubernetes_objects(
    path: Path, keda: jsonschema.Validator
) -> None:
    text = path.read_text(encoding="utf-8")
    pipeline = load_pipeline(path)
    objs = render_k8s(pipeline, image=IMAGE, namespace="net", brokers=BROKERS, pipeline_text=text)
    scaled = {f"snf-{pipeline.name}-{f.name}" for f in pipeline.functions if f.autoscaled}
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "ScaledObject"} == scaled
    for obj in objs:
        if obj["kind"] == "ScaledObject":
            keda.validate(obj)
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_every_core_object_validates_against_the_kubernetes_schema() -> None:
    objs = render()
    core = [o for o in objs if o["apiVersion"] != "keda.sh/v1alpha1"]
    assert [o["kind"] for o in core] == ["ConfigMap", "Job", "Deployment", "Deployment"]
    for obj in core:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_kubernetes_schema_check_catches_a_wrong_field() -> None:
    deployment = of_kind(render(), "Deployment")["snf-edge-fw"]
    bad = copy.deepcopy(deployment)
    bad["spec"]["replica"] = bad["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(deployment)
    container(bad)["livenessProbe"]["httpGet"]["port"] = 70000.5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_scaled_objects_validate_against_the_keda_crd(keda: jsonschema.Validator) -> None:
    scaled = of_kind(render(), "ScaledObject")
    assert list(scaled) == ["snf-edge-flows"]
    for obj in scaled.values():
        keda.validate(obj)


def test_the_keda_schema_check_catches_wrong_fields(keda: jsonschema.Validator) -> None:
    obj = of_kind(render(), "ScaledObject")["snf-edge-flows"]
    for path, value in [
        (("spec", "minReplicas"), 0),  # the HPA's name, not KEDA's
        (("spec", "maxReplicaCount"), "4"),
        (("spec", "triggers", 0, "metadata", "lagThreshold"), 500),  # metadata is strings only
    ]:
        bad = copy.deepcopy(obj)
        target = bad
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            keda.validate(bad)


# --- what the objects say ----------------------------------------------------------------


def test_one_deployment_per_function_with_its_replicas() -> None:
    deployments = of_kind(render(), "Deployment")
    assert sorted(deployments) == ["snf-edge-flows", "snf-edge-fw"]
    assert deployments["snf-edge-fw"]["spec"]["replicas"] == 2
    # Autoscaled: KEDA owns the count, so a re-apply must not reset it.
    assert "replicas" not in deployments["snf-edge-flows"]["spec"]
    for name, d in deployments.items():
        fn = name.removeprefix("snf-edge-")
        assert container(d)["args"][:3] == ["worker", "/etc/snf/pipeline.yaml", fn]
        assert container(d)["image"] == IMAGE


def test_scaled_object_follows_the_pipeline() -> None:
    objs = render()
    pipeline = parse_pipeline(EDGE)
    flows = pipeline.function("flows")
    spec = of_kind(objs, "ScaledObject")["snf-edge-flows"]["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "snf-edge-flows",
    }
    assert "snf-edge-flows" in of_kind(objs, "Deployment")
    assert spec["minReplicaCount"] == 0  # scale to zero is allowed
    assert spec["maxReplicaCount"] == 4
    assert spec["cooldownPeriod"] == 31  # 30.5 s, rounded up to whole seconds
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"] == {
        "bootstrapServers": BROKERS,
        "consumerGroup": flows.group_id,
        "topic": flows.input_topic,
        "lagThreshold": "500",
        "offsetResetPolicy": "earliest",
        "allowIdleConsumers": "false",
    }
    assert (flows.group_id, flows.input_topic) == ("snf.edge.flows", "snf.edge.flows.in")


def test_a_fixed_function_gets_no_scaled_object() -> None:
    assert "snf-edge-fw" not in of_kind(render(), "ScaledObject")


@dataclass
class StandInFunction:
    """The attributes snf.ops.k8s reads, free of the loader's checks (max > partitions)."""

    name: str
    kind: str = "flowmon"
    group_id: str = "snf.p.f"
    input_topic: str = "snf.p.ingress"
    instances: int = 1
    autoscaled: bool = True
    min_instances: int = 3
    max_instances: int = 8
    lag_threshold: int = 100
    cooldown: float = 60.0
    partitions: int = 2


@dataclass
class StandInPipeline:
    name: str
    partitions: int
    functions: list[StandInFunction] = field(default_factory=list)

    def topic_specs(self) -> dict[str, Any]:
        return {}


def test_replicas_never_exceed_the_partitions() -> None:
    pipeline = StandInPipeline("p", 2, [StandInFunction("f")])
    objs = render_k8s(
        pipeline,  # type: ignore[arg-type]
        image=IMAGE,
        namespace="net",
        brokers=BROKERS,
        pipeline_text="name: p\n",
    )
    spec = of_kind(objs, "ScaledObject")["snf-p-f"]["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 2)


def test_probes_point_at_the_port_the_worker_serves() -> None:
    for d in of_kind(render(), "Deployment").values():
        c = container(d)
        args = c["args"]
        port = int(args[args.index("--health-port") + 1])
        assert port == HEALTH_PORT
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert {"name": "health", "containerPort": port, "protocol": "TCP"} in c["ports"]


def test_worker_pods_are_annotated_for_prometheus_on_the_worker_s_port() -> None:
    for d in of_kind(render(), "Deployment").values():
        args = container(d)["args"]
        annotations = d["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"  # a string: annotations are
        assert annotations["prometheus.io/port"] == args[args.index("--health-port") + 1]
        assert annotations["prometheus.io/path"] == "/metrics"
    for job in of_kind(render(), "Job").values():  # the topics job has nothing to scrape
        assert "annotations" not in job["spec"]["template"]["metadata"]


def test_workers_run_unprivileged_with_state_on_an_empty_dir() -> None:
    for d in of_kind(render(), "Deployment").values():
        pod = d["spec"]["template"]["spec"]
        c = container(d)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["terminationGracePeriodSeconds"] == 30
        assert c["resources"] == {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        }
        assert {"name": "SNF_BROKERS", "value": BROKERS} in c["env"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert c["args"][c["args"].index("--datadir") + 1] == DATA_DIR
        assert volumes[mounts[DATA_DIR]] == {"name": "state", "emptyDir": {}}
        assert volumes[mounts["/etc/snf"]]["configMap"] == {"name": "snf-edge"}
        # Every writable path is a volume, so a read-only root file system is safe.
        assert "emptyDir" in volumes[mounts["/tmp"]]


def test_topics_job_creates_the_topics_before_the_workers() -> None:
    objs = render()
    job = of_kind(objs, "Job")["snf-edge-topics"]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == [
        "plan",
        "/etc/snf/pipeline.yaml",
        "--brokers",
        "$(SNF_BROKERS)",
        "--apply-topics",
    ]
    assert {"name": "SNF_BROKERS", "value": BROKERS} in c["env"]  # what $(SNF_BROKERS) expands
    assert pod["restartPolicy"] == "OnFailure"
    assert job["spec"]["backoffLimit"] > 0
    kinds = [o["kind"] for o in objs]
    assert kinds.index("ConfigMap") < kinds.index("Job") < kinds.index("Deployment")


def test_labels_and_names() -> None:
    objs = render()
    for obj in objs:
        meta = obj["metadata"]
        assert meta["namespace"] == "net"
        assert meta["name"] == "snf-edge" or meta["name"].startswith("snf-edge-")
        assert meta["labels"]["app.kubernetes.io/name"] == "snf"
        assert meta["labels"]["app.kubernetes.io/instance"] == "edge"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "snf"
        assert set(STANDARD_LABELS) <= set(meta["labels"])
    for name, d in of_kind(objs, "Deployment").items():
        fn = name.removeprefix("snf-edge-")
        assert d["metadata"]["labels"]["app.kubernetes.io/component"] == fn
        selector = d["spec"]["selector"]["matchLabels"]
        assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        assert selector["app.kubernetes.io/component"] == fn  # one function's pods only


def test_a_changed_pipeline_file_rolls_the_workers() -> None:
    def hashes(text: str) -> set[str]:
        ds = of_kind(render(text), "Deployment").values()
        return {d["spec"]["template"]["metadata"]["annotations"]["snf/pipeline-sha256"] for d in ds}

    before = hashes(EDGE)
    assert len(before) == 1
    assert hashes(EDGE.replace("lag_threshold: 500", "lag_threshold: 50")) != before


# --- YAML out ------------------------------------------------------------------------------


def test_config_map_round_trips_the_pipeline_text() -> None:
    (cm,) = of_kind(render(), "ConfigMap").values()
    assert cm["metadata"]["name"] == "snf-edge"
    assert cm["data"] == {"pipeline.yaml": EDGE}
    (loaded,) = yaml.safe_load_all(write_manifests([cm], None))
    text = loaded["data"]["pipeline.yaml"]
    assert text == EDGE
    assert [f.name for f in parse_pipeline(text).functions] == ["fw", "flows"]


def test_yaml_stream_parses_back_to_the_same_objects() -> None:
    objs = render()
    out = write_manifests(objs, None)
    assert isinstance(out, str)
    assert list(yaml.safe_load_all(out)) == objs
    assert "&id" not in out  # no anchors, even where objects repeat values
    assert "pipeline.yaml: |" in out  # the pipeline file stays readable


def test_out_dir_gets_one_file_per_object_in_apply_order(tmp_path: Path) -> None:
    objs = render()
    paths = write_manifests(objs, tmp_path / "k8s")
    assert isinstance(paths, list)
    assert paths == sorted((tmp_path / "k8s").iterdir())  # `kubectl apply -f DIR` order
    assert [yaml.safe_load(p.read_text(encoding="utf-8")) for p in paths] == objs
    assert paths[0].name == "00-configmap-snf-edge.yaml"
    assert paths[-1].name == "04-scaledobject-snf-edge-flows.yaml"


# --- the commands the containers run ---------------------------------------------------------


def test_worker_args_parse_with_the_snf_command_line() -> None:
    for d in of_kind(render(), "Deployment").values():
        args = _parser().parse_args(container(d)["args"])
        assert args.command == "worker"
        assert args.function == d["metadata"]["labels"]["app.kubernetes.io/component"]
        assert args.pipeline == Path("/etc/snf/pipeline.yaml")
        assert args.datadir == Path(DATA_DIR)
        assert args.brokers == BROKERS
        assert int(args.health_port) == HEALTH_PORT


def test_topics_job_args_parse_with_the_snf_command_line() -> None:
    (job,) = of_kind(render(), "Job").values()
    (c,) = job["spec"]["template"]["spec"]["containers"]
    args = _parser().parse_args(c["args"])
    assert args.command == "plan"
    assert args.apply_topics is True


# --- secured Kafka -----------------------------------------------------------------------


def test_kafka_security_comes_from_a_secret_never_from_the_manifests(tmp_path: Path) -> None:
    from snf.kafka.security import KafkaSecurity

    (tmp_path / "key.pem").write_text("x")
    (tmp_path / "cert.pem").write_text("x")
    secret_values = ("pw-in-the-local-file", "key-pw-in-the-local-file")
    kafka = KafkaSecurity.model_validate(
        {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "snf",
            "sasl.password": secret_values[0],
            "ssl.certificate.location": tmp_path / "cert.pem",
            "ssl.key.location": tmp_path / "key.pem",
            "ssl.key.password": secret_values[1],
        }
    )
    objs = render(kafka=kafka)
    text = write_manifests(objs, None)
    assert isinstance(text, str) and not any(v in text for v in secret_values)
    assert "Secret" not in {o["kind"] for o in objs}  # the operator creates it
    pods = [o["spec"]["template"]["spec"] for o in objs if o["kind"] in ("Job", "Deployment")]
    assert len(pods) == 3
    for pod in pods:
        (volume,) = [v for v in pod["volumes"] if v["name"] == "kafka"]
        assert volume["secret"]["secretName"] == "snf-edge-kafka"
        (c,) = pod["containers"]
        assert {"name": "kafka", "mountPath": "/etc/snf-kafka", "readOnly": True} in c[
            "volumeMounts"
        ]
        env = {e["name"]: e for e in c["env"]}
        assert env["SNF_KAFKA_CONFIG"]["value"] == "/etc/snf-kafka/client.properties"
        for name, key in (
            ("SNF_KAFKA_SASL_PASSWORD", "sasl.password"),
            ("SNF_KAFKA_SSL_KEY_PASSWORD", "ssl.key.password"),
        ):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "snf-edge-kafka", "key": key}
    for obj in objs:
        if obj["kind"] != "ScaledObject":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_plaintext_kafka_mounts_no_secret() -> None:
    from snf.kafka.security import KafkaSecurity

    for kafka in (None, KafkaSecurity()):
        text = write_manifests(render(kafka=kafka), None)
        assert isinstance(text, str) and "snf-edge-kafka" not in text and "SNF_KAFKA" not in text


def test_workers_read_the_control_key_from_a_secret_never_a_value() -> None:
    deployments = of_kind(render(), "Deployment")
    assert deployments
    for d in deployments.values():
        [key] = [e for e in container(d)["env"] if e["name"] == "SNF_CONTROL_KEY"]
        assert "value" not in key
        assert key["valueFrom"]["secretKeyRef"] == {"name": "snf-edge-control", "key": "key"}
