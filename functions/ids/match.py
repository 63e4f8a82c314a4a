"""IDS matching (a helper of snf.functions.ids): headers by intervals, contents by Aho-Corasick.

One pass of a Rust automaton (ahocorasick-rs, a DFA over bytes) over a packet's payload finds the
fast pattern of every rule for its protocol at once (payload.fast_pattern:
the content marked fast_pattern, else the longest): case-sensitive ones in one
automaton over the payload, `nocase` ones (lowercased) in a second over a
lowercased copy; one such pair per protocol group (TCP, UDP, ICMP/ICMPv6,
other), `ip` rules in all. Only rules whose fast pattern occurred run their
payload program; rules without one are indexed by protocol. No per-packet loop
runs over all the rules, so the cost grows with the matches, not the rules.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import ahocorasick_rs

from .rules import Rule
from .specs import ADDR_ANY, PORT_ANY, Space

__all__ = ["MalformedPayload", "Matcher", "payload_span"]

_GROUP = {6: 6, 17: 17, 1: 1, 58: 1}  # protocol -> automaton group; any other: -1
_ALL_GROUPS = frozenset({6, 17, 1, -1})
# Header check of one rule: (protos or None, src, sport, dst, dport, bidirectional).
# Each of src/dst is None (any) or per family (starts, ends); sport/dport likewise.
Check = tuple[list[int], list[int]] | None


class MalformedPayload(ValueError):
    """A TCP data offset that is shorter than 20 bytes or runs past the segment."""


def payload_span(
    buf: bytes, base: int, size: int, version: int, proto: int, l3: int, l4: int
) -> tuple[int, int]:
    """(start, end) in `buf` of the payload of the packet at buf[base : base + size].

    TCP: after the data offset; UDP: after 8 bytes; ICMP/ICMPv6: after 8 bytes;
    anything else: the IP payload (after IPv6 extension headers). The end is
    the IP total (payload) length or the captured end, whichever comes first.
    Empty (start >= end) when there is no L4 header (l4 < 0).
    """
    if l4 < 0:
        return 0, 0
    at = base + l3
    if version == 4:
        end = at + (buf[at + 2] << 8 | buf[at + 3])
    else:
        plen = buf[at + 4] << 8 | buf[at + 5]
        end = at + 40 + plen if plen else base + size  # 0: jumbogram, to the captured end
    if end > base + size:
        end = base + size
    start = base + l4
    if proto == 6:
        off = (buf[start + 12] >> 4) << 2
        if off < 20 or start + off > end:
            raise MalformedPayload(f"bad tcp data offset {off}")
        start += off
    elif proto == 17 or proto == 1 or proto == 58:
        start += 8
    return start, end


def _automaton(words: dict[bytes, int]) -> tuple[Any, list[int]] | None:
    """A byte automaton over the patterns (overlapping matches: every pattern that
    occurs is found) and each pattern's id, or None without patterns."""
    if not words:
        return None
    patterns = list(words)
    automaton = ahocorasick_rs.BytesAhoCorasick(
        patterns, implementation=ahocorasick_rs.Implementation.DFA
    )
    return automaton, [words[p] for p in patterns]


def _space_check(space: Space, anything: Space) -> tuple[Check, ...] | None:
    if space == anything:
        return None
    return tuple(([lo for lo, _ in iv], [hi for _, hi in iv]) if iv else None for iv in space)


def _port_check(space: Space) -> Check:
    checks = _space_check(space, PORT_ANY)
    return None if checks is None else checks[0]


def _inside(check: Check, value: int) -> bool:
    if check is None:  # this family has no interval at all
        return False
    j = bisect_right(check[0], value) - 1
    return j >= 0 and value <= check[1][j]


def _side(addrs: tuple[Check, ...] | None, ports: Check, fam: int, addr: int, port: int) -> bool:
    if addrs is not None and not _inside(addrs[fam], addr):
        return False
    return ports is None or _inside(ports, port)


