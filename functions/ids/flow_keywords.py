"""Flow keywords of IDS rules (a helper of snf.functions.ids): flow, flowbits,
threshold and detection_filter, compiled once; evaluated against a packet's
flow (flows.py) and the partition's threshold counters.

Suricata's semantics (docs/functions/ids.md, "Flows"):

- `flow`: established / not_established / stateless, to_server (from_client)
  / to_client (from_server), only_stream (the stream only, as a tcp-stream
  rule) / no_stream (single packets only, as a tcp-pkt rule).
- `flowbits`: set, unset, toggle (a name), isset, isnotset (a name, or names
  joined by `|` (any) or `&` (all)), noalert. Within one packet, rules that
  set bits are looked at before rules that test them, as Suricata orders them.
- `threshold` (type limit | threshold | both) and `detection_filter`, with
  track by_src | by_dst | by_rule | by_both, count and seconds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .specs import RuleError

__all__ = [
    "FLOW_KEYWORDS",
    "FlowSpec",
    "FlowVars",
    "Flowbits",
    "Flowint",
    "StreamSize",
    "Threshold",
    "compile_flow",
    "compile_flowbits",
    "compile_flowint",
    "compile_stream_size",
    "compile_threshold",
    "phase",
]

FLOW_KEYWORDS = frozenset(
    {"flow", "flowbits", "flowint", "threshold", "detection_filter", "stream_size"}
)
_INT_TESTS = {
    "==": int.__eq__, "!=": int.__ne__, "<": int.__lt__, "<=": int.__le__,
    ">": int.__gt__, ">=": int.__ge__,
}  # fmt: skip
_SIZE_OPS = {
    ">": int.__gt__, "<": int.__lt__, "=": int.__eq__, "!=": int.__ne__,
    ">=": int.__ge__, "<=": int.__le__,
}  # fmt: skip
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_TRACKS = ("by_src", "by_dst", "by_rule", "by_both")


class FlowSpec(NamedTuple):
    established: bool | None  # None: either
    to_server: bool | None  # None: either direction
    stream: bool | None = None  # only_stream: True, no_stream: False, None: either


class Flowbits(NamedTuple):
    """One rule's flowbits: conditions (all must hold) and the changes it makes."""

    isset: tuple[tuple[str, tuple[str, ...]], ...]  # ("any" | "all", names)
    isnotset: tuple[tuple[str, tuple[str, ...]], ...]
    changes: tuple[tuple[str, str], ...]  # (set | unset | toggle, name), in rule order
    noalert: bool

    @property
    def phase(self) -> int:
        """Suricata's order within a packet: rules that only change bits, then rules
        that test and change, then rules that only test."""
        tests = bool(self.isset or self.isnotset)
        return 1 if tests and self.changes else 2 if tests else 0

    def holds(self, bits: set[str]) -> bool:
        for how, names in self.isset:
            hit = [n in bits for n in names]
            if not (any(hit) if how == "any" else all(hit)):
                return False
        for how, names in self.isnotset:
            miss = [n not in bits for n in names]
            if not (any(miss) if how == "any" else all(miss)):
                return False
        return True

    def apply(self, bits: set[str]) -> None:
        for op, name in self.changes:
            if op == "set":
                bits.add(name)
            elif op == "unset" or name in bits:
                bits.discard(name)
            else:
                bits.add(name)


class StreamSize(NamedTuple):
    """stream_size: the bytes a side sent, by its sequence numbers (next - ISN)."""

    side: str  # server | client | both | either
    op: str
    value: int

    def holds(self, client: int, server: int) -> bool:
        test = _SIZE_OPS[self.op]
        if self.side == "client":
            return test(client, self.value)
        if self.side == "server":
            return test(server, self.value)
        both = (test(client, self.value), test(server, self.value))
        return all(both) if self.side == "both" else any(both)


