"""Pipeline files: load one, validate all of it, derive its Kafka wiring.

A pipeline is a graph of functions (snf.topology): packets enter on the
ingress topic, links connect output ports to functions, egress, discard or
external topics, and every unlinked port gets a topic of its own. Without
`wiring`, the functions form a chain. Per-function settings (instances,
partitions, replication, standby replicas, processing guarantee) default to
the pipeline's.

Loading checks the YAML, the schema, every function type and every function
config before it returns, and raises all problems together as one
PipelineError, one line each: "file:line: field.path: what was expected".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from snf import names
from snf.collect import EGRESS, PortKey
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
from snf.state import CONTROL_TABLE, STATE_TABLE
from snf.topology import INGRESS, Dest, Graph, Link, build_graph

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


Guarantee = Literal["at_least_once", "exactly_once"]


class Autoscale(BaseModel):
    """`instances: {min, max}`: scaled on consumer lag (snf deploy --autoscale, KEDA)."""

    model_config = ConfigDict(extra="forbid")

    min: int = Field(default=0, ge=0)  # 0: scale to zero when idle (the serverless shape)
    max: int = Field(ge=1)  # at most the function's partitions
    lag_threshold: int = Field(default=10, ge=1)  # messages of input lag per instance
    cooldown: float = Field(default=60.0, gt=0)  # idle seconds before scaling to zero

    @model_validator(mode="after")
    def _ordered(self) -> Autoscale:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class FunctionSpec(BaseModel):
    """One function, as written in the file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=names.NAME_PATTERN)  # unique in the pipeline; part of topic names
    function: str  # registry type name, e.g. "firewall"
    instances: Annotated[int, Field(ge=1)] | Autoscale = 1  # consumers; at most partitions
    partitions: int | None = Field(default=None, ge=1, le=1024)  # of its input (pipeline's)
    replication: int | None = Field(default=None, ge=1, le=16)  # of its topics (pipeline's)
    standby_replicas: int = Field(default=0, ge=0, le=8)  # warm table copies on other workers
    # exactly_once: snf's journal and lineage dedup (docs/FAULT-TOLERANCE.md), not
    # Faust's transactions; at_least_once: without them (redo after a crash).
    processing_guarantee: Guarantee = "exactly_once"
    config: dict[str, Any] = Field(default_factory=dict)  # checked against the type's Config


class LinkSpec(BaseModel):
    """`from: FN.PORT` (or `ingress`, or `FN` for FN.pass) `to:` destinations."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    source: str = Field(alias="from")
    to: str | list[str] = Field(min_length=1)  # FN, egress, discard or topic:NAME


class PipelineSpec(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=names.NAME_PATTERN)  # first part of every derived name
    partitions: int = Field(default=4, ge=1, le=1024)  # default of every function
    replication: int = Field(default=1, ge=1, le=16)  # topic replication factor (default)
    functions: list[FunctionSpec] = Field(min_length=1)  # a chain unless `wiring` is given
    wiring: list[LinkSpec] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check_functions(self) -> PipelineSpec:
        conflicts = spec_conflicts(self)
        if conflicts:
            # One error can carry several exact locations; the loader unpacks them.
            summary = "; ".join(f"{dotted(loc)}: {msg}" for loc, msg in conflicts)
            ctx = {"summary": summary, "conflicts": conflicts}
            raise PydanticCustomError("pipeline_conflict", "{summary}", ctx)
        return self


def spec_conflicts(spec: PipelineSpec) -> list[tuple[Loc, str]]:
    """Cross-field problems: duplicate function names, instances above partitions."""
    found: list[tuple[Loc, str]] = []
    first: dict[str, int] = {}
    for i, fn in enumerate(spec.functions):
        if fn.name in first:
            msg = (
                f"duplicate function name {fn.name!r} (already used by functions[{first[fn.name]}])"
            )
            found.append((("functions", i, "name"), msg))
        first.setdefault(fn.name, i)
        n = fn.partitions or spec.partitions
        if isinstance(fn.instances, Autoscale) and fn.instances.max > n:
            msg = f"max ({fn.instances.max}) must not exceed partitions ({n})"
            found.append((("functions", i, "instances", "max"), msg))
        elif isinstance(fn.instances, int) and fn.instances > n:
            msg = f"instances ({fn.instances}) must not exceed partitions ({n})"
            found.append((("functions", i, "instances"), msg))
    return found


@dataclass(frozen=True)
class TopicSpec:
    partitions: int
    replication: int
    configs: dict[str, str] = dataclasses.field(default_factory=dict)


def topic_configs(replication: int, compact: bool = False) -> dict[str, str]:
    """Kafka's usual durability pairing: with 3 replicas, a write needs 2."""
    configs = {"min.insync.replicas": str(max(1, replication - 1))}
    if compact:
        configs["cleanup.policy"] = "compact"
    return configs


