"""The JSON Schema of pipeline files (snf.pipeline.schema) against the shipped file,
the example pipelines and the loader."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator

from snf.core.registry import BUILTIN
from snf.pipeline.errors import PipelineError
from snf.pipeline.loader import parse_pipeline
from snf.pipeline.schema import (
    DESCRIPTIONS,
    SCHEMA_DIALECT,
    builtin_types,
    pipeline_schema,
    schema_json,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "schemas" / "pipeline.schema.json"
EXAMPLES = sorted(
    [*ROOT.glob("pipelines/*.yaml"), *ROOT.glob("tests/integration/pipelines/*.yaml")]
)
SCHEMA = pipeline_schema(builtin_types())
VALIDATOR = Draft202012Validator(SCHEMA)


def dotted(path: Any) -> str:
    """A jsonschema error path in the loader's style: functions[0].config.rules[0]."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def schema_problems(text: str) -> dict[str, str]:
    """Field path -> message, for every schema error of a YAML document."""
    data = yaml.safe_load(text)
    return {dotted(e.absolute_path): e.message for e in VALIDATOR.iter_errors(data)}


def loader_problems(text: str) -> list[str]:
    try:
        parse_pipeline(text)
    except PipelineError as exc:
        return [p.path for p in exc.problems]
    return []


def pipeline(*functions: str, extra: str = "") -> str:
    items = "".join(f"  - {f}\n" for f in functions)
    return f"name: p\npartitions: 4\nfunctions:\n{items}{extra}"


def wiring(*links: str) -> str:
    return "wiring:\n" + "".join(f"  - {link}\n" for link in links)


FW = "{name: fw, function: firewall}"
FLOWS = "{name: flows, function: flowmon}"


def test_shipped_schema_is_current() -> None:
    fresh = schema_json(SCHEMA)
    shipped = SHIPPED.read_text(encoding="utf-8") if SHIPPED.is_file() else ""
    assert shipped == fresh, (
        f"{SHIPPED.relative_to(ROOT)} is stale (a pipeline model or a function Config "
        "changed); regenerate it with: .venv/bin/python -m snf.pipeline.schema "
        "schemas/pipeline.schema.json"
    )


def test_schema_is_a_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == SCHEMA_DIALECT
    assert SCHEMA["$id"] and SCHEMA["title"]
    fn = SCHEMA["$defs"]["FunctionSpec"]
    assert fn["properties"]["function"]["enum"] == sorted(BUILTIN)
    tested = [rule["if"]["properties"]["function"]["const"] for rule in fn["allOf"]]
    assert tested == sorted(BUILTIN)


def test_every_pipeline_field_is_described() -> None:
    models = {"PipelineSpec": SCHEMA, **SCHEMA["$defs"]}
    for model in DESCRIPTIONS:
        for field, prop in models[model]["properties"].items():
            assert prop.get("description"), f"{model}.{field} has no description"


def test_examples_are_found() -> None:
    assert ROOT / "pipelines" / "tap.yaml" in EXAMPLES
    assert len(EXAMPLES) >= 9


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_pipelines_validate(path: Path) -> None:
    assert schema_problems(path.read_text(encoding="utf-8")) == {}


