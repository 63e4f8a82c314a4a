"""The docs point at things that exist: links, anchors, paths and modules.

Every relative link in README.md and docs/ must reach a file (and its heading,
when it names one); every repository path and every snf module named in
backticks must exist. Docs that drift from the tree fail here, not in a
newcomer's hands.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
TOP = ("snf", "functions", "tests", "bench", "pipelines", "docs", "deploy", "docker", "schemas")
# A file (with an extension) or a folder (with a trailing slash) of the repository.
PATH = re.compile(rf"^(?:{'|'.join(TOP)})/(?:[\w./-]*\.\w+|[\w./-]*/)$")
# snf.<package or module>...: topic names (snf.<pipeline>.<function>) are not modules.
PACKAGES = {p.stem for p in (ROOT / "snf").iterdir() if not p.name.startswith("_")}
MODULE = re.compile(rf"^snf\.(?:{'|'.join(sorted(PACKAGES))}|functions)(?:\.\w+)*$")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def module_exists(dotted: str) -> bool:
    """snf.a.b names a module (or an attribute of the longest module prefix)."""
    parts = dotted.split(".")
    for n in range(len(parts), 1, -1):
        rel = parts[1:n]
        base = ROOT / "functions" if rel[:1] == ["functions"] else ROOT / "snf"
        rel = rel[1:] if rel[:1] == ["functions"] else rel
        if (base.joinpath(*rel).with_suffix(".py")).exists() or (
            base.joinpath(*rel) / "__init__.py"
        ).exists():
            return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def named_thing_missing(token: str) -> bool:
    """A repository path or an snf module that is not in the tree."""
    if PATH.match(token):
        return not (ROOT / token).exists()
    return bool(MODULE.match(token)) and not module_exists(token)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_and_modules_exist(doc: Path) -> None:
    tokens = (code.strip().rstrip(".,:;") for code in CODE.findall(doc.read_text()))
    missing = [token for token in tokens if named_thing_missing(token)]
    assert not missing, f"{doc.relative_to(ROOT)} names what does not exist: {missing}"


PACKAGE_DIRS = sorted(p.parent for p in (ROOT / "snf").rglob("__init__.py"))


@pytest.mark.parametrize("package", PACKAGE_DIRS, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_package_docstring_lists_its_modules(package: Path) -> None:
    """A package's docstring is its table of contents: one line per module."""
    if package == ROOT / "snf":
        return  # the root: docs/ARCHITECTURE.md is its table of contents
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    listed = set(re.findall(r"^\s*(\w+)/?\s", doc, re.M))
    modules = {p.stem for p in package.glob("*.py") if p.name != "__init__.py"}
    modules |= {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    assert modules <= listed, f"{package.relative_to(ROOT)} does not list {modules - listed}"
