"""JSON Schema (draft 2020-12) of pipeline files, for editors and other tools.

The schema is derived, never written by hand: from the pydantic models the
loader uses (snf.pipeline.model) and from the Config model of every function type,
plus what those models cannot say themselves: field descriptions, the syntax
of wiring ends, and which `config` goes with which `function`:

    functions[].function   one of the known types (an enum: a typo is flagged)
    functions[].config     checked against that type's Config, through
                           allOf: [{if: {function: T}, then: {config: <T>Config}}]

The loader stays the judge. It also checks what a schema cannot: unique
names, ports and the wiring graph, partition counts, and cross-field rules in
the configs. The schema is stricter in one way: it wants numbers and booleans
as YAML numbers and booleans, where pydantic also accepts "4" for 4.

`python -m snf.pipeline.schema [FILE]` writes the schema of the built-in types (the
one shipped as schemas/pipeline.schema.json) to FILE, or to stdout.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, PydanticUserError

from snf.core.contract import NetworkFunction
from snf.core.registry import BUILTIN, available, get_function
from snf.errors import ConfigError
from snf.pipeline import names
from snf.pipeline.graph import INGRESS
from snf.pipeline.spec import PipelineSpec

__all__ = [
    "DESCRIPTIONS",
    "SCHEMA_DIALECT",
    "SCHEMA_ID",
    "builtin_types",
    "pipeline_schema",
    "registered_types",
    "schema_json",
    "write_schema",
]

log = logging.getLogger("snf.pipeline.schema")

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:snf:schema:pipeline"
_DEFS = "#/$defs/"

# Field descriptions of the pipeline models (snf/pipeline/spec.py), by $defs name.
# A field added there without one here fails tests/unit/test_schema.py.
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "PipelineSpec": {
        "name": "Pipeline name, [a-z][a-z0-9-], at most 48 characters: the first part of "
        "every topic, consumer group and changelog name (snf.<name>.*).",
        "partitions": "Partitions of every function's input topic, unless the function "
        "sets its own.",
        "replication": "Replication factor of the pipeline's topics, unless a function "
        "sets its own (default: the cluster's, min(3, brokers); 1 in a --local run).",
        "ship": "heads (default): topics after ingress carry each plain TCP/UDP packet cut "
        "after its L4 header where no function downstream reads payload, and snf's sink "
        "joins the payload back from ingress; whole: every topic carries whole packets, "
        "for consumers of the pipeline's topics other than snf.",
        "functions": "The functions. Without `wiring` they form a chain in list order: "
        "ingress feeds the first, each `pass` port feeds the next, the last one's feeds "
        "egress.",
        "wiring": "Links from output ports to destinations, instead of the chain: branches, "
        "fan-out, fan-in, egress, discard, external topics. A port no link mentions writes "
        "to its own topic snf.<pipeline>.<function>.<port>.",
        "egress": "Live transmit (docs/LIVE.md): `snf sink` sends every egress packet out "
        "of {interface: IF}, or with {inline: [A, B]} out of the arm it did not come in by.",
    },
    "FunctionSpec": {
        "name": "Function name, [a-z][a-z0-9-], at most 48 characters, unique in the "
        "pipeline; part of its topic names (snf.<pipeline>.<name>.<port>).",
        "function": "Function type: a built-in (firewall, nat, loadbalancer, ratelimit, ids, "
        "flowmon, ipsec) or one a package registers in the `snf.functions` entry-point group.",
        "instances": "Worker processes (consumers) of this function: a fixed count, at most "
        "its partitions, or {min, max, lag_threshold, cooldown} to scale on consumer lag.",
        "partitions": "Partitions of this function's input topic (default: the pipeline's).",
        "replication": "Replication factor of this function's topics and changelogs "
        "(default: the pipeline's).",
        "standby_replicas": "Warm copies of this function's state tables kept on other "
        "workers, for a faster takeover.",
        "processing_guarantee": "exactly_once: a crash neither loses nor repeats an "
        "effect (snf's journal and lineage dedup, docs/FAULT-TOLERANCE.md); "
        "at_least_once: faster, but work since the last commit is redone after a crash.",
        "config": "Settings of the function type, checked against its Config model "
        "(docs/functions/<type>.md).",
    },
    "Autoscale": {
        "min": "Fewest instances; 0 scales to zero when idle (the serverless shape).",
        "max": "Most instances; at most the function's partitions.",
        "lag_threshold": "Messages of input lag per instance the scaler aims at.",
        "cooldown": "Idle seconds before scaling to zero.",
    },
    "EgressSpec": {
        "interface": "A Linux interface (at most 15 characters) every egress packet is sent "
        "out of.",
        "inline": "Two interfaces, the arms of a bump in the wire: `snf capture` takes "
        "both, and a packet leaves by the arm it did not come in by.",
    },
    "LinkSpec": {
        "from": "Where packets come from: `ingress` (the pipeline's input), FN (the pass "
        "port of function FN) or FN.PORT (any packet or record port of FN).",
        "to": "Where they go: FN (another function's input), `egress` (the pipeline's "
        "output), `discard` (counted, not kept) or `topic:NAME` (an external Kafka topic); "
        "or a list of those (fan-out).",
    },
}

_NAME = names.NAME_PATTERN.strip("^$")
_PORT = r"[A-Za-z0-9_-]+"
_TOPIC = r"(?!\.\.?$)[A-Za-z0-9._-]{1,249}"  # Kafka's legal topic names (snf.pipeline.graph)
FROM_PATTERN = rf"^({INGRESS}|{_NAME}(\.{_PORT})?)$"
TO_PATTERN = rf"^(egress|discard|topic:{_TOPIC}|{_NAME})$"


def builtin_types() -> dict[str, type[NetworkFunction]]:
    """The built-in function types (what schemas/pipeline.schema.json covers)."""
    return {kind: get_function(kind) for kind in BUILTIN}


def registered_types() -> dict[str, type[NetworkFunction]]:
    """Built-in and entry-point types; one that fails to load is left out (logged)."""
    types: dict[str, type[NetworkFunction]] = {}
    for kind in available():
        try:
            types[kind] = get_function(kind)
        except (ConfigError, ImportError, AttributeError) as exc:
            log.warning("function type %r left out of the schema: %s", kind, exc)
    return types


def pipeline_schema(types: dict[str, type[NetworkFunction]] | None = None) -> dict[str, Any]:
    """The JSON Schema of pipeline files whose functions are of `types`
    (default: every registered type)."""
    if types is None:
        types = registered_types()
    body = PipelineSpec.model_json_schema(by_alias=True)
    defs: dict[str, Any] = body.setdefault("$defs", {})
    _nullable(body)
    _describe({"PipelineSpec": body, **defs})
    _wiring_syntax(defs["LinkSpec"])
    function = defs["FunctionSpec"]
    if types:
        function["properties"]["function"]["enum"] = sorted(types)
    rules = []
    for kind in sorted(types):
        then = _add_config(defs, kind, types[kind])
        if then is not None:
            test = {"properties": {"function": {"const": kind}}, "required": ["function"]}
            rules.append({"if": test, "then": then})
    if rules:
        function["allOf"] = rules
    header = {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "$comment": "Generated by snf.pipeline.schema.pipeline_schema from the pydantic models; "
        "do not edit.",
        "title": "snf pipeline file",
    }
    body.pop("title", None)
    body["description"] = (
        "A pipeline: network functions and how packets flow between them (docs/PIPELINE-FILE.md)."
    )
    return {**header, **body}


def schema_json(schema: dict[str, Any]) -> str:
    """Sorted keys, 2-space indent, trailing newline: stable diffs."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schema(path: Path, types: dict[str, type[NetworkFunction]] | None = None) -> None:
    """Write pipeline_schema(types) to `path`."""
    path.write_text(schema_json(pipeline_schema(types)), encoding="utf-8")