# (YAML, the path of the schema error, the path of the loader's problem when it differs)
BAD: dict[str, tuple[str, str, str | None]] = {
    "rule action permit": (
        pipeline("{name: fw, function: firewall, config: {rules: [{action: permit, proto: tcp}]}}"),
        "functions[0].config.rules[0].action",
        None,
    ),
    "instances as a word": (
        pipeline("{name: fw, function: firewall, instances: two}"),
        "functions[0].instances",
        None,
    ),
    "autoscale without max": (
        pipeline("{name: fw, function: firewall, instances: {min: 1}}"),
        "functions[0].instances",
        "functions[0].instances.max",
    ),
    "unknown top-level key": (pipeline(FW, extra="partitons: 8\n"), "", "partitons"),
    "wiring to a number": (
        pipeline(FW, extra=wiring("{from: ingress, to: fw}", "{from: fw, to: 3}")),
        "wiring[1].to",
        None,
    ),
    "wiring to a mapping": (
        pipeline(FW, extra=wiring("{from: ingress, to: {fw: 1}}")),
        "wiring[0].to",
        None,
    ),
    "wiring to an empty list": (
        pipeline(FW, extra=wiring("{from: ingress, to: []}")),
        "wiring[0].to",
        None,
    ),
    "wiring to a bad topic name": (
        pipeline(FW, extra=wiring("{from: ingress, to: fw}", "{from: fw, to: 'topic:a b'}")),
        "wiring[1].to",
        None,
    ),
    "wiring from two dots": (
        pipeline(FW, extra=wiring("{from: ingress, to: fw}", "{from: fw.drop.x, to: egress}")),
        "wiring[1].from",
        None,
    ),
    "unknown function type": (
        pipeline("{name: fw, function: firewal}"),
        "functions[0].function",
        None,
    ),
    "nat without config": (
        pipeline("{name: nat, function: nat}"),
        "functions[0]",
        "functions[0].config.inside",
    ),
    "unknown config key": (
        pipeline("{name: flows, function: flowmon, config: {idle: 5}}"),
        "functions[0].config",
        "functions[0].config.idle",
    ),
    "ratelimit burst zero": (
        pipeline("{name: r, function: ratelimit, config: {rate: 10pps, burst: 0}}"),
        "functions[0].config.burst",
        None,
    ),
    "nat public_ips empty": (
        pipeline("{name: nat, function: nat, config: {inside: 10.0.0.0/8, public_ips: []}}"),
        "functions[0].config.public_ips",
        None,
    ),
    "ids var as a mapping": (
        pipeline("{name: ids, function: ids, config: {vars: {HOME: {a: 1}}, rules: []}}"),
        "functions[0].config.vars.HOME",
        "functions[0].config.vars",
    ),
    "upper-case pipeline name": ("name: Edge\nfunctions: [" + FW + "]\n", "name", None),
    "config is null": (
        pipeline("{name: fw, function: firewall, config: null}"),
        "functions[0].config",
        None,
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_files_are_rejected_at_the_right_place(case: str) -> None:
    text, where, loader_where = BAD[case]
    found = schema_problems(text)
    assert where in found, f"schema errors: {found}"
    assert (loader_where or where) in loader_problems(text)


def test_unknown_key_error_names_the_key() -> None:
    found = schema_problems(pipeline(FW, extra="partitons: 8\n"))
    assert "'partitons' was unexpected" in found[""]


GOOD: dict[str, str] = {
    "one function": pipeline(FW),
    "chain with overrides": pipeline(
        "{name: fw, function: firewall, instances: 2, partitions: 8, replication: 1,"
        " standby_replicas: 1, processing_guarantee: at_least_once}",
        FLOWS,
    ),
    "autoscale": pipeline(
        "{name: fw, function: firewall, instances: {min: 0, max: 4, cooldown: 30}}"
    ),
    "wiring null is the chain": pipeline(FW, FLOWS, extra="wiring: null\n"),
    "graph": pipeline(
        FW,
        FLOWS,
        "{name: ids, function: ids, config: {rules: []}}",
        extra=wiring(
            "{from: ingress, to: fw}",
            "{from: fw.pass, to: [egress, flows]}",  # fan-out
            "{from: fw.drop, to: ids}",  # a branch
            "{from: ids, to: discard}",
            "{from: ids.alerts, to: 'topic:fw-alerts'}",
        ),
    ),
    "nat": pipeline(
        "{name: nat, function: nat, config: {inside: [10.0.0.0/8], public_ips: [192.0.2.1],"
        " port_forwards: [{proto: tcp, public: '192.0.2.1:80', inside: '10.0.0.5:8080'}]}}"
    ),
    "ratelimit mark": pipeline(
        "{name: r, function: ratelimit, config: {rate: 1Mbps, burst: 1500, action: mark, dscp: 8}}"
    ),
}


@pytest.mark.parametrize("case", GOOD)
def test_good_samples_pass_both(case: str) -> None:
    assert schema_problems(GOOD[case]) == {}
    assert loader_problems(GOOD[case]) == []


def test_schema_is_stricter_about_quoted_numbers_and_booleans() -> None:
    # pydantic's lax mode coerces "2" and true to ints; the schema asks for a number.
    for value in ('"2"', "true"):
        text = pipeline(f"{{name: fw, function: firewall, instances: {value}}}")
        assert "functions[0].instances" in schema_problems(text)
        assert loader_problems(text) == []


# A before-validator in the function's Config widens what its field type says;
# the annotation carries the wider JSON Schema (snf.core.cidr.OneOrMany, ids'
# vars), so an editor accepts what the loader accepts.
WIDER_THAN_ANNOTATED = {
    "nat inside and public_ips as one string": pipeline(
        "{name: nat, function: nat, config: {inside: 10.0.0.0/8, public_ips: 192.0.2.1}}"
    ),
    "ids vars as numbers and lists": pipeline(
        "{name: ids, function: ids, config: {vars: {HTTP_PORTS: [80, 8080], DNS: 53}, rules: []}}"
    ),
}


@pytest.mark.parametrize("case", WIDER_THAN_ANNOTATED)
def test_schema_accepts_what_before_validators_accept(case: str) -> None:
    text = WIDER_THAN_ANNOTATED[case]
    assert loader_problems(text) == []
    assert schema_problems(text) == {}


def test_config_schemas_keep_their_nested_models_apart() -> None:
    defs = SCHEMA["$defs"]
    rules = defs["firewallConfig"]["properties"]["rules"]
    assert rules["items"] == {"$ref": "#/$defs/firewallConfig.FirewallRule"}
    refs = {m for m in json.dumps(SCHEMA).split('"') if m.startswith("#/$defs/")}
    assert {r.removeprefix("#/$defs/") for r in refs} <= set(defs)


# Keywords newer than draft-07, which editors built on draft-07 (VS Code's YAML
# extension) would ignore: the schema must not need them.
NEWER_THAN_DRAFT_7 = {
    "$anchor",
    "$dynamicAnchor",
    "$dynamicRef",
    "$recursiveAnchor",
    "$recursiveRef",
    "dependentRequired",
    "dependentSchemas",
    "maxContains",
    "minContains",
    "prefixItems",
    "unevaluatedItems",
    "unevaluatedProperties",
}


def keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from keys(v)
    elif isinstance(node, list):
        for v in node:
            yield from keys(v)


def test_draft_7_tools_reach_the_same_verdicts() -> None:
    assert not NEWER_THAN_DRAFT_7 & set(keys(SCHEMA))
    draft7 = Draft7Validator(SCHEMA)
    texts = [p.read_text(encoding="utf-8") for p in EXAMPLES]
    texts += [*GOOD.values(), *(text for text, _, _ in BAD.values())]
    for text in texts:
        data = yaml.safe_load(text)
        assert draft7.is_valid(data) == VALIDATOR.is_valid(data), text


def doc_pipelines() -> list[str]:
    text = (ROOT / "docs" / "PIPELINE-FILE.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    return [b for b in blocks if re.search(r"^functions:", b, re.M)]


def test_documented_pipelines_are_valid() -> None:
    checked = 0
    for text in doc_pipelines():
        kinds = {f["function"] for f in yaml.safe_load(text)["functions"]}
        if kinds <= set(BUILTIN):  # the plugin's example is tests/unit/test_plugins.py's
            assert schema_problems(text) == {}, text
            assert loader_problems(text) == [], text
            checked += 1
    assert checked >= 2
