"""Pipeline files: parsing, defaults, derived wiring, and every kind of error."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import pytest
from pydantic import Field

from snf.core.contract import Decisions, FunctionConfig, NetworkFunction
from snf.core.registry import BUILTIN
from snf.core.tables import BatchState
from snf.errors import ConfigError
from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers
from snf.pipeline.errors import PipelineError, Problem
from snf.pipeline.loader import load_pipeline, parse_pipeline
from snf.pipeline.model import Pipeline
from snf.pipeline.spec import PipelineSpec

REPO = Path(__file__).resolve().parents[2]

EDGE = """\
name: edge
partitions: 4
functions:
  - name: fw
    function: firewall
    instances: 1
    config: {default: drop, rules: [{action: allow, proto: tcp, dport: 443}]}
"""


class FakeRule(FunctionConfig):
    action: Literal["allow", "drop"]
    port: int = 0


class FakeConfig(FunctionConfig):
    mode: Literal["a", "b"]
    limit: int = Field(default=1, ge=1)
    rules: list[FakeRule] = Field(default_factory=list)


class FakeFunction(NetworkFunction):
    kind: ClassVar[str] = "fake"
    ports: ClassVar[tuple[str, ...]] = ("pass", "drop", "alerts")
    tables: ClassVar[tuple[str, ...]] = ("flows",)
    Config: ClassVar[type[FunctionConfig]] = FakeConfig

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        return Decisions(ports=["pass"] * len(batch), reasons=[""] * len(batch))


class FakeSink(FakeFunction):
    """No `pass` port: nothing can follow it."""

    kind: ClassVar[str] = "sink"
    ports: ClassVar[tuple[str, ...]] = ("alerts",)
    tables: ClassVar[tuple[str, ...]] = ()


@pytest.fixture(autouse=True)
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUILTIN, "fake", f"{__name__}:FakeFunction")
    monkeypatch.setitem(BUILTIN, "sink", f"{__name__}:FakeSink")


def chain(*fns: str, partitions: int = 4) -> str:
    steps = "".join(f"  - {{name: {f}, function: fake, config: {{mode: a}}}}\n" for f in fns)
    return f"name: p\npartitions: {partitions}\nfunctions:\n{steps}"


def problems(text: str, source: str = "pipe.yaml") -> list[Problem]:
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, source)
    assert str(info.value) == "\n".join(map(str, info.value.problems))
    return info.value.problems


def only(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --- the firewall example (needs functions/firewall.py) ---


def test_edge_example_with_real_firewall() -> None:
    pytest.importorskip("snf.functions.firewall")
    pipeline = parse_pipeline(EDGE)
    fw = pipeline.function("fw")
    assert fw.kind == "firewall" and fw.instances == 1
    assert fw.config.default == "drop"
    assert fw.config.rules[0].dport == 443
    assert fw.input_topic == "snf.edge.ingress"
    assert fw.port_topics == {"pass": "snf.edge.egress", "drop": "snf.edge.fw.drop"}


def test_bundled_pipelines_load() -> None:
    pipeline = load_pipeline(REPO / "pipelines" / "perimeter.yaml")
    assert pipeline.name == "perimeter" and pipeline.partitions == 4
    assert [(f.name, f.kind, f.instances) for f in pipeline.functions] == [("fw", "firewall", 1)]
    assert pipeline.path == REPO / "pipelines" / "perimeter.yaml"
    edge = load_pipeline(REPO / "pipelines" / "edge.yaml")
    assert [(f.name, f.kind) for f in edge.functions] == [
        ("fw", "firewall"),
        ("nat", "nat"),
        ("lb", "loadbalancer"),
        ("flows", "flowmon"),
    ]
    monitoring = load_pipeline(REPO / "pipelines" / "monitoring.yaml")
    assert [f.kind for f in monitoring.functions] == ["ids", "ratelimit", "flowmon"]


def test_firewall_config_error_points_at_the_rule() -> None:
    pytest.importorskip("snf.functions.firewall")
    text = EDGE.replace("action: allow", "action: permit")
    p = only(text)
    assert (p.line, p.path) == (7, "functions[0].config.rules[0].action")
    assert p.message == "expected 'allow' or 'drop', got 'permit'"


# --- parsing and defaults ---


def test_defaults() -> None:
    pipeline = parse_pipeline(
        "name: p\nfunctions:\n  - {name: f, function: fake, config: {mode: a}}"
    )
    assert pipeline.partitions == 4 and pipeline.path is None
    fn = pipeline.functions[0]
    assert fn.instances == 1 and fn.cls is FakeFunction
    assert fn.config == FakeConfig(mode="a", limit=1)
    assert isinstance(fn.create(4), FakeFunction)


def test_config_defaults_to_empty_mapping() -> None:
    # FakeConfig needs `mode`, so an absent config is validated as {} and fails there.
    p = only("name: p\nfunctions:\n  - name: f\n    function: fake\n")
    assert (p.line, p.path, p.message) == (3, "functions[0].config.mode", "required field missing")


def test_load_pipeline_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(chain("f1"))
    assert load_pipeline(path).path == path
    assert load_pipeline(str(path)).name == "p"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_pipeline(tmp_path / "nope.yaml")


# --- derived wiring ---


def test_two_function_chain_wiring() -> None:
    pipeline = parse_pipeline(chain("f1", "f2"))
    f1, f2 = pipeline.functions
    assert f1.input_topic == "snf.p.ingress"
    assert f1.port_topics == {
        "pass": "snf.p.f2.in",  # the next function's input topic
        "drop": "snf.p.f1.drop",
        "alerts": "snf.p.f1.alerts",
    }
    assert f2.input_topic == "snf.p.f2.in" and f2.inputs == (("f1", "pass"),)
    assert f2.port_topics["pass"] == "snf.p.egress"
    assert f2.group_id == "snf.p.f2"
    # One Faust table holds the core's tables and the engine's control table.
    assert f2.changelog_topics == {"state": "snf.p.f2-state-changelog"}


def test_three_function_chain_topics() -> None:
    pipeline = parse_pipeline(chain("f1", "f2", "f3", partitions=8))
    assert [f.input_topic for f in pipeline.functions] == [
        "snf.p.ingress",
        "snf.p.f2.in",
        "snf.p.f3.in",
    ]
    topics = pipeline.topics()
    assert set(topics.values()) == {8}
    assert set(topics) == {
        "snf.p.ingress",
        "snf.p.egress",
        "snf.p.f2.in",
        "snf.p.f3.in",
        *(f"snf.p.{f}.{port}" for f in ("f1", "f2", "f3") for port in ("drop", "alerts")),
        # each function's dead letters, after its input
        *("snf.p.ingress.dlq", "snf.p.f2.in.dlq", "snf.p.f3.in.dlq"),
    }
    assert pipeline.changelog_topics() == {
        f"snf.p.{f}-state-changelog": 8 for f in ("f1", "f2", "f3")
    }


def test_function_lookup() -> None:
    pipeline: Pipeline = parse_pipeline(chain("f1", "f2"))
    assert pipeline.function("f2").inputs == (("f1", "pass"),)
    with pytest.raises(ConfigError, match="no function 'f9'"):
        pipeline.function("f9")


def test_function_without_pass_port_must_be_last() -> None:
    text = chain("a", "b").replace("function: fake", "function: sink")
    p = only(text)
    assert (p.line, p.path) == (4, "functions[0].function")
    assert "no 'pass' port" in p.message


# --- errors ---


def test_yaml_syntax_error_reports_its_line() -> None:
    p = only("name: p\nfunctions:\n  - name: f\n   function: [fake\n")
    assert p.path == "" and p.line == 4
    assert p.message.startswith("invalid YAML:")


def test_message_starts_with_file_name() -> None:
    with pytest.raises(PipelineError) as info:
        parse_pipeline("name: p\nfunctions: []\n", "pipelines/x.yaml")
    assert str(info.value).startswith("pipelines/x.yaml:2: functions: ")
    assert isinstance(info.value, ConfigError)


def test_unknown_top_level_field() -> None:
    p = only(chain("f1") + "partition: 3\n")
    assert (p.line, p.path) == (5, "partition")
    allowed = "name, partitions, replication, ship, functions, wiring, egress"
    assert p.message.startswith(f"unknown field (allowed: {allowed})")
    assert "did you mean 'partitions'?" in p.message


def test_missing_functions() -> None:
    p = only("# comment\nname: p\npartitions: 2\n")
    assert (p.line, p.path, p.message) == (2, "functions", "required field missing")


def test_wrong_type_for_partitions() -> None:
    p = only(chain("f1").replace("partitions: 4", "partitions: many"))
    assert (p.line, p.path) == (2, "partitions")
    assert p.message.startswith("input should be a valid integer") and p.message.endswith(
        ", got 'many'"
    )


def test_partitions_out_of_range() -> None:
    p = only(chain("f1").replace("partitions: 4", "partitions: 0"))
    assert p.message == "input should be greater than or equal to 1, got 0"


def test_unknown_function_type_lists_known() -> None:
    p = only(chain("f1").replace("function: fake", "function: natx"))
    assert (p.line, p.path) == (4, "functions[0].function")
    assert "unknown function type 'natx'" in p.message and "fake" in p.message


def test_bad_function_name() -> None:
    p = only(chain("Bad_Name"))
    assert (p.line, p.path) == (4, "functions[0].name")
    assert p.message.startswith("expected a name of lowercase letters")
    assert p.message.endswith("got 'Bad_Name'")


def test_duplicate_function_names() -> None:
    p = only(chain("f1", "f2", "f1"))
    assert (p.line, p.path) == (6, "functions[2].name")
    assert "duplicate function name 'f1'" in p.message


def test_duplicate_yaml_key() -> None:
    text = (
        "name: p\nfunctions:\n  - name: f\n    function: fake\n    name: g\n    config: {mode: a}\n"
    )
    p = only(text)
    assert (p.line, p.path) == (5, "functions[0].name")
    assert p.message == "duplicate key (first at line 3)"


def test_instances_exceed_partitions() -> None:
    text = chain("f1", partitions=2).replace("function: fake", "function: fake, instances: 3")
    p = only(text)
    assert (p.line, p.path) == (4, "functions[0].instances")
    assert "instances (3) must not exceed partitions (2)" in p.message


def test_nested_config_error_line_and_path() -> None:
    text = """\