@dataclass(frozen=True)
class Layout:
    """What every function needs to know about the others (name-independent)."""

    entry: str
    partitions: dict[str, int]  # function -> partitions of its input
    egress_partitions: int
    external: dict[str, int]  # topic:NAME destinations -> partitions
    private: bool = False  # a one-shot run: topic:NAME becomes snf.<run>.topic.NAME


@dataclass(frozen=True)
class Route:
    """One destination of one output port, resolved to a topic."""

    dest: Dest
    topic: str | None  # None: discard
    partitions: int  # of that topic


@dataclass(frozen=True)
class PipelineFunction:
    """A validated function with its class, its config model and its derived wiring."""

    pipeline: str
    name: str
    kind: str
    spec: FunctionSpec
    cls: type[NetworkFunction]
    config: FunctionConfig
    outputs: dict[str, tuple[Dest, ...]]  # port -> destinations
    inputs: tuple[tuple[str, str], ...]  # upstream (function, port); () for the entry
    layout: Layout
    replication: int

    @property
    def partitions(self) -> int:
        return self.layout.partitions[self.name]

    @property
    def autoscaled(self) -> bool:
        return isinstance(self.spec.instances, Autoscale)

    @property
    def instances(self) -> int:
        """Instances to start with: the fixed count, or max(min, 1) when autoscaled."""
        s = self.spec.instances
        return s if isinstance(s, int) else max(s.min, 1)

    @property
    def min_instances(self) -> int:
        s = self.spec.instances
        return s if isinstance(s, int) else s.min

    @property
    def max_instances(self) -> int:
        s = self.spec.instances
        return s if isinstance(s, int) else s.max

    @property
    def lag_threshold(self) -> int:
        s = self.spec.instances
        return 10 if isinstance(s, int) else s.lag_threshold

    @property
    def cooldown(self) -> float:
        s = self.spec.instances
        return 60.0 if isinstance(s, int) else s.cooldown

    @property
    def standby_replicas(self) -> int:
        return self.spec.standby_replicas

    @property
    def processing_guarantee(self) -> str:
        return self.spec.processing_guarantee

    @property
    def journaled(self) -> bool:
        """Whether its worker journals events and dedups by lineage (snf.journal)."""
        return self.spec.processing_guarantee == "exactly_once"

    @property
    def entry(self) -> bool:
        return self.layout.entry == self.name

    @property
    def input_topic(self) -> str:
        if self.entry:
            return names.ingress_topic(self.pipeline)
        return names.input_topic(self.pipeline, self.name)

    def route(self, port: str, dest: Dest) -> Route:
        lay = self.layout
        if dest.kind == "function":
            topic = names.input_topic(self.pipeline, dest.target)
            return Route(dest, topic, lay.partitions[dest.target])
        if dest.kind == "egress":
            return Route(dest, names.egress_topic(self.pipeline), lay.egress_partitions)
        if dest.kind == "topic":
            topic = names.private_topic(self.pipeline, dest.target) if lay.private else dest.target
            return Route(dest, topic, lay.external[dest.target])
        if dest.kind == "port":
            return Route(dest, names.port_topic(self.pipeline, self.name, port), self.partitions)
        return Route(dest, None, 0)

    @property
    def routes(self) -> dict[str, tuple[Route, ...]]:
        """Output port -> resolved destinations: packet ports, then record ports."""
        return {port: tuple(self.route(port, d) for d in ds) for port, ds in self.outputs.items()}

    @property
    def port_topics(self) -> dict[str, str]:
        """Port -> topic, for ports with exactly one destination topic (tests, docs)."""
        out = {}
        for port, routes in self.routes.items():
            topics = [r.topic for r in routes if r.topic]
            if len(topics) == 1:
                out[port] = topics[0]
        return out

    def terminal_key(self, port: str, dest: Dest) -> PortKey | None:
        """How the sink names what this port writes to a terminal (None: not a terminal)."""
        if dest.kind == "egress":
            return EGRESS
        if dest.kind == "port":
            return (self.name, port)
        if dest.kind == "topic":
            return ("topic", dest.target)
        return None

    @property
    def state_tables(self) -> tuple[str, ...]:
        """The core's tables plus the engine's control table."""
        return (*self.cls.tables, CONTROL_TABLE)

    @property
    def group_id(self) -> str:
        return names.group_id(self.pipeline, self.name)

    @property
    def changelog_topics(self) -> dict[str, str]:
        """Faust table -> changelog topic (created before the workers start). All the
        core's tables share one Faust table, so that one changelog orders them."""
        return {STATE_TABLE: names.changelog_topic(self.pipeline, self.name, STATE_TABLE)}

    def create(self, partitions: int | None = None) -> NetworkFunction:
        fn = self.cls(self.config)
        fn.partitions = partitions or self.partitions
        return fn


