"""IDS rule parsing (a helper of snf.functions.ids): a Snort/Suricata subset.

    action proto src_addr src_port (-> | <>) dst_addr dst_port (option; ...)

Everything is compiled once, when the config is validated: addresses and
ports become sorted disjoint intervals of ints (the union, complement and
intersection of lists, `!` and `$VARS` are worked out here, exactly), and
contents become bytes. docs/functions/ids.md has the grammar and every error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from .specs import PORT_ANY, RuleError, Space, parse_spec

__all__ = ["Content", "Rule", "RuleError", "compile_rules", "parse_rule"]

ACTIONS = ("alert", "drop", "pass")
PROTOS: dict[str, tuple[int, ...] | None] = {"tcp": (6,), "udp": (17,), "icmp": (1, 58), "ip": None}
_OPTION_NAME = re.compile(r"[a-z_][a-z0-9_.]*")
_ESCAPES = {'"': '"', ";": ";", "\\": "\\"}
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*")
_DIGITS = re.compile(r"[0-9]{1,10}")


class Content(NamedTuple):
    pattern: bytes
    nocase: bool
    offset: int  # 0 when not given
    depth: int | None  # None: to the end of the payload


class Rule(NamedTuple):
    where: str  # "rule 3" or "rules.txt:12", for messages
    action: str  # alert | drop | pass
    proto: str  # tcp | udp | icmp | ip
    protos: tuple[int, ...] | None  # IP protocol numbers; None: any (ip)
    src: Space
    sport: Space
    dst: Space
    dport: Space
    bidirectional: bool
    sid: int
    rev: int
    msg: str
    contents: tuple[Content, ...]


# -- options ---------------------------------------------------------------------


def _split_options(text: str) -> list[tuple[str, str | None]]:
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


def _unquote(value: str, name: str) -> str:
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


def _content_bytes(value: str) -> bytes:
    if value.startswith("!"):
        raise RuleError('negated content (content:!"...") is not supported')
    parts = _unquote(value, "content").split("|")
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


def _number(name: str, value: str | None, lo: int, hi: int) -> int:
    if value is None or not _DIGITS.fullmatch(value) or not lo <= int(value) <= hi:
        raise RuleError(f"{name} expects an integer {lo}..{hi}, got {value!r}")
    return int(value)


def _options(text: str) -> tuple[int, int, str, tuple[Content, ...]]:
    """(sid, rev, msg, contents) from the text between the parentheses."""
    single: dict[str, object] = {}
    contents: list[list] = []  # [pattern, nocase, offset, depth] per content
    given: list[set[str]] = []  # the modifiers already given, per content
    for name, value in _split_options(text):
        if name in ("msg", "sid", "rev"):
            if name in single:
                raise RuleError(f"duplicate option {name!r}")
            if name == "msg":
                single[name] = _unquote(value or "", "msg")
            else:
                single[name] = _number(name, value, 1, 2**32 - 1)
        elif name == "content":
            if value is None:
                raise RuleError("content expects a quoted string")
            contents.append([_content_bytes(value), False, 0, None])
            given.append(set())
        elif name in ("nocase", "offset", "depth"):
            if not contents:
                raise RuleError(f"{name} needs a content before it")
            if name in given[-1]:
                raise RuleError(f"duplicate {name} for one content")
            given[-1].add(name)
            if name == "nocase":
                if value is not None:
                    raise RuleError(f"nocase takes no value, got {value!r}")
                contents[-1][1] = True
            elif name == "offset":
                contents[-1][2] = _number("offset", value, 0, 65535)
            else:
                depth = _number("depth", value, 1, 65535)
                if depth < len(contents[-1][0]):
                    raise RuleError(
                        f"depth {depth} is shorter than its content ({len(contents[-1][0])} bytes)"
                    )
                contents[-1][3] = depth
        else:
            raise RuleError(f"unknown option {name!r}")
    if "sid" not in single:
        raise RuleError("missing sid")
    rev = single.get("rev", 1)
    msg = single.get("msg", "")
    return single["sid"], rev, msg, tuple(Content(*c) for c in contents)  # type: ignore[return-value]


# -- header and whole rules ----------------------------------------------------------

_HEADER_PARTS = (
    "action", "protocol", "source address", "source port", "direction",
    "destination address", "destination port",
)  # fmt: skip


def _header_tokens(text: str) -> list[str]:
    """Split on whitespace outside brackets (a [list] may contain spaces)."""
    tokens, depth, cur = [], 0, []
    for c in text:
        if c.isspace() and depth == 0:
            if cur:
                tokens.append("".join(cur))
                cur = []
            continue
        depth += (c == "[") - (c == "]")
        cur.append(c)
        if depth < 0:
            raise RuleError(f"unexpected ']' in {''.join(cur)!r}")
    if depth:
        raise RuleError(f"missing ']' in {''.join(cur)!r}")
    if cur:
        tokens.append("".join(cur))
    return tokens


def parse_rule(where: str, text: str, vars_: Mapping[str, str]) -> Rule:
    text = text.strip()
    open_at = text.find("(")
    if open_at < 0:
        raise RuleError("expected '(' and the options after the destination port")
    if not text.endswith(")"):
        raise RuleError("expected ')' at the end of the rule")
    tokens = _header_tokens(text[:open_at])
    if tokens and tokens[0].lower() not in ACTIONS:
        raise RuleError(f"unknown action {tokens[0]!r} (expected alert, drop or pass)")
    if len(tokens) > 1 and tokens[1].lower() not in PROTOS:
        raise RuleError(f"unknown protocol {tokens[1]!r} (expected tcp, udp, icmp or ip)")
    if len(tokens) > 4 and tokens[4] not in ("->", "<>"):
        raise RuleError(f"expected '->' or '<>' after the source port, found {tokens[4]!r}")
    if len(tokens) < len(_HEADER_PARTS):
        k = len(tokens)
        after = f" after the {_HEADER_PARTS[k - 1]}" if k else ""
        raise RuleError(f"expected the {_HEADER_PARTS[k]}{after}, found '('")
    if len(tokens) > len(_HEADER_PARTS):
        raise RuleError(f"expected '(' after the destination port, found {tokens[7]!r}")
    action, proto, src, sport, arrow, dst, dport = tokens
    action, proto = action.lower(), proto.lower()
    ports = (
        parse_spec(sport, "source port", vars_, port=True),
        parse_spec(dport, "destination port", vars_, port=True),
    )
    if proto not in ("tcp", "udp") and ports != (PORT_ANY, PORT_ANY):
        raise RuleError(f"an {proto} rule has no ports: write 'any' for both ports")
    sid, rev, msg, contents = _options(text[open_at + 1 : -1])
    return Rule(
        where, action, proto, PROTOS[proto],
        parse_spec(src, "source address", vars_, port=False), ports[0],
        parse_spec(dst, "destination address", vars_, port=False), ports[1],
        arrow == "<>", sid, rev, msg, contents,
    )  # fmt: skip


def compile_rules(
    lines: Iterable[tuple[str, str]], vars_: Mapping[str, str], from_file: bool = False
) -> list[Rule]:
    """(where, text) pairs -> rules; blank and '#' lines are skipped.

    Raises RuleError("<where>: <problem>") at the first bad rule, with `index`
    set to that rule's position in `lines`. With `from_file`, a line that does
    not start with an action is reported by its number alone: a file named by
    mistake (or on purpose, such as /etc/shadow) never has its content shown.
    """
    rules: list[Rule] = []
    sids: dict[int, str] = {}
    for index, (where, text) in enumerate(lines):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            if from_file and text.split(None, 1)[0].lower() not in ACTIONS:
                raise RuleError("not a rule: expected it to start with alert, drop or pass")
            rule = parse_rule(where, text, vars_)
            if rule.sid in sids:
                raise RuleError(f"duplicate sid {rule.sid} (also {sids[rule.sid]})")
        except RuleError as exc:
            error = RuleError(f"{where}: {exc}")
            error.index = index
            raise error from None
        sids[rule.sid] = where
        rules.append(rule)
    return rules
