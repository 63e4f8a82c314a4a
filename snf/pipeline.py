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
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from snf import names
from snf.errors import ConfigError
from snf.function import FunctionConfig, NetworkFunction
from snf.registry import get_function

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

Loc = tuple[str | int, ...]


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
            summary = "; ".join(f"{_dotted(loc)}: {msg}" for loc, msg in conflicts)
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
        """Output port -> topic, in the order the class declares its ports."""
        return {
            port: names.egress_topic(self.pipeline)
            if self.last and port == "pass"
            else names.port_topic(self.pipeline, self.name, port)
            for port in self.cls.ports
        }

    @property
    def group_id(self) -> str:
        return names.group_id(self.pipeline, self.name)

    @property
    def changelog_topics(self) -> dict[str, str]:
        """State table -> changelog topic (Faust creates these itself)."""
        return {t: names.changelog_topic(self.pipeline, self.name, t) for t in self.cls.tables}

    def create(self) -> NetworkFunction:
        return self.cls(self.config)


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

    def sink_topics(self) -> dict[str, tuple[str, str]]:
        """Terminal topics -> (function, port): egress plus every side port."""
        out: dict[str, tuple[str, str]] = {names.egress_topic(self.name): ("", "egress")}
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


@dataclass(frozen=True)
class Problem:
    file: str
    line: int  # 1-based
    path: str  # e.g. "functions[0].config.rules[0].action"; "" for the whole file
    message: str

    def __str__(self) -> str:
        path = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}: {path}{self.message}"


class PipelineError(ConfigError):
    """Everything wrong with one pipeline file; `problems` keeps it structured."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def load_pipeline(path: str | Path) -> Pipeline:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read pipeline file: {exc}") from exc
    return _build(text, str(path), path)


def parse_pipeline(text: str, source: str = "<string>") -> Pipeline:
    return _build(text, source, None)


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys; plain YAML keeps the last silently."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[yaml.MappingNode, yaml.Node, yaml.Node]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key, _ in node.value:  # before merge keys (<<) are flattened in
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in seen:
                    self.duplicates.append((node, seen[(key.tag, key.value)], key))
                seen.setdefault((key.tag, key.value), key)
        return super().construct_mapping(node, deep)


def _build(text: str, source: str, path: Path | None) -> Pipeline:
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise PipelineError([_yaml_problem(source, exc)]) from None
    finally:
        loader.dispose()
    if root is None:
        raise PipelineError([Problem(source, 1, "", "empty file; expected a pipeline mapping")])

    report = _Report(source, root)
    for mapping, first, dup in loader.duplicates:
        loc = (*(_find(root, mapping) or ()), dup.value)
        msg = f"duplicate key (first at line {first.start_mark.line + 1})"
        report.problems.append(Problem(source, dup.start_mark.line + 1, _dotted(loc), msg))
    spec: PipelineSpec | None = None
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        report.add_validation(exc, PipelineSpec)
    # Check each function on the raw data too, so its problems show even if the spec fails.
    raw = data.get("functions") if isinstance(data, dict) else None
    raw = raw if isinstance(raw, list) else []
    steps = [_check_function(report, i, item, len(raw)) for i, item in enumerate(raw)]
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
    report: _Report, i: int, item: Any, count: int
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
        return cls, model.model_validate(raw_config)
    except ValidationError as exc:
        report.add_validation(exc, model, (*loc, "config"))
        return None


class _Report:
    """Collects problems, placing each on the line of its YAML node."""

    def __init__(self, source: str, root: yaml.Node) -> None:
        self.source, self.root = source, root
        self.problems: list[Problem] = []

    def add(self, loc: Loc, message: str) -> None:
        line, _ = _locate(self.root, loc)
        self.problems.append(Problem(self.source, line, _dotted(loc), message))

    def add_validation(
        self, exc: ValidationError, model: type[BaseModel], prefix: Loc = ()
    ) -> None:
        # Union members each report an error on the same node; merge them into one line.
        grouped: dict[tuple[int, str], list[tuple[str, str]]] = {}
        for err in exc.errors(include_url=False):
            if err["type"] == "pipeline_conflict":
                for loc, msg in err["ctx"]["conflicts"]:
                    self.add((*prefix, *err["loc"], *loc), msg)
                continue
            loc = (*prefix, *err["loc"])
            if err["type"] == "invalid_key":
                loc = loc[:-1]  # its last part is the bad key itself; report on the mapping
            line, depth = _locate(self.root, loc)
            shown = loc[:depth]
            if err["type"] in ("missing", "extra_forbidden"):
                # Name the absent fields, but not union member tags such as "list[Rule]".
                shown += tuple(p for p in loc[depth:] if not _is_tag(p) or p == loc[-1])
            expected = _expectation(err, model)
            got = "" if "got " in expected else _got(err)  # validators often say it already
            grouped.setdefault((line, _dotted(shown)), []).append((expected, got))
        for (line, path), items in grouped.items():
            text = " or ".join(dict.fromkeys(expected for expected, _ in items))
            self.problems.append(Problem(self.source, line, path, text + items[0][1]))


def _expectation(err: ErrorDetails, model: type[BaseModel]) -> str:
    kind, ctx = err["type"], err.get("ctx", {})
    if kind == "literal_error":
        return f"expected {ctx['expected']}"
    if kind == "missing":
        return "required field missing"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, err["loc"][:-1])
        if not allowed:
            return "unknown field"
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown field (allowed: {', '.join(allowed)}){hint}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "expected a mapping"
    if kind == "invalid_key":  # YAML 1.1 reads yes/no/on/off as booleans
        return "keys must be strings (quote keys such as yes, no, on, off, null or numbers)"
    if kind == "list_type":
        return "expected a list"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == names.NAME_PATTERN:
        return "expected a name of lowercase letters, digits and '-' starting with a letter"
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return msg[:1].lower() + msg[1:] if msg[1:2].islower() else msg


def _got(err: ErrorDetails) -> str:
    if err["type"] in ("missing", "extra_forbidden"):
        return ""
    value = err.get("input")
    if value is None or isinstance(value, bool):
        shown = {None: "null", True: "true", False: "false"}[value]
    elif isinstance(value, int | float) or (isinstance(value, str) and len(value) <= 40):
        shown = repr(value)
    elif isinstance(value, dict | list):
        shown = "a mapping" if isinstance(value, dict) else "a list"
    else:
        return ""  # too long to be helpful on one line
    return f", got {shown}"


def _allowed_fields(model: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the model that `loc` (from `model`) points into."""
    current: list[Any] = [model]
    for part in loc:
        found = []
        for tp in _members(current):
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                if part in tp.model_fields:
                    found.append(tp.model_fields[part].annotation)
                elif part == tp.__name__:  # union member tag
                    found.append(tp)
            elif isinstance(part, int) and get_origin(tp) in (list, tuple, set, frozenset):
                found.extend(get_args(tp)[:1])
            elif isinstance(part, str) and get_origin(tp) is dict:
                found.extend(get_args(tp)[1:2])
        current = found or current  # unknown parts are tags like "list[Rule]"
    for tp in _members(current):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return [f.alias or name for name, f in tp.model_fields.items()]
    return []


