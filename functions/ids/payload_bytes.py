"""byte_test, byte_jump, byte_extract and byte_math values (a helper of snf.functions.ids.payload).

Each parser checks a keyword's value as Suricata does and returns its step.
`known` holds the byte_extract/byte_math variables defined earlier in the
rule: a value that starts with a letter must name one of them.
"""

from __future__ import annotations

import re
from collections.abc import Container

from .payload_steps import (
    U64,
    ByteExtractStep,
    ByteJumpStep,
    ByteMathStep,
    ByteTestStep,
    Num,
    Read,
    c_integer,
    parse_int,
)
from .specs import RuleError

__all__ = ["parse_byte_extract", "parse_byte_jump", "parse_byte_math", "parse_byte_test"]

I32 = (-(1 << 31), (1 << 31) - 1)
_OPS = ("=", "<", ">", "<=", ">=", "&", "^")
_BASES = {"dec": 10, "hex": 16, "oct": 8}
_WITH_VALUE = re.compile(r"(\w+)\s+(\S+)")


def refuse_dce(name: str) -> RuleError:
    return RuleError(
        f"{name}: dce takes the byte order from the DCE/RPC header, and this IDS does not "
        "decode DCE/RPC"
    )


def _split(name: str, value: str | None, lo: int, hi: int, form: str) -> list[str]:
    parts = [p.strip() for p in (value or "").split(",")]
    if not lo <= len(parts) <= hi or not all(parts):
        raise RuleError(f"{name} expects {form}, got {value!r}")
    return parts


def _var(name: str, text: str, known: Container[str]) -> str | None:
    """The variable `text` names, or None when it is a number."""
    if not text[:1].isalpha():
        return None
    if text not in known:
        raise RuleError(
            f"{name}: unknown variable {text!r} (byte_extract or byte_math must define it first)"
        )
    return text


def _c_signed(name: str, text: str, lo: int, hi: int) -> int:
    """A C base-0 integer with an optional sign (strtol)."""
    sign = -1 if text.startswith("-") else 1
    magnitude = c_integer(name, text.lstrip("+-"), 0, max(-lo, hi))
    if not lo <= sign * magnitude <= hi:
        raise RuleError(f"{name} expects a number {lo}..{hi}, got {text!r}")
    return sign * magnitude


def _check_nbytes(name: str, nbytes: Num, string: bool, most: int = 23) -> None:
    if isinstance(nbytes, int):
        if string and nbytes > most:
            raise RuleError(f"{name}: cannot read more than {most} bytes with string")
        if not string and nbytes > 8:
            raise RuleError(f"{name}: cannot read more than 8 bytes without string")


def parse_byte_test(value: str | None, known: Container[str]) -> ByteTestStep:
    name = "byte_test"
    parts = _split(name, value, 4, 10, "<bytes>, [!]<operator>, <value>, <offset>[, options]")
    nbytes = _var(name, parts[0], known) or parse_int(f"{name} bytes", parts[0], 0, 2**32 - 1)
    negated = parts[1].startswith("!")
    op = parts[1][1:].lstrip(" ") if negated else parts[1]
    op = op or ("=" if negated else op)  # a lone ! means !=
    if op not in _OPS:
        raise RuleError(
            f"{name}: operator must be one of <,>,=,<=,>=,&,^ (with optional !), got {parts[1]!r}"
        )
    test = _var(name, parts[2], known) or c_integer(f"{name} value", parts[2], 0, U64)
    offset = _var(name, parts[3], known) or _c_signed(f"{name} offset", parts[3], *I32)
    common, bitmask = _ReadOptions(name), None
    for option in parts[4:]:
        if common.take(option):
            continue
        if (m := _WITH_VALUE.fullmatch(option)) and m[1].lower() == "bitmask":
            bitmask = c_integer(f"{name} bitmask", m[2], 0, 2**32 - 1)
        else:
            raise RuleError(f"{name}: unknown option {option!r}")
    return ByteTestStep(common.read(nbytes, offset), op, negated, test, bitmask)


