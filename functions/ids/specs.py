"""Address and port specs of IDS rules (a helper of snf.functions.ids.rules).

    any | 10.0.0.0/8 | 2001:db8::1 | 80 | 1024:65535 | :1023 | 1024: | !x | [a, b, ...] | $VAR

A spec compiles to sorted, disjoint, inclusive intervals of ints, one list per
family: (IPv4, IPv6) for addresses, (ports,) for ports. Lists, negation and
variables are worked out exactly with interval union, complement and
intersection, so matching is a bisect per family.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import NoReturn

__all__ = ["ADDR_ANY", "PORT_ANY", "RuleError", "Space", "check_var", "parse_spec"]

Intervals = tuple[tuple[int, int], ...]  # sorted, disjoint, inclusive (lo, hi)
Space = tuple[Intervals, ...]  # one interval list per family: (v4, v6) or (ports,)

_ADDR_MAX = ((1 << 32) - 1, (1 << 128) - 1)
_PORT_MAX = (65535,)
ADDR_ANY: Space = tuple(((0, m),) for m in _ADDR_MAX)
PORT_ANY: Space = tuple(((0, m),) for m in _PORT_MAX)
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RuleError(ValueError):
    """A rule (or variable) that cannot be used; the caller adds where it is."""

    index: int | None = None  # position of the bad rule in its list (set by compile_rules)


class _VarLoop(RuleError):
    """Variables that expand into each other."""


# -- interval sets -------------------------------------------------------------


def _merge(ivs: Iterable[tuple[int, int]]) -> Intervals:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ivs):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def _complement(ivs: Intervals, top: int) -> Intervals:
    out, at = [], 0
    for lo, hi in ivs:
        if lo > at:
            out.append((at, lo - 1))
        at = hi + 1
    if at <= top:
        out.append((at, top))
    return tuple(out)


def _intersect(a: Intervals, b: Intervals) -> Intervals:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


# -- address and port specs ------------------------------------------------------


class _SpecParser:
    """Recursive descent over one address or port spec: !x, [a, b], $VAR, atoms."""

    def __init__(self, what: str, vars_: Mapping[str, str], port: bool) -> None:
        self.what, self.vars, self.port = what, vars_, port
        self.tops = _PORT_MAX if port else _ADDR_MAX

    def parse(self, text: str, seen: tuple[str, ...] = ()) -> Space:
        self.text, self.at, self.seen = "".join(text.split()), 0, seen
        space = self._spec()
        if self.at != len(self.text):
            self._fail(f"unexpected {self.text[self.at]!r}")
        return space

    def _fail(self, problem: str) -> NoReturn:
        raise RuleError(f"{self.what} {self.text!r}: {problem}")

    def _spec(self) -> Space:
        text = self.text
        if text.startswith("!", self.at):
            self.at += 1
            inner = self._spec()
            return tuple(_complement(iv, top) for iv, top in zip(inner, self.tops, strict=True))
        if text.startswith("[", self.at):
            self.at += 1
            positives: list[Space] = []
            negatives: list[Space] = []
            while True:
                (negatives if text.startswith("!", self.at) else positives).append(self._spec())
                if text.startswith(",", self.at):
                    self.at += 1
                elif text.startswith("]", self.at):
                    self.at += 1
                    break
                elif self.at < len(text):
                    self._fail(f"expected ',' or ']' in a list, found {text[self.at]!r}")
                else:
                    self._fail("missing ']'")
            # A list matches what any positive item matches and no negated item excludes.
            families = range(len(self.tops))
            space = tuple(_merge(iv for s in positives for iv in s[f]) for f in families)
            if not positives:
                space = tuple(((0, top),) for top in self.tops)
            for neg in negatives:
                space = tuple(_intersect(a, b) for a, b in zip(space, neg, strict=True))
            return space
        end = self.at
        while end < len(text) and text[end] not in ",]":
            end += 1
        atom, self.at = text[self.at : end], end
        if not atom:
            self._fail("expected a value" + (f" before {text[end]!r}" if end < len(text) else ""))
        if atom.startswith("$"):
            return self._var(atom[1:])
        if atom.lower() == "any":
            return PORT_ANY if self.port else ADDR_ANY
        return self._port(atom) if self.port else self._address(atom)

    def _var(self, name: str) -> Space:
        if not _VAR_NAME.fullmatch(name):
            self._fail(f"bad variable name ${name}")
        if name not in self.vars:
            self._fail(f"undefined variable ${name} (define it under vars)")
        if name in self.seen:
            path = " -> ".join(f"${n}" for n in (*self.seen, name))
            raise _VarLoop(f"variables refer to each other in a loop: {path}")
        try:
            inner = _SpecParser(self.what, self.vars, self.port)
            return inner.parse(self.vars[name], (*self.seen, name))
        except _VarLoop:
            raise
        except RuleError as exc:
            raise RuleError(f"in variable ${name}: {exc}") from None

    def _address(self, atom: str) -> Space:
        if "-" in atom:  # a range lo-hi, as Suricata accepts (no address holds a '-')
            return self._address_range(atom)
        try:
            net = ipaddress.ip_network(atom, strict=True)
        except ValueError as exc:
            self._fail(f"expected an address, a CIDR, any, [list], !x or $VAR, got {atom!r}: {exc}")
        span = (int(net.network_address), int(net.broadcast_address))
        return ((span,), ()) if net.version == 4 else ((), (span,))

    def _address_range(self, atom: str) -> Space:
        lo_text, _, hi_text = atom.partition("-")
        try:
            lo, hi = ipaddress.ip_address(lo_text), ipaddress.ip_address(hi_text)
        except ValueError as exc:
            self._fail(f"expected a range of two addresses lo-hi, got {atom!r}: {exc}")
        if lo.version != hi.version or int(lo) > int(hi):
            self._fail(f"expected a range lo-hi of one family with lo <= hi, got {atom!r}")
        span = (int(lo), int(hi))
        return ((span,), ()) if lo.version == 4 else ((), (span,))

    def _port(self, atom: str) -> Space:
        lo_text, colon, hi_text = atom.partition(":")
        if not colon:
            hi_text = lo_text
        numbers = []
        for part, default in ((lo_text, 0), (hi_text, 65535)):
            if not part and colon:
                numbers.append(default)
            elif part.isascii() and part.isdigit() and len(part) <= 5 and int(part) <= 65535:
                numbers.append(int(part))
            else:
                self._fail(f"expected a port 0..65535, a range lo:hi, :hi or lo:, got {atom!r}")
        if atom == ":" or numbers[0] > numbers[1]:
            self._fail(f"expected a range lo:hi with lo <= hi, got {atom!r}")
        return ((tuple(numbers),),)  # type: ignore[return-value]


def parse_spec(
    text: str, what: str, vars_: Mapping[str, str], *, port: bool, seen: tuple[str, ...] = ()
) -> Space:
    """An address (port=False) or port spec -> per-family intervals; never empty.

    `seen`: the variables being expanded (a variable met again is a loop).
    """
    space = _SpecParser(what, vars_, port).parse(text, seen)
    if not any(space):
        raise RuleError(f"{what} {text!r} matches no {'port' if port else 'address'}")
    return space


def check_var(name: str, vars_: Mapping[str, str]) -> None:
    """A variable must be a valid address spec or a valid port spec."""
    try:
        parse_spec(vars_[name], f"${name}", vars_, port=False, seen=(name,))
    except _VarLoop as loop:
        raise RuleError(str(loop)) from None
    except RuleError as as_address:
        try:
            parse_spec(vars_[name], f"${name}", vars_, port=True, seen=(name,))
        except RuleError as as_port:
            raise RuleError(
                f"neither an address spec ({as_address}) nor a port spec ({as_port})"
            ) from None
