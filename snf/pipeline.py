"""Pipeline files: load one, validate all of it, derive its Kafka wiring.

A pipeline is a chain of functions. Packets enter on the ingress topic, each
function's `pass` port feeds the next function, and the last `pass` port is
the egress topic; every other port gets a topic of its own (see snf.names).

Loading checks the YAML, the schema, every function type and every function
config before it returns, and raises all problems together as one
PipelineError, one line each: "file:line: field.path: what was expected".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from snf import names
from snf.collect import EGRESS
from snf.errors import ConfigError
from snf.function import FunctionConfig, NetworkFunction
from snf.pipeline_errors import (
    Loc,
    PipelineError,
    Problem,
    Report,
    YamlLoader,
    dotted,
    find_loc,
    yaml_problem,
)
from snf.registry import get_function
from snf.state import CONTROL_TABLE

__all__ = [
    "FunctionSpec",
    "Pipeline",
    "PipelineError",
    "PipelineFunction",
    "PipelineSpec",
    "Problem",
    "load_pipeline",
    "parse_pipeline",
    "spec_conflicts",
]


class FunctionSpec(BaseModel):
    """One step of the chain, as written in the file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=names.NAME_PATTERN)  # unique in the pipeline; part of topic names
    function: str  # registry type name, e.g. "firewall"
    instances: int = Field(default=1, ge=1)  # consumers in the group; at most `partitions`
    config: dict[str, Any] = Field(default_factory=dict)  # checked against the type's Config


class PipelineSpec(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=names.NAME_PATTERN)  # first part of every derived name
    partitions: int = Field(default=4, ge=1, le=1024)  # of every topic the pipeline creates
    functions: list[FunctionSpec] = Field(min_length=1)  # chained in list order

    @model_validator(mode="after")
    def _check_chain(self) -> PipelineSpec:
        conflicts = spec_conflicts(self)
        if conflicts:
            # One error can carry several exact locations; the loader unpacks them.
            summary = "; ".join(f"{dotted(loc)}: {msg}" for loc, msg in conflicts)
            ctx = {"summary": summary, "conflicts": conflicts}
            raise PydanticCustomError("pipeline_conflict", "{summary}", ctx)
        return self


def spec_conflicts(spec: PipelineSpec) -> list[tuple[Loc, str]]:
    """Cross-field problems: duplicate function names, instances > partitions."""
    found: list[tuple[Loc, str]] = []
    first: dict[str, int] = {}
    for i, fn in enumerate(spec.functions):
        if fn.name in first:
            msg = (
                f"duplicate function name {fn.name!r} (already used by functions[{first[fn.name]}])"
            )
            found.append((("functions", i, "name"), msg))
        first.setdefault(fn.name, i)
        if fn.instances > spec.partitions:
            msg = f"instances ({fn.instances}) must not exceed partitions ({spec.partitions})"
            found.append((("functions", i, "instances"), msg))
    return found


@dataclass(frozen=True)
class PipelineFunction:
    """A validated step with its class, its config model and its derived wiring."""

    pipeline: str
    name: str
    kind: str
    instances: int
    cls: type[NetworkFunction]
    config: FunctionConfig
    upstream: str | None  # previous function's name; None means it reads ingress
    last: bool  # its `pass` port is the egress topic

    @property
    def input_topic(self) -> str:
        if self.upstream is None:
            return names.ingress_topic(self.pipeline)
        return names.port_topic(self.pipeline, self.upstream, "pass")

    @property
    def port_topics(self) -> dict[str, str]:
        """Output port -> topic: packet ports in declared order, then record ports."""
        return {
            port: names.egress_topic(self.pipeline)
            if self.last and port == "pass"
            else names.port_topic(self.pipeline, self.name, port)
            for port in (*self.cls.ports, *self.cls.record_ports)
        }

    @property
    def state_tables(self) -> tuple[str, ...]:
        """The core's tables plus the engine's control table."""
        return (*self.cls.tables, CONTROL_TABLE)

    @property
    def group_id(self) -> str:
        return names.group_id(self.pipeline, self.name)

    @property
    def changelog_topics(self) -> dict[str, str]:
        """State table -> changelog topic (Faust creates these itself)."""
        return {t: names.changelog_topic(self.pipeline, self.name, t) for t in self.state_tables}

    def create(self, partitions: int) -> NetworkFunction:
        fn = self.cls(self.config)
        fn.partitions = partitions
        return fn