def compile_stream_size(values: Sequence[str | None]) -> StreamSize | None:
    """A rule's `stream_size:<server|client|both|either>,<op>,<bytes>` (None: none)."""
    if not values:
        return None
    if len(values) > 1:
        raise RuleError("stream_size may appear once per rule")
    parts = [p.strip() for p in (values[0] or "").split(",")]
    if len(parts) != 3 or parts[0] not in ("server", "client", "both", "either"):
        raise RuleError(
            f"stream_size expects <server|client|both|either>,<op>,<bytes>, got {values[0]!r}"
        )
    if parts[1] not in _SIZE_OPS:
        raise RuleError(f"stream_size: the operator must be one of {', '.join(_SIZE_OPS)}")
    if not parts[2].isdigit() or int(parts[2]) >= 1 << 32:
        raise RuleError(f"stream_size expects a byte count 0..4294967295, got {parts[2]!r}")
    return StreamSize(parts[0], parts[1], int(parts[2]))


@dataclass
class FlowVars:
    """A flow's variables while its packet is judged: flowbits and flowints."""

    bits: set[str] = field(default_factory=set)
    ints: dict[str, int] = field(default_factory=dict)


class Flowint(NamedTuple):
    """One rule's flowint keywords: checks (all must hold) and changes, in rule order.
    A value is a number or another flowint's name."""

    checks: tuple[tuple[str, str, int | str | None], ...]
    changes: tuple[tuple[str, str, int | str], ...]

    def holds(self, ints: dict[str, int]) -> bool:
        for name, op, value in self.checks:
            if op == "isset" or op == "notset":
                if (name in ints) != (op == "isset"):
                    return False
                continue
            other = ints.get(value) if isinstance(value, str) else value
            if name not in ints or other is None or not _INT_TESTS[op](ints[name], other):
                return False
        return True

    def apply(self, ints: dict[str, int]) -> None:
        for name, op, value in self.changes:
            amount = ints.get(value) if isinstance(value, str) else value
            if amount is None:
                continue  # a variable not set: Suricata leaves the target alone
            if op == "=":
                ints[name] = amount
            else:
                ints[name] = ints.get(name, 0) + (amount if op == "+" else -amount)


def compile_flowint(values: Sequence[str | None]) -> Flowint | None:
    """A rule's `flowint:name,op[,value]` options (None: it has none)."""
    if not values:
        return None
    checks, changes = [], []
    for text in values:
        parts = [p.strip() for p in (text or "").split(",")]
        name, op = [*parts, "", ""][:2]
        if not _NAME.fullmatch(name):
            raise RuleError(f"flowint expects a variable name first, got {name!r}")
        if op in ("isset", "notset", "isnotset"):
            if len(parts) != 2:
                raise RuleError(f"flowint:{name},{op} takes no value")
            checks.append((name, "notset" if op == "isnotset" else op, None))
            continue
        if (op not in _INT_TESTS and op not in ("+", "-", "=")) or len(parts) != 3:
            raise RuleError(
                "flowint expects name,<+|-|=|==|!=|<|<=|>|>=>,value or name,isset|notset, "
                f"got {text!r}"
            )
        value = _int_value(parts[2])
        (
            checks.append((name, op, value))
            if op in _INT_TESTS
            else changes.append((name, op, value))
        )
    return Flowint(tuple(checks), tuple(changes))


def _int_value(text: str) -> int | str:
    if text.isdigit() and int(text) < 1 << 32:
        return int(text)
    if _NAME.fullmatch(text) and not text[0].isdigit():
        return text
    raise RuleError(f"flowint expects a value 0..4294967295 or a variable, got {text!r}")


def phase(flowbits: Flowbits | None, flowint: Flowint | None) -> int:
    """Suricata's order within a packet: rules that only change flow variables, then
    rules that test and change, then rules that only test (and the rest)."""
    tests = bool(flowbits and (flowbits.isset or flowbits.isnotset)) or bool(
        flowint and flowint.checks
    )
    changes = bool(flowbits and flowbits.changes) or bool(flowint and flowint.changes)
    if not tests and not changes:
        return 0
    return 1 if tests and changes else 2 if tests else 0


class Threshold(NamedTuple):
    kind: str  # limit | threshold | both | detection_filter
    track: str  # by_src | by_dst | by_rule | by_both
    count: int
    seconds: int