@dataclass(frozen=True)
class Pipeline:
    spec: PipelineSpec
    path: Path | None
    functions: list[PipelineFunction]
    graph: Graph

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def partitions(self) -> int:
        """Partitions of ingress (the entry function's)."""
        return self.function(self.graph.entry).partitions

    def function(self, name: str) -> PipelineFunction:
        for fn in self.functions:
            if fn.name == name:
                return fn
        known = ", ".join(fn.name for fn in self.functions)
        raise ConfigError(f"pipeline {self.name!r} has no function {name!r}; it has: {known}")

    @property
    def ingress_topic(self) -> str:
        return names.ingress_topic(self.name)

    def ordered(self) -> list[PipelineFunction]:
        """Functions in topological order (upstream first)."""
        return [self.function(n) for n in self.graph.order]

    def renamed(self, name: str, private: bool = False) -> Pipeline:
        """The same pipeline under another instance name (e.g. one per `snf run`);
        `private` also gives its external topics names of their own."""
        spec = self.spec.model_copy(update={"name": name})
        fns = [
            dataclasses.replace(
                fn,
                pipeline=name,
                layout=dataclasses.replace(fn.layout, private=private or fn.layout.private),
            )
            for fn in self.functions
        ]
        return Pipeline(spec, self.path, fns, self.graph)

    def terminals(self) -> dict[str, list[tuple[PipelineFunction, str, Route]]]:
        """Terminal topic -> its writers (function, port, route), in declaration order."""
        out: dict[str, list[tuple[PipelineFunction, str, Route]]] = {}
        for fn in self.functions:
            for port, routes in fn.routes.items():
                for r in routes:
                    if r.topic and r.dest.kind != "function":
                        out.setdefault(r.topic, []).append((fn, port, r))
        return out

    def sink_topics(self) -> dict[str, PortKey]:
        """Terminal topics -> the name the sink files them under."""
        out: dict[str, PortKey] = {}
        for topic, writers in self.terminals().items():
            fn, port, r = writers[0]
            key = fn.terminal_key(port, r.dest)
            assert key is not None
            out[topic] = key
        return out

    def record_topics(self) -> set[str]:
        """Terminal topics that carry JSON records rather than packets."""
        return {
            topic
            for topic, writers in self.terminals().items()
            if any(port in fn.cls.record_ports for fn, port, _ in writers)
        }

    def terminal_ends(self) -> dict[str, list[int]]:
        """Terminal topic -> per partition, the distinct end markers of one flush.

        Writer partition p ends partition p % T of a terminal topic with T
        partitions, once per topic however many of its ports write there.
        """
        ends: dict[str, list[int]] = {}
        for topic, writers in self.terminals().items():
            t = writers[0][2].partitions
            counts = [0] * t
            for n in {fn.name: fn.partitions for fn, _, _ in writers}.values():
                for p in range(n):
                    counts[p % t] += 1
            ends[topic] = counts
        return ends

    def topic_specs(self) -> dict[str, TopicSpec]:
        """Every topic to create before starting, changelogs included."""
        specs: dict[str, TopicSpec] = {}
        rep = self.spec.replication
        entry = self.function(self.graph.entry)
        specs[self.ingress_topic] = TopicSpec(
            entry.partitions, entry.replication, topic_configs(entry.replication)
        )
        for fn in self.functions:
            if not fn.entry:
                specs[fn.input_topic] = TopicSpec(
                    fn.partitions, fn.replication, topic_configs(fn.replication)
                )
            for routes in fn.routes.values():
                for r in routes:
                    if r.topic and r.topic not in specs:
                        n = fn.replication if r.dest.kind == "port" else rep
                        specs[r.topic] = TopicSpec(r.partitions, n, topic_configs(n))
            for topic in fn.changelog_topics.values():
                specs[topic] = TopicSpec(
                    fn.partitions, fn.replication, topic_configs(fn.replication, compact=True)
                )
        return specs

    def topics(self) -> dict[str, int]:
        """Every data topic (not changelogs) with its partition count."""
        changelogs = self.changelog_topics()
        return {t: s.partitions for t, s in self.topic_specs().items() if t not in changelogs}

    def changelog_topics(self) -> dict[str, int]:
        """Changelogs, co-partitioned with their function's input topic."""
        return {
            topic: fn.partitions for fn in self.functions for topic in fn.changelog_topics.values()
        }


