"""Short modules and short functions, so each concept fits on a screen.

No module of snf/ or functions/ is over MODULE_LINES lines, and no function
over FUNCTION_LINES, except the ones listed in EXCEPTIONS with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE_LINES = 400
FUNCTION_LINES = 80
EXCEPTIONS = {
    # The per-packet parser of every packet the vectorised path does not take:
    # one flat function on purpose, since a call per layer costs ~10% per packet.
    "snf/packet/scalar.py:parse_packet": "the scalar parser's per-packet hot path",
}


def sources() -> list[Path]:
    return sorted([*(ROOT / "snf").rglob("*.py"), *(ROOT / "functions").rglob("*.py")])


def function_lengths() -> dict[str, int]:
    """path:function -> lines, for every function (methods and nested ones too)."""
    found = {}
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                found[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    return found


def test_modules_are_short() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in sources()
        if (n := len(p.read_text().splitlines())) > MODULE_LINES
    }
    assert not long, f"modules over {MODULE_LINES} lines: {long}"


def test_functions_are_short() -> None:
    long = {
        name: n
        for name, n in function_lengths().items()
        if n > FUNCTION_LINES and name not in EXCEPTIONS
    }
    assert not long, f"functions over {FUNCTION_LINES} lines: {long}"


def test_every_exception_is_still_needed() -> None:
    lengths = function_lengths()
    stale = [name for name in EXCEPTIONS if lengths.get(name, 0) <= FUNCTION_LINES]
    assert not stale, f"no longer over {FUNCTION_LINES} lines: {stale}"
