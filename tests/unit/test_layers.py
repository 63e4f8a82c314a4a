"""The package layers of docs/ARCHITECTURE.md, enforced on every import in the tree.

Every import statement of snf/ and functions/ (installed as snf.functions) counts:
at module level, inside functions (the CLI imports late) and under
TYPE_CHECKING. The rules:

- no import cycle between modules;
- a package imports only from packages in lower layers, never from a sibling
  of its own layer (LAYERS, top to bottom);
- only snf.runtime.worker imports faust; only snf.kafka imports kafka-python
  or aiokafka;
- a function knows only snf.core, snf.packet and snf.errors, and no other
  function's package.

The graph is read from the source with ast (no import side effects), so the
functions/ folder is checked under its installed name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"snf": ROOT / "snf", "snf.functions": ROOT / "functions"}

# Top to bottom. A package may import its own modules and any package of a lower
# layer; packages sharing a layer are independent of each other.
LAYERS: list[set[str]] = [
    {"snf.__main__"},  # python -m snf
    {"snf.cli"},
    {"snf.harness"},
    {"snf.ops"},
    {"snf.runtime"},
    {"snf.ingress", "snf.egress"},
    {"snf.live"},  # interfaces: capture rings, transmit sockets, the lab
    {"snf.pipeline", "snf.guarantee", "snf.functions", "snf.kafka"},
    {"snf.core"},
    {"snf.wire"},
    {"snf.packet"},
    {"snf.errors", "snf"},  # the root package: __version__ only
]
# Third-party packages only these parts of snf may import.
EXTERNAL_OWNERS = {
    "faust": "snf.runtime.worker",
    "mode": "snf.runtime.worker",  # Faust's service framework
    "kafka": "snf.kafka",
    "aiokafka": "snf.kafka",
}
FUNCTIONS_MAY_IMPORT = ("snf.core", "snf.packet", "snf.errors")


def modules() -> dict[str, Path]:
    """Module name -> file, for every module of snf and snf.functions."""
    found: dict[str, Path] = {}
    for prefix, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([prefix, *parts])
            if prefix == "snf" and name.startswith("snf.functions"):
                continue  # only under functions/
            found[name] = path
    return found


MODULES = modules()


def imports_of(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported name, line) for every import in the file, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                # `from package import module` imports the module; else the name's module.
                yield (full if full in MODULES else base), node.lineno


def owner(module: str) -> str:
    """The snf module an import lands in (the longest known prefix)."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module


def package_of(module: str) -> str:
    """The package of LAYERS a module belongs to (the most specific one)."""
    found = [p for layer in LAYERS for p in layer if module == p or module.startswith(p + ".")]
    return max(found, key=len, default=module)


def layer_of(pkg: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if pkg in layer), None)


def graph() -> dict[str, dict[str, int]]:
    """module -> {imported snf module or third-party top-level name: first line}."""
    edges: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        out = edges.setdefault(name, {})
        for target, line in imports_of(name, path):
            if target == "snf" or target.startswith("snf."):
                target = owner(target)
            else:
                target = target.split(".")[0]
            if target and target != name:
                out.setdefault(target, line)
    return edges


GRAPH = graph()


def where(module: str, target: str) -> str:
    path = MODULES[module].relative_to(ROOT)
    return f"{path}:{GRAPH[module][target]}: {module} imports {target}"


def test_the_layers_name_every_package() -> None:
    packages = {package_of(m) for m in MODULES}
    assert packages <= set().union(*LAYERS), packages - set().union(*LAYERS)


def test_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, {}):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_packages_import_only_from_lower_layers() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        mine = package_of(module)
        here = layer_of(mine)
        for target in targets:
            if target not in MODULES:
                continue
            theirs = package_of(target)
            there = layer_of(theirs)
            if theirs == mine or here is None or (there is not None and there > here):
                continue
            wrong.append(where(module, target))
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("external", sorted(EXTERNAL_OWNERS))
def test_client_libraries_stay_in_their_package(external: str) -> None:
    allowed = EXTERNAL_OWNERS[external]
    wrong = [
        where(module, external)
        for module, targets in GRAPH.items()
        if external in targets and not (module == allowed or module.startswith(allowed + "."))
    ]
    assert not wrong, f"only {allowed} may import {external}:\n" + "\n".join(sorted(wrong))


def test_functions_know_only_the_core_and_packets() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        if not module.startswith("snf.functions."):
            continue
        own = ".".join(module.split(".")[:3])  # snf.functions.<fn>
        for target in targets:
            if target not in MODULES or target.startswith(own):
                continue
            if not target.startswith(FUNCTIONS_MAY_IMPORT):
                wrong.append(where(module, target))
    assert not wrong, "functions import only snf.core, snf.packet, snf.errors:\n" + "\n".join(
        sorted(wrong)
    )


def test_the_checker_sees_what_it_must() -> None:
    # Guards against a checker that passes because it reads nothing.
    assert "snf.runtime.worker.app" in MODULES and "snf.functions.registry" not in MODULES
    assert any(m.startswith("snf.functions.") for m in MODULES)
    assert "faust" in GRAPH["snf.runtime.worker.app"]
    assert "snf.cli.run_commands" in GRAPH["snf.cli.main"]  # a module-level import
    assert "snf.runtime.worker.app" in GRAPH["snf.cli.run_commands"]  # a late import