def load_pipeline(path: str | Path, base_dir: Path | None = None) -> Pipeline:
    """Load and validate a file; relative paths in configs resolve against
    `base_dir` (default: the file's directory)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read pipeline file: {exc}") from exc
    return _build(text, str(path), path, base_dir)


def parse_pipeline(text: str, source: str = "<string>") -> Pipeline:
    return _build(text, source, None)


def _build(text: str, source: str, path: Path | None, base_dir: Path | None = None) -> Pipeline:
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
    if base_dir is None:
        base_dir = path.parent if path is not None else Path.cwd()
    wired = isinstance(data, dict) and "wiring" in data
    steps = [
        _check_function(report, i, item, len(raw), base_dir, wired) for i, item in enumerate(raw)
    ]
    if report.problems or spec is None:
        raise PipelineError(sorted(report.problems, key=lambda p: p.line))

    classes = {fn.name: step[0] for fn, step in zip(spec.functions, steps, strict=True) if step}
    conflicts: list[tuple[Loc, str]] = []
    graph = build_graph(_links(spec, classes), _ports(classes), conflicts)
    for loc, msg in conflicts:
        report.add(loc, msg)
    _check_partitions(report, spec, steps)
    if report.problems or graph is None:
        raise PipelineError(sorted(report.problems, key=lambda p: p.line))

    parts = {fn.name: fn.partitions or spec.partitions for fn in spec.functions}
    external: dict[str, int] = {}
    for fn_name, by_port in graph.outputs.items():
        for dests in by_port.values():
            for d in dests:
                if d.kind == "topic":
                    external[d.target] = max(external.get(d.target, 0), parts[fn_name])
    layout = Layout(graph.entry, parts, spec.partitions, external)
    functions = []
    for fn, step in zip(spec.functions, steps, strict=True):
        assert step is not None  # any failure added a problem above
        cls, config = step
        functions.append(
            PipelineFunction(
                spec.name,
                fn.name,
                fn.function,
                fn,
                cls,
                config,
                graph.outputs[fn.name],
                tuple(graph.inputs[fn.name]),
                layout,
                fn.replication or spec.replication,
            )
        )
    return Pipeline(spec, path, functions, graph)


def _ports(
    classes: dict[str, type[NetworkFunction]],
) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    return {name: (cls.ports, cls.record_ports) for name, cls in classes.items()}


def _links(spec: PipelineSpec, classes: dict[str, type[NetworkFunction]]) -> list[Link]:
    if spec.wiring is not None:
        return [
            Link(w.source, (w.to,) if isinstance(w.to, str) else tuple(w.to), ("wiring", i))
            for i, w in enumerate(spec.wiring)
        ]
    # The chain shorthand: ingress -> first, each pass -> next, the last pass -> egress.
    fns = [f.name for f in spec.functions]
    links = [Link(INGRESS, (fns[0],), ("functions", 0, "name"))]
    for i, name in enumerate(fns):
        if name in classes and "pass" in classes[name].ports:
            to = fns[i + 1] if i + 1 < len(fns) else "egress"
            links.append(Link(f"{name}.pass", (to,), ("functions", i, "name")))
    return links


def _check_partitions(
    report: Report,
    spec: PipelineSpec,
    steps: list[tuple[type[NetworkFunction], FunctionConfig] | None],
) -> None:
    """Partition counts each function's partitioning scheme accepts."""
    for i, (fn, step) in enumerate(zip(spec.functions, steps, strict=True)):
        if step is None:
            continue
        n = fn.partitions or spec.partitions
        problem = step[0](step[1]).partition_problem(n)
        if problem:
            where = "partitions" if fn.partitions else None
            loc: Loc = ("functions", i, where) if where else ("partitions",)
            report.add(loc, f"{fn.name}: {problem}")


def _check_function(
    report: Report, i: int, item: Any, count: int, base_dir: Path, wired: bool
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
    elif i < count - 1 and "pass" not in cls.ports and not wired:
        problem = f"{kind!r} has no 'pass' port (ports: {', '.join(cls.ports)}), so it must be last"
    elif "in" in (*cls.ports, *cls.record_ports):
        problem = f"{kind!r} declares a port named 'in', which names input topics"
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