name: p
functions:
  - name: f1
    function: fake
    config:
      mode: a
      rules:
        - action: allow
          port: 1
        - action: permit
"""
    p = only(text)
    assert (p.line, p.path) == (10, "functions[0].config.rules[1].action")
    assert p.message == "expected 'allow' or 'drop', got 'permit'"


def test_config_unknown_and_missing_fields() -> None:
    text = "name: p\nfunctions:\n  - name: f1\n    function: fake\n    config:\n      limt: 2\n"
    found = problems(text)
    assert [(p.line, p.path) for p in found] == [
        (5, "functions[0].config.mode"),  # missing: the line of the config mapping's key
        (6, "functions[0].config.limt"),
    ]
    assert found[1].message == "unknown field (allowed: mode, limit, rules); did you mean 'limit'?"


def test_multiple_errors_reported_together() -> None:
    text = """\
name: Edge
partitions: 4
colour: blue
functions:
  - name: fw
    function: fake
    config: {mode: c, limit: 0}
  - name: nat
    function: natx
"""
    found = problems(text, "pipelines/edge.yaml")
    assert [(p.line, p.path) for p in found] == [
        (1, "name"),
        (3, "colour"),
        (7, "functions[0].config.mode"),
        (7, "functions[0].config.limit"),
        (9, "functions[1].function"),
    ]
    assert all(p.file == "pipelines/edge.yaml" for p in found)


def test_non_mapping_document() -> None:
    p = only("- just\n- a list\n")
    assert (p.line, p.path, p.message) == (1, "", "expected a mapping, got a list")


def test_empty_document() -> None:
    assert only("# nothing\n").message.startswith("empty file")


def test_spec_enforces_conflicts_without_a_file() -> None:
    fn = {"name": "f", "function": "fake", "instances": 9}
    with pytest.raises(ValueError, match="must not exceed partitions"):
        PipelineSpec.model_validate({"name": "p", "functions": [fn]})


def test_non_string_key() -> None:
    p = only(chain("f1").replace("function: fake,", "function: fake, on: 1,"))
    assert (p.line, p.path) == (4, "functions[0]")
    assert p.message.startswith("keys must be strings")


def test_relative_paths_in_a_config_are_relative_to_the_pipeline_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "local.rules").write_text(
        '# site rules\nalert tcp any any -> any 80 (msg:"web"; content:"GET"; sid:1;)\n'
    )
    (folder / "p.yaml").write_text(
        "name: p\nfunctions:\n  - {name: ids, function: ids, config: {rules_file: local.rules}}\n"
    )
    monkeypatch.chdir(tmp_path)  # not the pipeline's folder
    pipeline = load_pipeline(folder / "p.yaml")
    assert pipeline.functions[0].name == "ids"
    (folder / "local.rules").write_text("alert tcp any any -> any 80 (msg:web; sid:1;\n")
    with pytest.raises(PipelineError) as err:
        load_pipeline(folder / "p.yaml")
    assert "local.rules:1" in str(err.value) and "functions[0].config.rules_file" in str(err.value)
