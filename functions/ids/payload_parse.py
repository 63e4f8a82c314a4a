"""A rule's payload options -> its steps (a helper of snf.functions.ids.payload).

The options come in rule order, as options.split_options yields them. As in
Suricata's rule parser, a modifier applies to the last content before it, and
each relative keyword marks the match it depends on; those marks later tell
the engine where to look for a next occurrence. Every check is listed in
docs/functions/ids-payload.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from .options import content_bytes as _content_bytes
from .payload_bytes import parse_byte_extract, parse_byte_jump, parse_byte_math, parse_byte_test
from .payload_steps import (
    ByteExtractStep,
    ByteMathStep,
    ContentStep,
    IsdataatStep,
    Num,
    PcreStep,
    SizeStep,
    Step,
    UintSpec,
    compile_regex,
    parse_int,
    parse_uint,
)
from .specs import RuleError

__all__ = ["PAYLOAD_KEYWORDS", "Compiled", "compile_options"]

DISTANCE_MAX = 1 << 20  # Suricata: |distance| and |within| at most 1 MiB
# pcre flags that pick an HTTP buffer instead of the packet payload.
_BUFFER_FLAGS = {
    "U": "the normalized HTTP URI", "I": "the raw HTTP URI", "P": "the HTTP request body",
    "Q": "the HTTP response body", "H": "the HTTP headers", "D": "the raw HTTP headers",
    "M": "the HTTP method", "C": "the HTTP cookie", "S": "the HTTP status code",
    "Y": "the HTTP status message", "V": "the HTTP User-Agent", "W": "the HTTP host",
    "Z": "the raw HTTP host",
}  # fmt: skip
_CAPTURES = re.compile(r"/[A-Za-z]*\s*,\s*(?:pkt|flow|alert):")


class Compiled(NamedTuple):
    steps: tuple[Step, ...]
    dsize: UintSpec | None


@dataclass(eq=False)  # identity: two equal contents are still two keywords
class _Content:
    """A content while modifiers may still follow it."""

    pattern: bytes
    negated: bool
    nocase: bool = False
    rawbytes: bool = False
    offset: Num | None = None
    depth: Num | None = None
    distance: Num | None = None
    within: Num | None = None
    startswith: bool = False
    endswith: bool = False
    fast: str | tuple[int, int] | None = None
    within_next: bool = False  # a later keyword depends on this match (Suricata's flags)
    distance_next: bool = False

    def positioned(self) -> bool:
        return any(v is not None for v in (self.offset, self.depth, self.distance, self.within))


@dataclass(eq=False)
class _Pcre:
    step: PcreStep
    relative_next: bool = False


class _Compiler:
    def __init__(self) -> None:
        self.items: list[Any] = []  # _Content, _Pcre or finished steps, in rule order
        self.known: set[str] = set()  # byte_extract / byte_math variables so far
        self.dsize: UintSpec | None = None

    # -- links between keywords ----------------------------------------------------

    def _before(self, index: int, kinds: tuple[type, ...]) -> Any:
        return next((i for i in reversed(self.items[:index]) if isinstance(i, kinds)), None)

    def _last_step(self) -> Any:
        """The keyword just before (bsize aside): a relative byte_*/isdataat marks it."""
        return next((i for i in reversed(self.items) if not isinstance(i, SizeStep)), None)

    def _last_content(self, name: str, value: str | None, takes_value: bool | None) -> _Content:
        """The content a modifier applies to; takes_value None: the value is optional."""
        content = self._before(len(self.items), (_Content,))
        if content is None:
            raise RuleError(f"{name} needs a content before it")
        if takes_value and not (value or "").strip():
            raise RuleError(f"{name} expects a value")
        if takes_value is False and value is not None:
            raise RuleError(f"{name} takes no value, got {value!r}")
        return content

    def _number(self, name: str, value: str, lo: int, hi: int) -> Num:
        text = value.strip()
        if text[:1].isalpha():
            if text not in self.known:
                raise RuleError(
                    f"{name}: unknown variable {text!r} (byte_extract or byte_math must "
                    "define it first)"
                )
            return text
        return parse_int(name, text, lo, hi, "an integer or a byte_extract variable,")

    # -- content and its modifiers -------------------------------------------------

    def content(self, name: str, value: str | None) -> None:
        text = (value or "").strip()
        negated = text.startswith("!")
        pattern = _content_bytes(text[1:].lstrip() if negated else text)
        self.items.append(_Content(pattern, negated))

    def flag(self, name: str, value: str | None) -> None:
        """nocase, rawbytes, endswith."""
        c = self._last_content(name, value, takes_value=False)
        if name != "endswith" and getattr(c, name):
            raise RuleError(f"{name} given twice for one content")
        setattr(c, name, True)

    def _position_checks(self, name: str, c: _Content) -> None:
        if c.startswith:
            raise RuleError(f"{name} cannot be mixed with startswith on one content")
        if c.negated and c.fast is not None:
            raise RuleError(f"{name} cannot modify a negated content that has fast_pattern")
        if c.fast == "only":
            raise RuleError(f"{name} cannot modify a content with fast_pattern:only")

    def position(self, name: str, value: str | None) -> None:
        """offset, depth (from the buffer start); distance, within (from the end of
        the previous match). The two kinds do not mix on one content."""
        c = self._last_content(name, value, takes_value=True)
        self._position_checks(name, c)
        if getattr(c, name) is not None:
            raise RuleError(f"{name} given twice for one content")
        others, lo, hi, bounds = _POSITIONS[name]
        if any(getattr(c, other) is not None for other in others):
            raise RuleError(f"{name} cannot be mixed with {'/'.join(others)} on one content")
        number = self._number(name, value or "", lo, hi)
        if bounds and isinstance(number, int) and number < len(c.pattern):
            raise RuleError(
                f"{name} must be >= the content's length ({len(c.pattern)} bytes), got {number}"
            )
        setattr(c, name, number)
        index = max(i for i, item in enumerate(self.items) if item is c)
        prev = self._before(index, (_Content, _Pcre))
        if isinstance(prev, _Content) and prev.fast == "only":
            raise RuleError(
                f"{name}: the content before has fast_pattern:only (no keyword "
                "can be relative to it)"
            )
        # Suricata: within, and a negated content's distance, make the previous
        # match worth retrying; a plain distance does not (a later occurrence
        # could only push the next search further out).
        _link(prev, within=name == "within" or c.negated, distance=name == "distance")

    def startswith(self, name: str, value: str | None) -> None:
        c = self._last_content(name, value, takes_value=False)
        if c.startswith:
            raise RuleError("startswith given twice for one content")
        if c.positioned():
            raise RuleError("startswith cannot be mixed with depth, offset, within or distance")
        self._position_checks(name, c)
        c.startswith, c.offset, c.depth = True, 0, len(c.pattern)

    def fast_pattern(self, name: str, value: str | None) -> None:
        c = self._last_content(name, value, takes_value=None)
        arg = (value or "").strip()
        if c.negated and c.positioned():
            raise RuleError(
                "fast_pattern cannot be used on a negated content with distance, within, "
                "offset or depth"
            )
        chop = re.fullmatch(r"([0-9]+)\s*,\s*([0-9]+)", arg)
        if not arg:
            if c.fast is not None:
                raise RuleError("fast_pattern given twice for one content")
            if any(isinstance(i, _Content) and i.fast is not None for i in self.items):
                raise RuleError("fast_pattern can be used on only one content in a rule")
            c.fast = ""
        elif arg == "only":
            if c.negated or c.positioned():
                raise RuleError(
                    "fast_pattern:only cannot be used on a negated content or with "
                    "distance, within, offset or depth"
                )
            c.fast = "only"
        elif chop:
            start = parse_int("fast_pattern offset", chop[1], 0, 65535)
            length = parse_int("fast_pattern length", chop[2], 0, 65535 - start)
            if start + length > len(c.pattern):
                raise RuleError(
                    f"fast_pattern offset + length ({start + length}) exceeds the content's "
                    f"length ({len(c.pattern)} bytes)"
                )
            c.fast = (start, length)
        else:
            raise RuleError(
                f"fast_pattern expects no value, only, or <offset>,<length>, got {value!r}"
            )

    # -- the other keywords ----------------------------------------------------------

    def isdataat(self, name: str, value: str | None) -> None:
        m = re.fullmatch(r"\s*(!?)\s*([^\s,]+)\s*(,\s*relative\s*)?(,\s*rawbytes\s*)?", value or "")
        if m is None:
            raise RuleError(f"isdataat expects [!]<offset>[, relative][, rawbytes], got {value!r}")
        offset = self._number("isdataat", m[2], 0, 65535)
        negated, relative = bool(m[1]), bool(m[3])
        prev = self._last_step()
        if relative and negated and offset == 1 and isinstance(prev, _Content):
            prev.endswith = True  # Suricata rewrites isdataat:!1,relative so
            return
        if relative:
            _link(prev, within=True, distance=True)
        self.items.append(IsdataatStep(offset, relative, negated))

    def pcre(self, name: str, value: str | None) -> None:
        negated, regex, flags = _pcre_parts(value)
        for flag in flags:
            if flag in _BUFFER_FLAGS:
                raise RuleError(
                    f"pcre: flag {flag!r} selects {_BUFFER_FLAGS[flag]} buffer; this IDS "
                    "inspects only the packet payload"
                )
            if flag not in "ismxAEGROB":
                raise RuleError(f"pcre: unknown flag {flag!r} (expected i s m x A E G R O B)")
        source = f"/{regex}/{flags}"
        step = PcreStep(
            source, compile_regex(regex, flags), negated, "R" in flags, "A" in flags, False
        )
        if step.relative:
            prev = self._before(len(self.items), (_Content, _Pcre))
            if prev is None:
                raise RuleError("pcre with R (relative) needs a content or pcre before it")
            _link(prev, within=True, distance=True)
        self.items.append(_Pcre(step))

    def dsize(self, name: str, value: str | None) -> None:
        if self.dsize is not None:
            raise RuleError("dsize given twice (one per rule)")
        self.dsize = parse_uint("dsize", value, 16)

    def bsize(self, name: str, value: str | None) -> None:
        self.items.append(SizeStep(parse_uint("bsize", value, 64)))

    def byte_keyword(self, name: str, value: str | None) -> None:
        step = _BYTE_PARSERS[name](value, self.known)
        if step.read.relative:
            if name == "byte_math" and self._before(len(self.items), (_Content, _Pcre)) is None:
                raise RuleError("byte_math: relative needs a content or pcre before it")
            _link(self._last_step(), within=True, distance=True)
        self.items.append(step)
        if isinstance(step, ByteExtractStep | ByteMathStep):
            self.known.add(step.name)

    def finish(self) -> Compiled:
        steps = tuple(_freeze(item) for item in self.items)
        sizes = [("dsize", self.dsize)] + [
            ("bsize", s.spec) for s in steps if isinstance(s, SizeStep)
        ]
        for keyword, spec in sizes:
            largest = spec.largest() if spec is not None else None
            for s in steps:
                if largest is None or not isinstance(s, ContentStep) or s.negated:
                    continue
                need = len(s.pattern) + (s.offset if isinstance(s.offset, int) else 0)
                if need > largest:
                    raise RuleError(
                        f"{keyword} allows at most {largest} bytes but content {s.pattern!r} "
                        f"needs {need}: the rule could never match"
                    )
        return Compiled(steps, self.dsize)


def _link(prev: Any, within: bool, distance: bool) -> None:
    if isinstance(prev, _Content):
        prev.within_next |= within
        prev.distance_next |= distance
    elif isinstance(prev, _Pcre):
        prev.relative_next = True


def _freeze(item: Any) -> Step:
    if isinstance(item, _Pcre):
        return replace(item.step, retry=item.relative_next)
    if not isinstance(item, _Content):
        return item  # type: ignore[no-any-return]
    c = item
    linked = c.positioned() or c.within_next or c.distance_next
    return ContentStep(
        c.pattern, c.pattern.lower() if c.nocase else c.pattern, c.nocase, c.negated,
        c.offset, c.depth, c.distance, c.within, c.endswith, c.fast,
        retry=c.within_next, single=not linked,
    )  # fmt: skip


def _pcre_parts(value: str | None) -> tuple[bool, str, str]:
    """!"/regex/flags" -> (negated, regex, flags); the regex keeps its backslashes."""
    text = (value or "").strip()
    negated = text.startswith("!")
    text = text[1:].lstrip() if negated else text
    if len(text) < 2 or text[0] != '"' or text[-1] != '"' or not text[1:].startswith("/"):
        raise RuleError(f'pcre expects a quoted "/regex/flags", got {value!r}')
    body = text[1:-1]
    if _CAPTURES.search(body):
        raise RuleError("pcre: capturing into pkt:, flow: or alert: variables is not supported")
    end = body.rfind("/")
    escapes = len(body[:end]) - len(body[:end].rstrip("\\"))
    if end == 0 or escapes % 2:
        raise RuleError(f"pcre: missing the closing '/' in {value!r}")
    return negated, body[1:end], body[end + 1 :]


# keyword -> (what it cannot mix with, lo, hi, whether it must cover the content)
_POSITIONS = {
    "offset": (("distance", "within"), 0, 65535, False),
    "depth": (("distance", "within"), 0, 65535, True),
    "distance": (("offset", "depth"), -DISTANCE_MAX, DISTANCE_MAX, False),
    "within": (("offset", "depth"), -DISTANCE_MAX, DISTANCE_MAX, True),
}
_BYTE_PARSERS: dict[str, Callable[..., Any]] = {
    "byte_test": parse_byte_test, "byte_jump": parse_byte_jump,
    "byte_extract": parse_byte_extract, "byte_math": parse_byte_math,
}  # fmt: skip
_HANDLERS: dict[str, Callable[[_Compiler, str, str | None], None]] = {
    "content": _Compiler.content,
    "nocase": _Compiler.flag, "rawbytes": _Compiler.flag, "endswith": _Compiler.flag,
    "offset": _Compiler.position, "depth": _Compiler.position,
    "distance": _Compiler.position, "within": _Compiler.position,
    "startswith": _Compiler.startswith, "fast_pattern": _Compiler.fast_pattern,
    "isdataat": _Compiler.isdataat, "pcre": _Compiler.pcre,
    "dsize": _Compiler.dsize, "bsize": _Compiler.bsize,
    **{name: _Compiler.byte_keyword for name in _BYTE_PARSERS},
}  # fmt: skip
PAYLOAD_KEYWORDS = frozenset(_HANDLERS)


def compile_options(options: Sequence[tuple[str, str | None]]) -> Compiled:
    """The steps of the payload options among `options` (others are skipped)."""
    compiler = _Compiler()
    for name, value in options:
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(compiler, name, value)
    return compiler.finish()