class _ReadOptions:
    """The options byte_test and byte_jump share: relative, string, a base, the order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.relative = self.little = self.string = False
        self.base: int | None = None

    def take(self, option: str) -> bool:
        """Whether `option` is one of them (then it is taken)."""
        word = option.lower()
        if option == "relative":  # Suricata compares this one case-sensitively
            self.relative = True
        elif word == "string":
            self.string = True
        elif word in _BASES:
            if self.base is not None and self.base != _BASES[word]:
                raise RuleError(f"{self.name}: give one base (dec, hex or oct), not two")
            self.base = _BASES[word]
        elif word in ("big", "little"):
            self.little = word == "little"
        elif word == "dce":
            raise refuse_dce(self.name)
        else:
            return False
        return True

    def read(self, nbytes: Num, offset: Num) -> Read:
        _check_nbytes(self.name, nbytes, self.string)
        if self.base is not None and not self.string:
            raise RuleError(f"{self.name}: a base (dec, hex, oct) needs string")
        base = (self.base or 0) if self.string else None
        return Read(nbytes, offset, self.relative, self.little, base)


def parse_byte_jump(value: str | None, known: Container[str]) -> ByteJumpStep:
    name = "byte_jump"
    parts = _split(name, value, 2, 11, "<bytes>, <offset>[, options]")
    nbytes = _var(name, parts[0], known) or parse_int(f"{name} bytes", parts[0], 0, 2**32 - 1)
    offset = _var(name, parts[1], known) or parse_int(f"{name} offset", parts[1], -65535, 65535)
    common, align = _ReadOptions(name), False
    origin, multiplier, post_offset = "cursor", 1, 0
    for option in parts[2:]:
        word, m = option.lower(), _WITH_VALUE.fullmatch(option)
        if common.take(option):
            continue
        if word == "align":
            align = True
        elif word in ("from_beginning", "from_end"):
            if origin not in ("cursor", word[5:]):
                raise RuleError(f"{name}: from_end and from_beginning cannot both be given")
            origin = word[5:]
        elif m and m[1].lower() == "multiplier":
            multiplier = parse_int(f"{name} multiplier", m[2], 1, 65535)
        elif m and m[1].lower() == "post_offset":
            post_offset = parse_int(f"{name} post_offset", m[2], -65535, 65535)
        else:
            raise RuleError(f"{name}: unknown option {option!r}")
    return ByteJumpStep(common.read(nbytes, offset), multiplier, align, origin, post_offset)


def parse_byte_extract(value: str | None, known: Container[str]) -> ByteExtractStep:
    name = "byte_extract"
    parts = _split(name, value, 3, 10, "<bytes>, <offset>, <name>[, options]")
    nbytes = parse_int(f"{name} bytes", parts[0], 0, 255)
    offset = parse_int(f"{name} offset", parts[1], -32768, 32767)
    var = _name(name, parts[2])
    given: set[str] = set()
    little, base, align, multiplier = False, None, 0, 1
    for option in parts[3:]:
        word, _, arg = option.partition(" ")
        kind = {"little": "endian", "big": "endian", "dec": "base", "hex": "base"}.get(word, word)
        kind = "base" if word == "oct" else kind
        if kind in given:
            raise RuleError(f"{name}: {kind} given twice")
        given.add(kind)
        if word in ("big", "little"):
            little = word == "little"
        elif word in _BASES:
            if "string" not in given:
                raise RuleError(f"{name}: {word} must follow string")
            base = _BASES[word]
        elif word == "align":
            if arg.strip() not in ("2", "4"):
                raise RuleError(f"{name}: align must be 2 or 4, got {arg.strip()!r}")
            align = int(arg)
        elif word == "multiplier":
            multiplier = parse_int(f"{name} multiplier", arg, 1, 65535)
        elif word == "dce":
            raise refuse_dce(name)
        elif word not in ("relative", "string"):
            raise RuleError(f"{name}: unknown option {option!r}")
    string, relative, endian = "string" in given, "relative" in given, "endian" in given
    if string and endian:
        raise RuleError(f"{name}: string and big/little cannot both be given")
    most = {8: 23, 10: 20, 16: 14}[base or 10]
    _check_nbytes(name, nbytes, string, most)
    read = Read(nbytes, offset, relative, little, (base or 10) if string else None)
    return ByteExtractStep(read, var, multiplier, align)


def _name(keyword: str, text: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", text):
        raise RuleError(f"{keyword}: variable name must be a letter then letters, digits or _")
    return text


def parse_byte_math(value: str | None, known: Container[str]) -> ByteMathStep:
    name = "byte_math"
    form = (
        "bytes N, offset N, oper OP, rvalue V, result NAME"
        "[, relative][, endian E][, string B][, bitmask M]"
    )
    items = _split(name, value, 5, 10, form)
    got: dict[str, str] = {}
    for item in items:
        word, _, arg = item.partition(" ")
        if word in got:
            raise RuleError(f"{name}: {word} given twice")
        if word == "dce" or (word == "endian" and arg.strip() == "dce"):
            raise refuse_dce(name)
        if word not in _MATH_WORDS:
            raise RuleError(f"{name}: unknown option {word!r}")
        got[word] = arg.strip()
    missing = [w for w in ("bytes", "offset", "oper", "rvalue", "result") if w not in got]
    if missing:
        raise RuleError(f"{name}: missing {', '.join(missing)} (expects {form})")
    nbytes = _var(name, got["bytes"], known) or parse_int(f"{name} bytes", got["bytes"], 1, 10)
    offset = parse_int(f"{name} offset", got["offset"], -65535, 65535)
    if got["oper"] not in ("+", "-", "*", "/", "<<", ">>"):
        raise RuleError(f"{name}: oper must be one of + - * / << >>, got {got['oper']!r}")
    rvalue = _var(name, got["rvalue"], known) or parse_int(
        f"{name} rvalue", got["rvalue"], 0, 2**32 - 1
    )
    if got["oper"] in ("<<", ">>") and isinstance(nbytes, int) and nbytes > 4:
        raise RuleError(f"{name}: bytes must be 1..4 with << or >>, got {nbytes}")
    endian = got.get("endian", "big")
    if endian not in ("big", "little"):
        raise RuleError(f"{name}: endian must be big or little, got {endian!r}")
    base = got.get("string")
    if base is not None and base not in _BASES:
        raise RuleError(f"{name}: string must be hex, dec or oct, got {base!r}")
    bitmask = None
    if "bitmask" in got:
        digits = got["bitmask"].removeprefix("0x").removeprefix("0X")
        if not re.fullmatch(r"[0-9a-fA-F]{1,8}", digits):
            raise RuleError(f"{name}: bitmask must be a hex number of 32 bits, got {digits!r}")
        bitmask = int(digits, 16)
    read = Read(nbytes, offset, "relative" in got, endian == "little", _BASES.get(base or ""))
    return ByteMathStep(read, got["oper"], rvalue, _name(name, got["result"]), bitmask)


_MATH_WORDS = frozenset(
    {"bytes", "offset", "oper", "rvalue", "result", "relative", "endian", "string", "bitmask"}
)
