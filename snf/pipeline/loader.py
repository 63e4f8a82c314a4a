"""Load a pipeline file: validate all of it before anything starts.

Loading checks the YAML, the schema, every function type and every function
config, the wiring graph and the partition counts before it returns, and
raises all problems together as one PipelineError, one line each:
"file:line: field.path: what was expected". The file itself is bounded first:
a regular file of at most 4 MiB (snf.core.limits), at most 64 levels of YAML
nesting (errors.MAX_DEPTH).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from snf.core.contract import FunctionConfig, NetworkFunction
from snf.core.limits import MAX_FILE_BYTES, read_text_file
from snf.core.registry import get_function
from snf.errors import ConfigError
from snf.pipeline.errors import (
    Loc,
    PipelineError,
    Problem,
    Report,
    YamlLoader,
    dotted,
    find_loc,
    yaml_problem,
)
from snf.pipeline.graph import INGRESS, Graph, Link, build_graph
from snf.pipeline.model import Layout, Pipeline, PipelineFunction
from snf.pipeline.spec import PipelineSpec

__all__ = ["PipelineError", "Problem", "load_pipeline", "parse_pipeline"]


def load_pipeline(path: str | Path, base_dir: Path | None = None) -> Pipeline:
    """Load and validate a file; relative paths in configs resolve against
    `base_dir` (default: the file's directory)."""
    path = Path(path)
    # A regular file of at most 4 MiB (snf.core.limits): never a FIFO or /dev/zero.
    text = read_text_file(path, "pipeline file")
    return _build(text, str(path), path, base_dir)


def parse_pipeline(text: str, source: str = "<string>") -> Pipeline:
    return _build(text, source, None)


def _compose(text: str, source: str) -> tuple[YamlLoader, yaml.Node, Any]:
    """The YAML's loader (its duplicate keys), node tree and data, or a PipelineError."""
    if len(text) > MAX_FILE_BYTES:  # characters: at least as many bytes
        msg = f"larger than {MAX_FILE_BYTES} bytes (the limit of a pipeline file)"
        raise PipelineError([Problem(source, 1, "", msg)])
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
    return loader, root, data


def _build(text: str, source: str, path: Path | None, base_dir: Path | None = None) -> Pipeline:
    loader, root, data = _compose(text, source)
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
    needs = {
        fn.name: step[0].needs_payload
        for fn, step in zip(spec.functions, steps, strict=True)
        if step
    }
    heads = spec.ship == "heads"
    rewriters = {
        fn.name
        for fn, step in zip(spec.functions, steps, strict=True)
        if step and step[0].rewrites_payload
    }
    layout = Layout(
        graph.entry,
        parts,
        spec.partitions,
        external,
        False,
        heads,
        _whole(graph, needs),
        _downstream(graph, rewriters),
    )
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


def _downstream(graph: Graph, starts: set[str]) -> frozenset[str]:
    """`starts` and every function they feed, directly or through others."""
    found, todo = set(starts), list(starts)
    while todo:
        for ds in graph.outputs.get(todo.pop(), {}).values():
            for d in ds:
                if d.kind == "function" and d.target not in found:
                    found.add(d.target)
                    todo.append(d.target)
    return frozenset(found)


def _whole(graph: Graph, needs: dict[str, bool]) -> frozenset[str]:
    """Functions that read payload, or feed (maybe through others) one that does."""
    feeds: dict[str, set[str]] = {
        name: {d.target for ds in graph.outputs[name].values() for d in ds if d.kind == "function"}
        for name in graph.outputs
    }
    whole: set[str] = set()

    def reaches(name: str, seen: set[str]) -> bool:
        if needs.get(name) or name in whole:
            return True
        seen.add(name)
        return any(t not in seen and reaches(t, seen) for t in feeds.get(name, ()))

    for name in graph.outputs:
        if reaches(name, set()):
            whole.add(name)
    return frozenset(whole)
