"""Packaging facts the design depends on."""

from __future__ import annotations

import ast
import pkgutil
import tomllib
from pathlib import Path

import snf.functions
from snf.core.registry import BUILTIN, get_function

ROOT = Path(__file__).resolve().parents[2]


def test_every_function_module_is_registered() -> None:
    modules = {m.name for m in pkgutil.iter_modules(snf.functions.__path__)}
    public = {m for m in modules if not m.startswith("_")}
    registered = {target.split(":")[0].rsplit(".", 1)[1] for target in BUILTIN.values()}
    assert public == registered
    for kind in BUILTIN:
        assert get_function(kind).kind == kind


def test_function_helpers_never_import_their_package() -> None:
    # A function's package (__init__) imports its helpers, never the reverse,
    # not even under TYPE_CHECKING: each helper stands on its own.
    for init in sorted((ROOT / "functions").glob("*/__init__.py")):
        package = f"snf.functions.{init.parent.name}"
        files = [p for p in sorted(init.parent.glob("*.py")) if p.name != "__init__.py"]
        helpers = {f"{package}.{p.stem}" for p in files}
        for helper in files:
            for node in ast.walk(ast.parse(helper.read_text())):
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    assert node.level <= 1, f"{helper}: imports from above its package"
                    base = package if node.level else (node.module or "")
                    if node.level and node.module:
                        base = f"{package}.{node.module}"
                    full = [f"{base}.{alias.name}" for alias in node.names]
                    targets = [t if t in helpers else base for t in full]
                else:
                    continue
                assert package not in targets, f"{helper}:{node.lineno} imports {package}"


def test_functions_folder_is_installed_under_snf() -> None:
    assert Path(snf.functions.__file__).resolve().parent == ROOT / "functions"
    # Only snf.* packages are installed: no generic top-level "functions" name.
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "snf" or p.startswith("snf.") for p in setuptools["packages"])
    assert setuptools["package-dir"]["snf.functions"] == "functions"
    # Every function's package is listed, or a non-editable install leaves it out.
    listed = set(setuptools["packages"])
    for m in pkgutil.iter_modules(snf.functions.__path__):
        assert not m.ispkg or f"snf.functions.{m.name}" in listed, m.name


def test_kafka_python_uses_the_c_crc32c() -> None:
    # Without the C extension kafka-python checksums every batch in pure Python (~5x slower).
    from kafka.record import util

    assert util.crc32c_c is not None
