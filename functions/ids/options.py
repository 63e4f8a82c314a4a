"""Option text of IDS rules (a helper of snf.functions.ids): splitting and quoting.

    'msg:"a\\;b"; nocase;' -> [("msg", '"a\\;b"'), ("nocase", None)]

Shared by the rule parser (rules.py) and the keyword compilers (payload_parse.py,
header_keywords.py), which all take the (name, value) pairs in rule order.
"""

from __future__ import annotations

import re

from .specs import RuleError

__all__ = ["content_bytes", "split_options", "unquote"]

_OPTION_NAME = re.compile(r"[a-z_][a-z0-9_.]*")
_ESCAPES = {'"': '"', ";": ";", "\\": "\\"}
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*")


def split_options(text: str) -> list[tuple[str, str | None]]:
    """'msg:"a\\;b"; nocase;' -> [("msg", '"a\\;b"'), ("nocase", None)], quote-aware."""
    out: list[tuple[str, str | None]] = []
    start, quoted, i = 0, False, 0
    while i < len(text):
        c = text[i]
        if quoted and c == "\\":
            i += 1  # the escaped character is checked when the value is unquoted
        elif c == '"':
            quoted = not quoted
        elif c == ";":
            if quoted:
                raise RuleError(r"unescaped ';' inside a quoted string (write \;)")
            out.append(_option(text[start:i]))
            start = i + 1
        i += 1
    if quoted:
        raise RuleError("unterminated quoted string in the options")
    if text[start:].strip():
        out.append(_option(text[start:]))  # the last ';' may be left out
    return out


def _option(text: str) -> tuple[str, str | None]:
    name, colon, value = text.partition(":")
    name = name.strip().lower()
    if not name:
        raise RuleError("empty option (two ';' in a row?)")
    if not _OPTION_NAME.fullmatch(name):
        raise RuleError(f"bad option name {name!r}")
    return name, value.strip() if colon else None


def unquote(value: str, name: str) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        raise RuleError(f"{name} expects a quoted string, got {value!r}")
    out, i, body = [], 0, value[1:-1]
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1 : i + 2]
            if nxt not in _ESCAPES:
                raise RuleError(rf'invalid escape "\{nxt}" in {name} (only \" \; \\)')
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        if c == '"':
            raise RuleError(rf'unescaped \'"\' inside the {name} string (write \")')
        out.append(c)
        i += 1
    return "".join(out)


def content_bytes(value: str) -> bytes:
    parts = unquote(value, "content").split("|")
    if len(parts) % 2 == 0:
        raise RuleError("unterminated |hex| block in content")
    out = bytearray()
    for k, part in enumerate(parts):
        if k % 2 == 0:
            out += part.encode("utf-8")
            continue
        digits = "".join(part.split())
        if not digits or not _HEX.fullmatch(digits):
            raise RuleError(f"bad |hex| block |{part}| in content: expected pairs of hex digits")
        out += bytes.fromhex(digits)
    if not out:
        raise RuleError("empty content")
    return bytes(out)
