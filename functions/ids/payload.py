"""Payload keywords of IDS rules: one compiled program per rule, run on one buffer.

Suricata's payload keywords (content and its modifiers, isdataat, dsize,
bsize, pcre, byte_test, byte_jump, byte_extract, byte_math) compile once into
an immutable PayloadProgram. PayloadProgram.match(payload) then inspects the
buffer the way Suricata's content inspection does: keywords in rule order, a
cursor at the end of the last match for relative ones, and, when a keyword
fails, the next occurrence of an earlier match it depends on (backtracking).
docs/functions/ids-payload.md has every keyword, its forms and what is refused.

    options = split_options('content:"a"; content:"b"; distance:0; within:1;')
    compile_payload(options).match(b"a ab")  # True: the second "a" is followed by "b"

Modules: payload_parse (options -> steps), payload_bytes (byte_* values),
payload_steps (the step records, integer forms, PCRE2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pcre2

from .payload_parse import PAYLOAD_KEYWORDS, compile_options
from .payload_steps import (
    ByteExtractStep,
    ByteJumpStep,
    ByteMathStep,
    ByteTestStep,
    ContentStep,
    IsdataatStep,
    Num,
    PcreStep,
    Read,
    SizeStep,
    Step,
    UintSpec,
    strtoull,
)

__all__ = ["PAYLOAD_KEYWORDS", "PayloadProgram", "compile_payload", "fast_pattern"]

RECURSION_LIMIT = 3000  # Suricata's default detect.inspection-recursion-limit
_U64 = 1 << 64


@dataclass(frozen=True, slots=True)
class PayloadProgram:
    """The payload part of one rule: its keywords in rule order, and dsize."""

    steps: tuple[Step, ...]
    dsize: UintSpec | None = None

    def match(self, payload: bytes) -> bool:
        """Whether the payload part of the rule matches this buffer."""
        if self.dsize is not None and not self.dsize.test(len(payload)):
            return False
        if not self.steps:
            return True
        if not payload and not all(isinstance(s, SizeStep) for s in self.steps):
            return False  # Suricata inspects no payload keyword on an empty payload
        return _Inspection(self.steps, payload).run(0, 0) == 1


def compile_payload(
    options: Sequence[tuple[str, str | None]], vars_: Mapping[str, str] | None = None
) -> PayloadProgram:
    """The program of a rule's payload options, given in rule order as (name, value|None).

    Options not in PAYLOAD_KEYWORDS are skipped. `vars_` (the rule variables)
    is accepted for symmetry with parse_rule: no payload keyword uses them.
    Raises RuleError naming the keyword and what was expected.
    """
    steps, dsize = compile_options(options)
    return PayloadProgram(steps, dsize)


def fast_pattern(program: PayloadProgram) -> tuple[bytes, bool] | None:
    """(pattern, nocase) for a multi-pattern prefilter, or None without a usable content.

    The content marked fast_pattern (its offset,length slice when chopped),
    else the longest non-negated content, first on a tie. A negated content
    cannot prefilter: a packet without it may match.
    """
    contents = [s for s in program.steps if isinstance(s, ContentStep) and not s.negated]
    pool = [s for s in contents if s.fast is not None] or contents
    if not pool:
        return None
    best = max(pool, key=lambda s: len(_fast_bytes(s)))
    return _fast_bytes(best), best.nocase


def _fast_bytes(step: ContentStep) -> bytes:
    if isinstance(step.fast, tuple) and step.fast[1]:
        start, length = step.fast
        return step.pattern[start : start + length]
    return step.pattern


# -- the inspection ---------------------------------------------------------------
# Each handler returns Suricata's three answers: 1 the rest of the rule matched,
# 0 no match here (an earlier match may try its next occurrence), -1 no match
# and give up the whole inspection.


class _Inspection:
    __slots__ = ("_folded", "buf", "calls", "size", "steps", "vars")

    def __init__(self, steps: tuple[Step, ...], buf: bytes) -> None:
        self.steps, self.buf, self.size = steps, buf, len(buf)
        self.vars: dict[str, int] = {}  # byte_extract / byte_math results
        self.calls = 0
        self._folded: bytes | None = None

    def run(self, i: int, pos: int) -> int:
        """Keyword i onwards, with the cursor at pos."""
        self.calls += 1
        if self.calls == RECURSION_LIMIT:
            return -1
        step = self.steps[i]
        return _HANDLERS[type(step)](self, i, pos, step)

    def next(self, i: int, pos: int) -> int:
        return 1 if i + 1 == len(self.steps) else self.run(i + 1, pos)

    def value(self, v: Num) -> int:
        return self.vars[v] if isinstance(v, str) else v

    def hay(self, nocase: bool) -> bytes:
        if not nocase:
            return self.buf
        if self._folded is None:
            self._folded = self.buf.lower()  # ASCII only, as Suricata's nocase
        return self._folded


def _content(ins: _Inspection, i: int, pos: int, c: ContentStep) -> int:
    hay, size, n = ins.hay(c.nocase), ins.size, len(c.needle)
    retry_from = 0
    while True:
        start, end = _window(ins, c, pos)
        start = retry_from or start  # a retry goes on after the previous hit
        end = min(end, size)
        if start > end or end <= 0:
            return ins.next(i, pos) if c.negated else 0
        if c.endswith:
            at = size - n
            found = at if end == size and at >= start and hay.startswith(c.needle, at) else -1
        else:
            found = hay.find(c.needle, start, end)
        if found < 0:
            if c.negated:
                return ins.next(i, pos)
            return 0 if c.relative else -1  # an absolute miss fails every retry too
        if c.negated:
            return -1 if c.single else 0
        r = ins.next(i, found + n)
        if r != 0:
            return r
        if not c.retry:
            return -1  # nothing after depends on where this content is
        retry_from = found + 1


def _window(ins: _Inspection, c: ContentStep, pos: int) -> tuple[int, int]:
    """[start, end) where the content may lie, before clipping to the buffer."""
    if not c.relative:
        start = 0 if c.offset is None else ins.value(c.offset)
        return start, ins.size if c.depth is None else start + ins.value(c.depth)
    distance = 0 if c.distance is None else ins.value(c.distance)
    start = max(pos + distance, 0)  # a negative distance stops at the buffer start
    if c.within is None:
        return start, ins.size
    return start, max(pos + distance + ins.value(c.within), 0)


def _pcre(ins: _Inspection, i: int, pos: int, p: PcreStep) -> int:
    base = pos if p.relative else 0
    subject = ins.buf[base:] if base else ins.buf  # /R: ^ is the previous match end
    at = 0
    while True:
        if at > len(subject):
            return 0
        try:
            m = (p.regex.match if p.anchored else p.regex.search)(subject, at)
        except pcre2.LibraryError:
            return 0  # the match limit: Suricata counts it as no match, negated or not
        if p.negated:
            if m is not None:
                return 0
            end, again = pos, 0
        else:
            if m is None:
                return 0
            end, again = base + m.end(), m.start() + 1
        r = ins.next(i, end)
        if r != 0 or not p.retry or not again:
            return r
        at = again  # a later keyword depends on this match: try the next one


def _isdataat(ins: _Inspection, i: int, pos: int, d: IsdataatStep) -> int:
    var = isinstance(d.offset, str)
    at = ins.value(d.offset)
    if var and at >= 100_000_000:  # Suricata's cap on a variable
        return ins.next(i, pos) if d.negated else 0
    there = pos + at <= ins.size if d.relative else at < ins.size
    if there != d.negated:
        return ins.next(i, pos)
    return 0 if var or (d.negated and d.relative) else -1


def _read(ins: _Inspection, pos: int, rd: Read, jump: bool = False) -> tuple[int, int, int] | None:
    """(value, where it starts, bytes used) of a byte_* keyword, or None."""
    nbytes, start = ins.value(rd.nbytes), ins.value(rd.offset)
    if isinstance(rd.nbytes, str) and nbytes > (23 if rd.base is not None else 8):
        return None
    start += pos if rd.relative else 0
    room = ins.size - start
    if rd.relative and room <= 0 and (nbytes or not jump):
        return None  # no relative base left (byte_jump may read 0 bytes at the end)
    if start < 0 or nbytes > room:
        return None
    if rd.base is None:
        if nbytes > 8:
            return None
        order = "little" if rd.little else "big"
        return int.from_bytes(ins.buf[start : start + nbytes], order), start, nbytes
    got = strtoull(ins.buf[start : start + nbytes], rd.base) if nbytes else None
    if got is None or got[1] == 0:
        return None  # no digits, or more than 64 bits
    return got[0], start, got[1]


def _masked(value: int, mask: int | None) -> int:
    """Suricata's bitmask: AND, then shift right by the mask's trailing zero bits."""
    if mask is None:
        return value
    value &= mask
    return value >> ((mask & -mask).bit_length() - 1) if value else 0


def _byte_test(ins: _Inspection, i: int, pos: int, t: ByteTestStep) -> int:
    got = _read(ins, pos, t.read)
    if got is None:
        return 0
    x, want = _masked(got[0], t.bitmask), ins.value(t.value)
    ok = _COMPARE[t.op](x, want)
    return ins.next(i, pos) if ok != t.negated else 0


_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "=": lambda x, v: x == v, "<": lambda x, v: x < v, ">": lambda x, v: x > v,
    "<=": lambda x, v: x <= v, ">=": lambda x, v: x >= v,
    "&": lambda x, v: x & v != 0, "^": lambda x, v: x ^ v != 0,  # Suricata: ^ is XOR != 0
}  # fmt: skip


def _byte_jump(ins: _Inspection, i: int, pos: int, j: ByteJumpStep) -> int:
    got = _read(ins, pos, j.read, jump=True)
    if got is None:
        return 0
    value, start, used = got
    value = value * j.multiplier % _U64
    if j.align and value % 4:
        value += 4 - value % 4
    value = (value + j.post_offset) % _U64
    value -= _U64 if value >= _U64 >> 1 else 0  # C reads it as int64
    to = {"beginning": value, "end": ins.size + value}.get(j.origin, start + used + value)
    if to > ins.size:
        return 0
    return ins.next(i, max(to, 0))  # before the start: the start


def _byte_extract(ins: _Inspection, i: int, pos: int, e: ByteExtractStep) -> int:
    got = _read(ins, pos, e.read)
    if got is None:
        return 0
    value, start, used = got
    value = value * e.multiplier % _U64
    if e.align and value % e.align:
        value += e.align - value % e.align
    ins.vars[e.name] = value % _U64
    return ins.next(i, start + used)  # the cursor moves past the bytes read


def _byte_math(ins: _Inspection, i: int, pos: int, m: ByteMathStep) -> int:
    got = _read(ins, pos, m.read)
    if got is None:
        return 0
    value, start, used = got
    r = ins.value(m.rvalue)
    if m.oper == "/" and r == 0:
        return 0  # Suricata: division by zero never matches
    shift_out = m.oper in ("<<", ">>") and r >= 64  # undefined in C; every bit shifted out
    value = 0 if shift_out else _MATH[m.oper](value, r) % _U64
    ins.vars[m.name] = _masked(value, m.bitmask)
    return ins.next(i, start + used)


_MATH: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": lambda a, b: a // b, "<<": lambda a, b: a << b, ">>": lambda a, b: a >> b,
}  # fmt: skip


def _bsize(ins: _Inspection, i: int, pos: int, s: SizeStep) -> int:
    return ins.next(i, pos) if s.spec.test(ins.size) else -1


_HANDLERS: dict[type, Callable[[_Inspection, int, int, Any], int]] = {
    ContentStep: _content, PcreStep: _pcre, IsdataatStep: _isdataat,
    ByteTestStep: _byte_test, ByteJumpStep: _byte_jump, ByteExtractStep: _byte_extract,
    ByteMathStep: _byte_math, SizeStep: _bsize,
}  # fmt: skip