def compile_flow(values: Sequence[str | None]) -> FlowSpec | None:
    """The FlowSpec of a rule's `flow` options (None: it has none)."""
    if not values:
        return None
    if len(values) > 1:
        raise RuleError("flow may appear once per rule")
    words = [w.strip().lower() for w in (values[0] or "").split(",")]
    established: bool | None = None
    to_server: bool | None = None
    state_given = False
    stream: bool | None = None
    for word in words:
        if word in ("established", "not_established", "stateless"):
            if state_given:
                raise RuleError(f"flow: {word} conflicts with an earlier state")
            state_given = True
            established = None if word == "stateless" else word == "established"
        elif word in ("to_server", "from_client", "to_client", "from_server"):
            if to_server is not None:
                raise RuleError("flow: give one direction")
            to_server = word in ("to_server", "from_client")
        elif word in ("no_stream", "only_stream"):
            if stream is not None:
                raise RuleError("flow: give only_stream or no_stream, not both")
            stream = word == "only_stream"  # as tcp-stream, or as tcp-pkt (stream.py)
        else:
            raise RuleError(
                f"flow expects established, not_established, stateless, to_server, "
                f"to_client, from_server, from_client or no_stream, got {word!r}"
            )
    if established is None and to_server is None and stream is None:
        return None  # stateless: matches whatever the flow, inside tunnels too
    return FlowSpec(established, to_server, stream)


def _names(op: str, text: str) -> tuple[str, tuple[str, ...]]:
    if "|" in text and "&" in text:
        raise RuleError(f"flowbits:{op}: mix of | and & in {text!r}")
    how = "all" if "&" in text else "any"
    names = tuple(n.strip() for n in re.split(r"[|&]", text))
    if not all(_NAME.fullmatch(n) for n in names):
        raise RuleError(f"flowbits:{op} expects a name (letters, digits, _ . -), got {text!r}")
    if len(names) > 1 and op not in ("isset", "isnotset"):
        raise RuleError(f"flowbits:{op} takes one name, got {text!r}")
    return how, names


def compile_flowbits(values: Sequence[str | None]) -> Flowbits | None:
    """The Flowbits of a rule's `flowbits` options (None: it has none)."""
    if not values:
        return None
    isset, isnotset, changes, noalert = [], [], [], False
    for value in values:
        op, _, rest = (value or "").partition(",")
        op = op.strip().lower()
        if op == "noalert":
            if rest.strip():
                raise RuleError("flowbits:noalert takes no name")
            noalert = True
            continue
        if op not in ("set", "unset", "toggle", "isset", "isnotset"):
            raise RuleError(
                f"flowbits expects set, unset, toggle, isset, isnotset or noalert, got {op!r}"
            )
        how, names = _names(op, rest.strip())
        if op == "isset":
            isset.append((how, names))
        elif op == "isnotset":
            isnotset.append((how, names))
        else:
            changes.append((op, names[0]))
    return Flowbits(tuple(isset), tuple(isnotset), tuple(changes), noalert)


def compile_threshold(name: str, values: Sequence[str | None]) -> Threshold | None:
    """A rule's `threshold` or `detection_filter` (None: it has neither)."""
    if not values:
        return None
    if len(values) > 1:
        raise RuleError(f"{name} may appear once per rule")
    fields: dict[str, str] = {}
    for part in (values[0] or "").split(","):
        key, _, val = part.strip().partition(" ")
        if not key or not val.strip() or key in fields:
            raise RuleError(f"{name} expects 'type T, track K, count N, seconds S', got {part!r}")
        fields[key] = val.strip()
    want = {"track", "count", "seconds"} | ({"type"} if name == "threshold" else set())
    if set(fields) != want:
        raise RuleError(f"{name} expects exactly {', '.join(sorted(want))}, got {sorted(fields)}")
    kind = fields.get("type", "detection_filter")
    if kind not in ("limit", "threshold", "both", "detection_filter"):
        raise RuleError(f"threshold type must be limit, threshold or both, got {kind!r}")
    if fields["track"] not in _TRACKS:
        raise RuleError(f"{name} track must be one of {', '.join(_TRACKS)}")
    numbers = []
    for key in ("count", "seconds"):
        if not fields[key].isdigit() or not 1 <= int(fields[key]) <= 2**31:
            raise RuleError(f"{name} {key} expects a positive integer, got {fields[key]!r}")
        numbers.append(int(fields[key]))
    return Threshold(kind, fields["track"], numbers[0], numbers[1])