class Matcher:
    """Every rule of one ruleset; match() gives the indices (into self.rules) that match."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules: list[Rule] = sorted(rules, key=lambda r: (r.gid, r.sid))
        self._heads = [
            (
                None if r.protos is None else frozenset(r.protos),
                _space_check(r.src, ADDR_ANY),
                _port_check(r.sport),
                _space_check(r.dst, ADDR_ANY),
                _port_check(r.dport),
                r.bidirectional,
            )
            for r in self.rules
        ]
        self._programs = [r.payload for r in self.rules]
        # One automaton pair (case-sensitive, nocase) per protocol group, over each
        # rule's fast pattern, so that a udp rule's pattern costs nothing on TCP
        # payloads; `ip` rules are in all. A rule is looked at only when its fast
        # pattern occurs; its whole payload program then decides.
        pids: dict[tuple[bytes, bool], int] = {}
        words: dict[int, tuple[dict[bytes, int], dict[bytes, int]]] = {}  # group -> pattern -> pid
        self._anchored: dict[int, list[int]] = {}
        unanchored: dict[int | None, list[int]] = {}
        self._inspected: set[int] = set()  # groups whose payload a rule reads
        for index, rule in enumerate(self.rules):
            groups = _ALL_GROUPS if rule.protos is None else {_GROUP[p] for p in rule.protos}
            if rule.payload is not None:
                self._inspected |= groups
            if rule.fast is None:
                for proto in rule.protos or (None,):
                    unanchored.setdefault(proto, []).append(index)
                continue
            pattern, nocase = rule.fast
            key = (pattern.lower() if nocase else pattern, nocase)
            pid = pids.setdefault(key, len(pids))
            for group in groups:
                words.setdefault(group, ({}, {}))[nocase].setdefault(key[0], pid)
            self._anchored.setdefault(pid, []).append(index)
        # group -> ((automaton, pid per pattern index) or None) for (case, nocase)
        self._automata = {
            group: tuple(_automaton(w) for w in pair) for group, pair in words.items()
        }
        # Rules without a fast pattern, per IP protocol; `ip` rules (key None) apply to
        # all. A non-first fragment has no payload: only `ip` rules without one meet it.
        any_proto = unanchored.get(None, [])
        self._unanchored = {
            p: sorted(idx + any_proto) for p, idx in unanchored.items() if p is not None
        }
        self._unanchored_other = any_proto
        self._fragment_rules = [i for i in any_proto if self.rules[i].payload is None]

    def scans(self, proto: int) -> bool:
        """Whether a rule could read the payload of a packet of this IP protocol."""
        return _GROUP.get(proto, -1) in self._inspected

    def _found(self, payload: bytes, proto: int) -> set[int]:
        """The pattern ids whose fast pattern occurs in the payload."""
        pair = self._automata.get(_GROUP.get(proto, -1))
        if pair is None:
            return set()
        found: set[int] = set()
        case, nocase = pair
        if case is not None:
            automaton, ids = case
            found.update(ids[k] for k, _, _ in automaton.find_matches_as_indexes(payload, True))
        if nocase is not None:
            automaton, ids = nocase
            lowered = payload.lower()
            found.update(ids[k] for k, _, _ in automaton.find_matches_as_indexes(lowered, True))
        return found

    def _header(
        self, index: int, version: int, proto: int, src: int, dst: int, sp: int, dp: int
    ) -> bool:
        protos, s, sport, d, dport, bidirectional = self._heads[index]
        if protos is not None and proto not in protos:
            return False
        fam = 0 if version == 4 else 1
        if _side(s, sport, fam, src, sp) and _side(d, dport, fam, dst, dp):
            return True
        return bidirectional and _side(s, sport, fam, dst, dp) and _side(d, dport, fam, src, sp)

    def match(
        self,
        version: int,
        proto: int,
        later_fragment: bool,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        payload: bytes,
    ) -> list[int]:
        """Indices of the rules whose header and payload parts match, in (gid, sid) order.

        Header keywords (HeaderProgram) are the caller's: they read the raw packet.
        """
        src_int = int.from_bytes(src, "big")
        dst_int = int.from_bytes(dst, "big")
        header, programs = self._header, self._programs
        if later_fragment:
            candidates = self._fragment_rules
        else:
            candidates = self._unanchored.get(proto, self._unanchored_other)
        out = [
            i
            for i in candidates
            if header(i, version, proto, src_int, dst_int, sport, dport)
            and (programs[i] is None or programs[i].match(payload))  # type: ignore[union-attr]
        ]
        if payload and not later_fragment and self.scans(proto):
            found = len(out)
            anchored = self._anchored
            for pid in self._found(payload, proto):
                for i in anchored.get(pid, ()):
                    if header(i, version, proto, src_int, dst_int, sport, dport) and programs[
                        i
                    ].match(payload):  # type: ignore[union-attr]
                        out.append(i)
            if len(out) > found:
                out.sort()
        return out