def _members(types: list[Any]) -> list[Any]:
    """Flatten unions (X | Y, Optional[X]) into their member types."""
    out: list[Any] = []
    for tp in types:
        args = get_args(tp)
        is_union = args and get_origin(tp) not in (list, tuple, set, frozenset, dict)
        out.extend(_members(list(args)) if is_union and not isinstance(tp, type) else [tp])
    return out


def _children(node: yaml.Node) -> list[tuple[str | int, yaml.Node, yaml.Node]]:
    """(loc part, node whose line to report, child node) for each child."""
    if isinstance(node, yaml.MappingNode):
        return [(k.value, k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
    if isinstance(node, yaml.SequenceNode):
        return [(i, item, item) for i, item in enumerate(node.value)]
    return []


def _locate(root: yaml.Node, loc: Loc) -> tuple[int, int]:
    """(1-based line, number of loc parts found in the YAML) for an error location."""
    node, line, depth = root, root.start_mark.line + 1, 0
    for part in loc:
        # The last matching key wins, as it does in the loaded data.
        match = [(at, child) for key, at, child in _children(node) if str(key) == str(part)]
        if not match:
            break
        at, node = match[-1]
        line, depth = at.start_mark.line + 1, depth + 1
    return line, depth


def _find(
    node: yaml.Node, target: yaml.Node, loc: Loc = (), seen: set[int] | None = None
) -> Loc | None:
    seen = set() if seen is None else seen
    if node is target:
        return loc
    if id(node) in seen:  # aliases can make the tree a graph
        return None
    seen.add(id(node))
    for part, _, child in _children(node):
        found = _find(child, target, (*loc, part), seen)
        if found is not None:
            return found
    return None


def _is_tag(part: str | int) -> bool:
    return isinstance(part, str) and ("[" in part or part[:1].isupper())


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _yaml_problem(source: str, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = getattr(exc, "problem", None) or str(exc)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        where = f" at line {context_mark.line + 1}" if context_mark else ""
        what += f" ({context}{where})"
    return Problem(source, mark.line + 1 if mark else 1, "", f"invalid YAML: {what}")