@dataclass(frozen=True)
class Pipeline:
    spec: PipelineSpec
    path: Path | None
    functions: list[PipelineFunction]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def partitions(self) -> int:
        return self.spec.partitions

    def function(self, name: str) -> PipelineFunction:
        for fn in self.functions:
            if fn.name == name:
                return fn
        known = ", ".join(fn.name for fn in self.functions)
        raise ConfigError(f"pipeline {self.name!r} has no function {name!r}; it has: {known}")

    @property
    def ingress_topic(self) -> str:
        return names.ingress_topic(self.name)

    def renamed(self, name: str) -> Pipeline:
        """The same pipeline under another instance name (e.g. one per `snf run`)."""
        spec = self.spec.model_copy(update={"name": name})
        return Pipeline(
            spec, self.path, [dataclasses.replace(fn, pipeline=name) for fn in self.functions]
        )

    def record_topics(self) -> set[str]:
        """The terminal topics that carry JSON records rather than packets."""
        return {fn.port_topics[port] for fn in self.functions for port in fn.cls.record_ports}

    def sink_topics(self) -> dict[str, tuple[str, str]]:
        """Terminal topics -> (function, port): egress plus every side and record port."""
        out: dict[str, tuple[str, str]] = {names.egress_topic(self.name): EGRESS}
        for fn in self.functions:
            for port, topic in fn.port_topics.items():
                if port != "pass":
                    out[topic] = (fn.name, port)
        return out

    def topics(self) -> dict[str, int]:
        """Every topic to create before starting, with its partition count."""
        topics = {names.ingress_topic(self.name): self.partitions}
        for fn in self.functions:
            topics.update(dict.fromkeys(fn.port_topics.values(), self.partitions))
        return topics

    def changelog_topics(self) -> dict[str, int]:
        """Changelogs Faust will create, co-partitioned with the input topics."""
        return {
            topic: self.partitions
            for fn in self.functions
            for topic in fn.changelog_topics.values()
        }


def load_pipeline(path: str | Path) -> Pipeline:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read pipeline file: {exc}") from exc
    return _build(text, str(path), path)


def parse_pipeline(text: str, source: str = "<string>") -> Pipeline:
    return _build(text, source, None)


def _build(text: str, source: str, path: Path | None) -> Pipeline:
    loader = YamlLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise PipelineError([yaml_problem(source, exc)]) from None
    finally:
        loader.dispose()
    if root is None:
        raise PipelineError([Problem(source, 1, "", "empty file; expected a pipeline mapping")])

    report = Report(source, root)
    for mapping, first, dup in loader.duplicates:
        loc = (*(find_loc(root, mapping) or ()), dup.value)
        msg = f"duplicate key (first at line {first.start_mark.line + 1})"
        report.problems.append(Problem(source, dup.start_mark.line + 1, dotted(loc), msg))
    spec: PipelineSpec | None = None
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        report.add_validation(exc, PipelineSpec)
    # Check each function on the raw data too, so its problems show even if the spec fails.
    raw = data.get("functions") if isinstance(data, dict) else None
    raw = raw if isinstance(raw, list) else []
    base_dir = path.parent if path is not None else Path.cwd()
    steps = [_check_function(report, i, item, len(raw), base_dir) for i, item in enumerate(raw)]
    if report.problems or spec is None:
        raise PipelineError(sorted(report.problems, key=lambda p: p.line))

    functions = []
    for i, (fn, step) in enumerate(zip(spec.functions, steps, strict=True)):
        assert step is not None  # any failure added a problem above
        upstream = spec.functions[i - 1].name if i else None
        last = i == len(spec.functions) - 1
        cls, config = step
        functions.append(
            PipelineFunction(
                spec.name, fn.name, fn.function, fn.instances, cls, config, upstream, last
            )
        )
    return Pipeline(spec, path, functions)


def _check_function(
    report: Report, i: int, item: Any, count: int, base_dir: Path
) -> tuple[type[NetworkFunction], FunctionConfig] | None:
    if not isinstance(item, dict) or not isinstance(item.get("function"), str):
        return None  # the schema errors already say why
    loc: Loc = ("functions", i)
    kind = item["function"]
    try:
        cls = get_function(kind)
    except ConfigError as exc:
        report.add((*loc, "function"), str(exc))
        return None
    except (ImportError, AttributeError) as exc:  # a registered module that fails to import
        report.add((*loc, "function"), f"cannot load function type {kind!r}: {exc}")
        return None
    model = getattr(cls, "Config", None)
    problem = None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        problem = f"{cls.__name__} has no pydantic Config model"
    elif i < count - 1 and "pass" not in cls.ports:
        problem = f"{kind!r} has no 'pass' port (ports: {', '.join(cls.ports)}), so it must be last"
    if problem:
        report.add((*loc, "function"), problem)
        return None
    raw_config = item.get("config", {})
    if not isinstance(raw_config, dict):
        return None  # the schema errors already say why
    try:
        # Relative paths in a config (e.g. an IDS rules_file) are relative to the file.
        context = {"base_dir": base_dir}
        return cls, model.model_validate(raw_config, context=context)
    except ValidationError as exc:
        report.add_validation(exc, model, (*loc, "config"))
        return None
