"""Which code and machine a benchmark measured: the commit, uncommitted changes,
whether the tree changed while it ran, and the machine's CPUs and load.

Other people edit and commit in the same tree while benchmarks run, and every
worker process imports snf afresh from it, so a run can mix two versions of
the code. `code_state()` at the start and `changed_since()` at the end say so;
`write_report` closes and writes a report with both.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["changed_since", "code_state", "machine", "write_report"]

ROOT = Path(__file__).resolve().parents[1]
CODE = ("snf", "functions")  # what a worker imports


def machine(**extra: Any) -> dict[str, Any]:
    """The report's `machine`: CPUs, platform, Python and the load average now,
    plus what a benchmark adds (tool versions)."""
    import platform

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **extra,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


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


def write_report(report: dict[str, Any], code: dict[str, Any], started: float, out: Path) -> None:
    """Close a benchmark's report (load at the end, whether the code moved during the
    run, seconds since `started` on perf_counter) and write it to `out` as JSON."""
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    code["changed_during_run"] = changed_since(code)
    report["seconds"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
