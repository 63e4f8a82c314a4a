"""The compiled steps of a rule's payload program (a helper of snf.functions.ids.payload).

One frozen record per payload keyword, in rule order, and the small parsers the
keywords share: Suricata's unsigned-integer forms (dsize, bsize), C numbers as
strtoull reads them (byte_test and friends), and PCRE2 compilation.
docs/functions/ids-payload.md has the semantics of every field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import pcre2
from pcre2 import _cy

from .specs import RuleError

__all__ = [
    "ByteExtractStep", "ByteJumpStep", "ByteMathStep", "ByteTestStep", "ContentStep",
    "IsdataatStep", "Num", "PcreStep", "Read", "SizeStep", "Step", "UintSpec",
    "c_integer", "compile_regex", "parse_int", "parse_uint", "strtoull",
]  # fmt: skip

Num = int | str  # a constant, or the name of a byte_extract/byte_math variable
U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class ContentStep:
    pattern: bytes
    needle: bytes  # what is searched for: the pattern, lowercased when nocase
    nocase: bool
    negated: bool
    offset: Num | None  # absolute window start (startswith: 0)
    depth: Num | None  # absolute window length from offset (startswith: the pattern's)
    distance: Num | None  # relative: window start from the previous match end
    within: Num | None  # relative: window length from previous end + distance
    endswith: bool
    fast: str | tuple[int, int] | None  # fast_pattern: "", "only" or (offset, length)
    retry: bool  # a later keyword depends on this match: try its next occurrence
    single: bool  # no position link at all: a negated hit ends the inspection

    @property
    def relative(self) -> bool:
        return self.distance is not None or self.within is not None


@dataclass(frozen=True, slots=True)
class PcreStep:
    source: str  # the rule's "/regex/flags", for messages
    regex: Any  # pcre2.Pattern
    negated: bool
    relative: bool  # R: the subject starts at the previous match end
    anchored: bool  # A: match only at the search start
    retry: bool  # a later keyword depends on this match: try its next match


@dataclass(frozen=True, slots=True)
class IsdataatStep:
    offset: Num
    relative: bool
    negated: bool


@dataclass(frozen=True, slots=True)
class Read:
    """Where and how a byte_* keyword reads its number."""

    nbytes: Num
    offset: Num
    relative: bool
    little: bool
    base: int | None  # None: binary; else the string base (0: C's automatic 0x/0 prefixes)


@dataclass(frozen=True, slots=True)
class ByteTestStep:
    read: Read
    op: str  # = < > <= >= & ^
    negated: bool
    value: Num
    bitmask: int | None


@dataclass(frozen=True, slots=True)
class ByteJumpStep:
    read: Read
    multiplier: int
    align: bool
    origin: str  # "cursor" (after the bytes read), "beginning" or "end"
    post_offset: int


@dataclass(frozen=True, slots=True)
class ByteExtractStep:
    read: Read
    name: str
    multiplier: int
    align: int  # 0, 2 or 4


@dataclass(frozen=True, slots=True)
class ByteMathStep:
    read: Read
    oper: str  # + - * / << >>
    rvalue: Num
    name: str
    bitmask: int | None


class UintSpec(NamedTuple):
    """Suricata's integer test: mode "=", "!=", "<", "<=", ">", ">=", "<>", "!<>", "&", "!&"."""

    mode: str
    a: int
    b: int = 0

    def test(self, x: int) -> bool:
        m, a, b = self.mode, self.a, self.b
        if m == "=":
            return x == a
        if m == "!=":
            return x != a
        if m == "<":
            return x < a
        if m == "<=":
            return x <= a
        if m == ">":
            return x > a
        if m == ">=":
            return x >= a
        if m == "<>":
            return a < x < b  # ranges are exclusive
        if m == "!<>":
            return x <= a or x >= b
        return ((x & a) == b) == (m == "&")

    def largest(self) -> int | None:
        """The largest size that passes, when there is one below the type's maximum."""
        return {"=": self.a, "<": self.a - 1, "<=": self.a, "<>": self.b - 1}.get(self.mode)


@dataclass(frozen=True, slots=True)
class SizeStep:
    spec: UintSpec  # bsize, against the buffer's length


Step = (
    ContentStep | PcreStep | IsdataatStep | ByteTestStep | ByteJumpStep | ByteExtractStep
    | ByteMathStep | SizeStep
)  # fmt: skip


# -- integers --------------------------------------------------------------------

_DECIMAL = re.compile(r"[+-]?[0-9]+")


def parse_int(name: str, text: str, lo: int, hi: int, what: str = "") -> int:
    """A decimal integer in lo..hi, or RuleError naming the keyword."""
    text = text.strip()
    if not _DECIMAL.fullmatch(text) or not lo <= int(text) <= hi:
        raise RuleError(f"{name} expects {what or 'an integer'} {lo}..{hi}, got {text!r}")
    return int(text)


