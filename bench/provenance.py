"""Which code a benchmark measured: the commit, uncommitted changes, and whether the
tree changed while it ran.

Other people edit and commit in the same tree while benchmarks run, and every
worker process imports snf afresh from it, so a run can mix two versions of
the code. `code_state()` at the start and `changed_since()` at the end say so.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["changed_since", "code_state"]

ROOT = Path(__file__).resolve().parents[1]
CODE = ("snf", "functions")  # what a worker imports


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout


def _digest() -> str:
    h = hashlib.blake2b(digest_size=8)
    for folder in CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def code_state() -> dict[str, Any]:
    """The commit, the files of snf/ and functions/ that differ from it, and a digest."""
    dirty = _git("status", "--porcelain", "--", *CODE).splitlines()
    return {
        "commit": _git("rev-parse", "--short", "HEAD").strip(),
        "uncommitted": [line[3:] for line in dirty],
        "digest": _digest(),
    }


def changed_since(state: dict[str, Any]) -> bool:
    """Whether snf/ or functions/ changed since `state` was taken."""
    return _digest() != state["digest"]
