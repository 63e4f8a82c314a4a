"""Pipeline file problems: where in the YAML each one is, and how it reads.

Every problem becomes "file:line: field.path: what was expected". Lines come
from the composed YAML node tree, expectations from pydantic's error types.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from snf.errors import ConfigError
from snf.pipeline import names

__all__ = [
    "MAX_DEPTH",
    "Loc",
    "PipelineError",
    "Problem",
    "Report",
    "YamlLoader",
    "dotted",
    "find_loc",
    "yaml_problem",
]

Loc = tuple[str | int, ...]

MAX_DEPTH = 64  # levels of YAML nesting in a pipeline file


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


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys (plain YAML keeps the last silently)
    and refuses nesting deeper than MAX_DEPTH levels."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[yaml.MappingNode, yaml.Node, yaml.Node]] = []
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        # PyYAML composes recursively: thousands of levels end in a RecursionError,
        # here and in every walk of the tree after it. A pipeline needs about ten.
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                what = f"nested deeper than {MAX_DEPTH} levels (the limit)"
                raise yaml.composer.ComposerError(None, None, what, mark)
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key, _ in node.value:  # before merge keys (<<) are flattened in
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in seen:
                    self.duplicates.append((node, seen[(key.tag, key.value)], key))
                seen.setdefault((key.tag, key.value), key)
        return super().construct_mapping(node, deep)


class Report:
    """Collects problems, placing each on the line of its YAML node."""

    def __init__(self, source: str, root: yaml.Node) -> None:
        self.source, self.root = source, root
        self.problems: list[Problem] = []

    def add(self, loc: Loc, message: str) -> None:
        line, _ = _locate(self.root, loc)
        self.problems.append(Problem(self.source, line, dotted(loc), message))

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
            shown = tuple(p for p in loc[:depth] if not _is_tag(p))
            if err["type"] in ("missing", "extra_forbidden"):
                # Name the absent fields, but not union member tags such as "list[Rule]".
                shown += tuple(p for p in loc[depth:] if not _is_tag(p) or p == loc[-1])
            expected = _expectation(err, model)
            got = "" if "got " in expected else _got(err)  # validators often say it already
            grouped.setdefault((line, dotted(shown)), []).append((expected, got))
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
    for k, part in enumerate(loc):
        # The last matching key wins, as it does in the loaded data.
        match = [(at, child) for key, at, child in _children(node) if str(key) == str(part)]
        if not match:
            if _is_tag(part) and isinstance(node, yaml.MappingNode):
                continue  # a union member (instances: Autoscale): its fields are below
            break
        at, node = match[-1]
        line, depth = at.start_mark.line + 1, k + 1
    return line, depth


def find_loc(
    node: yaml.Node, target: yaml.Node, loc: Loc = (), seen: set[int] | None = None
) -> Loc | None:
    seen = set() if seen is None else seen
    if node is target:
        return loc
    if id(node) in seen:  # aliases can make the tree a graph
        return None
    seen.add(id(node))
    for part, _, child in _children(node):
        found = find_loc(child, target, (*loc, part), seen)
        if found is not None:
            return found
    return None


def _is_tag(part: str | int) -> bool:
    return isinstance(part, str) and ("[" in part or part[:1].isupper())


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def yaml_problem(source: str, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = getattr(exc, "problem", None) or str(exc)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        where = f" at line {context_mark.line + 1}" if context_mark else ""
        what += f" ({context}{where})"
    return Problem(source, mark.line + 1 if mark else 1, "", f"invalid YAML: {what}")