def strtoull(text: bytes, base: int) -> tuple[int, int] | None:
    """C's strtoull: (value mod 2**64, bytes used), (0, 0) without digits, None on overflow.

    Leading whitespace and a sign are taken; base 0 reads 0x as hex and a leading
    0 as octal; base 16 takes an optional 0x; reading stops at the first non-digit.
    """
    i, n = 0, len(text)
    while i < n and text[i] in b" \t\n\v\f\r":
        i += 1
    negative = i < n and text[i] == 0x2D
    if i < n and text[i] in b"+-":
        i += 1
    hex_prefix = text[i : i + 2] in (b"0x", b"0X") and _digit(text[i + 2 : i + 3], 16) is not None
    if base in (0, 16) and hex_prefix:
        i, base = i + 2, 16
    elif base == 0:
        base = 8 if text[i : i + 1] == b"0" else 10
    start, value = i, 0
    while i < n and (d := _digit(text[i : i + 1], base)) is not None:
        value = value * base + d
        i += 1
    if i == start:
        return 0, 0
    if value > U64:
        return None
    return (-value) % (1 << 64) if negative else value, i


def _digit(char: bytes, base: int) -> int | None:
    if not char:
        return None
    d = int(char, 36) if char.isalnum() and char.isascii() else 99
    return d if d < base else None


def c_integer(name: str, text: str, lo: int, hi: int) -> int:
    """A whole token as C reads it with base 0 (0x.. hex, 0.. octal), in lo..hi."""
    raw = text.strip().encode("ascii", "replace")
    got = strtoull(raw, 0) if raw[:1] != b"-" else None
    if not raw or got is None or got[1] != len(raw) or not lo <= got[0] <= hi:
        raise RuleError(
            f"{name} expects a number {lo}..{hi} (decimal, 0x hex or 0 octal), got {text!r}"
        )
    return got[0]


_UNITS = {"kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}  # kib, mib, gib too
_VALUE = r"(0x[0-9a-fA-F]+|[0-9]+(?:[kKmMgG][iI]?[bB])?)"
_UINT_FORMS = (
    ("&", re.compile(rf" *& *{_VALUE} *(!?)= *{_VALUE} *")),
    ("<>", re.compile(rf"(!?){_VALUE} *(?:-|<>) *{_VALUE} *")),
    ("=", re.compile(rf"=? *{_VALUE} *")),
    ("op", re.compile(rf"(>=|<=|>|<|!=|!|=) *{_VALUE} *")),
)


def _uint_value(text: str, top: int) -> int:
    if text.startswith("0x"):
        value = int(text, 16)
    else:
        digits = text.rstrip("kKmMgGiIbB")
        unit = text[len(digits) :].lower().replace("i", "")
        value = int(digits) * (_UNITS[unit] if unit else 1)
    if value > top:
        raise ValueError(text)
    return value


def parse_uint(name: str, value: str | None, bits: int) -> UintSpec:
    """Suricata's integer keyword forms (rules/integer-keywords), checked as its parser does."""
    top = (1 << bits) - 1
    text = (value or "").lstrip(" ")
    try:
        for form, regex in _UINT_FORMS:
            m = regex.fullmatch(text)
            if m is None:
                continue
            if form == "&":
                mask, neg, want = _uint_value(m[1], top), m[2], _uint_value(m[3], top)
                if want & mask == want:
                    return UintSpec("!&" if neg else "&", mask, want)
            elif form == "<>":
                lo, hi = _uint_value(m[2], top), _uint_value(m[3], top)
                if hi > lo + 1:  # else the exclusive range holds nothing
                    return UintSpec("!<>" if m[1] else "<>", lo, hi)
            else:
                op = "=" if form == "=" else {"!": "!="}.get(m[1], m[1])
                x = _uint_value(m[2] if form == "op" else m[1], top)
                if (op, x) not in (("<", 0), (">=", 0), ("<=", top), (">", top)):
                    return UintSpec(op, x)  # those four are always or never true
    except (ValueError, KeyError):
        pass
    raise RuleError(
        f"{name} expects N, =N, !N, !=N, <N, <=N, >N, >=N, A<>B, A-B, !A-B or &MASK=V "
        f"(0..{top}; ranges exclusive and not empty; never always or never true), got {value!r}"
    )


# -- PCRE2 -------------------------------------------------------------------------

# Suricata's default pcre.match-limit and match-limit-recursion: a regex that
# backtracks more counts as not matching, as there.
_LIMITS = b"(*LIMIT_MATCH=3500)(*LIMIT_DEPTH=1500)"
# The binding always sets these two; Suricata's plain pcre2_compile does not
# (\x{...} and \u would change meaning), so they are switched off again.
_ALT_BSUX, _NEVER_BACKSLASH_C = 0x00000002, 0x00100000
_OPTIONS = {"i": 0x8, "s": 0x20, "m": 0x400, "x": 0x80, "E": 0x10, "G": 0x40000}
_ERROR_AT = re.compile(r"compilation failed at position (\d+); (.*)", re.S)


def compile_regex(regex: str, flags: str) -> Any:
    """The PCRE2 pattern of a pcre keyword, compiled on bytes (no UTF, ASCII classes)."""
    options = 0
    for flag in flags:
        options |= _OPTIONS.get(flag, 0)
    source = regex.encode("utf-8")
    try:
        code = _cy.compile(_LIMITS + source, options, _ALT_BSUX | _NEVER_BACKSLASH_C)
    except pcre2.PatternError as exc:
        m = _ERROR_AT.match(str(exc))
        where = f" at offset {int(m[1]) - len(_LIMITS)}" if m else ""
        reason = m[2] if m else str(exc)
        raise RuleError(f"pcre: /{regex}/ does not compile: {reason}{where}") from None
    _cy.jit_compile(code)
    return pcre2.Pattern(code, source, 0, True, None)
