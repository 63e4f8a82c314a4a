"""Packaging facts the design depends on."""

from __future__ import annotations

import ast
import pkgutil
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def _locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, hashes) of a `make lock` file."""
    out: dict[str, tuple[str, list[str]]] = {}
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        spec, *rest = line.split()
        name, _, version = spec.partition("==")
        assert version, f"{path.name}: {spec} is not pinned with =="
        hashes = [h.removeprefix("--hash=sha256:") for h in rest if h.startswith("--hash=")]
        out[canonicalize_name(name)] = (version, hashes)
    return out


def test_the_locks_pin_every_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _locked(ROOT / "requirements.lock")
    test = _locked(ROOT / "requirements-test.lock")
    everything = project["dependencies"] + project["optional-dependencies"]["test"]
    wanted = [(runtime, r) for r in project["dependencies"]] + [(test, r) for r in everything]
    for lock, text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is not in the lock: run make lock"
        assert req.specifier.contains(lock[name][0]), f"{text}: locked {lock[name][0]}"
    for lock in (runtime, test):
        for name, (_, hashes) in lock.items():
            assert hashes and all(len(h) == 64 for h in hashes), f"{name} has no sha256 hash"
    # One version of each package, whichever lock installs it.
    assert all(test[name][0] == version for name, (version, _) in runtime.items())


def test_setup_and_the_image_install_from_the_locks() -> None:
    makefile = (ROOT / "Makefile").read_text()
    stamp = next(line for line in makefile.splitlines() if line.startswith("$(STAMP):"))
    assert "$(LOCK)" in stamp and "$(TEST_LOCK)" in stamp, "setup must rerun on a new lock"
    assert "--require-hashes -r $(TEST_LOCK)" in makefile
    assert "--no-deps -e ." in makefile
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile
