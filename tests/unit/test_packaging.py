"""Packaging facts the design depends on."""

from __future__ import annotations

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


def test_functions_folder_is_installed_under_snf() -> None:
    assert Path(snf.functions.__file__).resolve().parent == ROOT / "functions"
    # Only snf.* packages are installed: no generic top-level "functions" name.
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "snf" or p.startswith("snf.") for p in setuptools["packages"])
    assert setuptools["package-dir"]["snf.functions"] == "functions"


def test_kafka_python_uses_the_c_crc32c() -> None:
    # Without the C extension kafka-python checksums every batch in pure Python (~5x slower).
    from kafka.record import util

    assert util.crc32c_c is not None