def _describe(models: dict[str, dict[str, Any]]) -> None:
    for model, fields in DESCRIPTIONS.items():
        props = models[model]["properties"]
        for field, text in fields.items():
            props[field].setdefault("description", text)


def _wiring_syntax(link: dict[str, Any]) -> None:
    props = link["properties"]
    props["from"].update(pattern=FROM_PATTERN, examples=["ingress", "fw", "fw.drop"])
    dest = {"type": "string", "pattern": TO_PATTERN}
    props["to"] = {
        "title": props["to"].get("title", "To"),
        "description": props["to"]["description"],
        "anyOf": [dest, {"type": "array", "items": dest, "minItems": 1}],
        "examples": ["nat", "egress", "discard", "topic:alerts", ["egress", "flows"]],
    }


def _add_config(
    defs: dict[str, Any], kind: str, cls: type[NetworkFunction]
) -> dict[str, Any] | None:
    """Put `kind`'s Config schema in defs as <kind>Config (its nested models as
    <kind>Config.<Model>); return the `then` that applies it (None: no schema)."""
    model = getattr(cls, "Config", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None  # the loader rejects such a type
    try:
        schema = model.model_json_schema(by_alias=True)
    except PydanticUserError as exc:
        log.warning("function type %r: config left unchecked by the schema: %s", kind, exc)
        return None
    key = f"{kind}Config"
    _nullable(schema)
    nested = schema.pop("$defs", {})
    rename = {_DEFS + name: _DEFS + _pointer(f"{key}.{name}") for name in nested}
    defs[key] = _rewrite_refs(schema, rename)
    for name, sub in nested.items():
        defs[f"{key}.{name}"] = _rewrite_refs(sub, rename)
    then: dict[str, Any] = {"properties": {"config": {"$ref": _DEFS + _pointer(key)}}}
    if schema.get("required"):
        then["required"] = ["config"]  # `config` defaults to {}, which would fail
    return then


def _nullable(node: Any) -> None:
    """`anyOf: [{type: T, ...}, {type: null}]` (pydantic's `T | None`) as `type: [T, null]`,
    in place, so that validators report errors in T's value where they are, not
    as "not valid under any of the given schemas" one level up."""
    if isinstance(node, list):
        for item in node:
            _nullable(item)
    if not isinstance(node, dict):
        return
    for value in node.values():
        _nullable(value)
    options = node.get("anyOf")
    if not (isinstance(options, list) and len(options) == 2 and {"type": "null"} in options):
        return
    other = options[0] if options[1] == {"type": "null"} else options[1]
    if isinstance(other.get("type"), str) and not {"enum", "const"} & other.keys():
        del node["anyOf"]
        node.update({**other, "type": [other["type"], "null"]})


def _rewrite_refs(node: Any, rename: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            k: rename.get(v, v) if k == "$ref" else _rewrite_refs(v, rename)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(v, rename) for v in node]
    return node


def _pointer(name: str) -> str:
    """A $defs key as a JSON Pointer token (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = schema_json(pipeline_schema(builtin_types()))
    if args:
        Path(args[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
