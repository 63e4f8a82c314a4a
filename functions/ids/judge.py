"""One packet against the rule set (a helper of snf.functions.ids): the matcher's
candidates, then header keywords, flow, flowbits and thresholds, then
Suricata's action order.

Flowbits: the rules that matched are taken in Suricata's order (rules that
only change bits, then those that test and change, then those that only
test; by (gid, sid) within each), each testing the bits as the ones before
it left them. Thresholds count in the function's `thresh` table, per (gid,
sid, tracked address), in packet time, as Suricata's detect-engine-threshold
does; a rule held back by its threshold neither alerts nor acts.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import NamedTuple

from snf.core.expiry import ExpiryIndex
from snf.core.tables import TableView

from .flow_keywords import FlowVars, Threshold, phase
from .flows import FlowInfo
from .match import Matcher, payload_span
from .rules import Rule
from .specs import Space
from .stream import joinable

__all__ = [
    "DEFAULT_ACTION_ORDER",
    "Counters",
    "Judge",
    "Packet",
    "RateFilter",
    "Suppression",
    "threshold_due",
]

_NS = 1_000_000_000
DEFAULT_ACTION_ORDER = ("pass", "drop", "reject", "alert")  # Suricata's default action-order
_FAMILY = {"rejectsrc": "reject", "rejectdst": "reject", "rejectboth": "reject"}


class Suppression(NamedTuple):
    """A compiled `suppress` entry (Suricata's threshold.config suppress line)."""

    gid: int
    sid: int
    track: str  # by_src | by_dst | by_either (with `space`)
    space: Space | None  # the addresses; None: every alert of the rule


def _in_space(space: Space, fam: int, addr: int) -> bool:
    ivs = space[fam]
    k = bisect_right(ivs, (addr, 1 << 129)) - 1
    return k >= 0 and ivs[k][0] <= addr <= ivs[k][1]


class Packet(NamedTuple):
    """Where one IP packet is in `buf` (absolute offsets) and its 5-tuple."""

    end: int
    version: int
    proto: int
    later: bool  # a non-first fragment
    src: bytes
    dst: bytes
    sport: int
    dport: int
    l3: int
    l4: int  # -1: no L4 header


class Counters(NamedTuple):
    """A partition's threshold counters: the table and its expiry index."""

    table: TableView
    due: ExpiryIndex


def threshold_due(key: bytes, value: list[int]) -> tuple[int, bool]:
    """[window start, count, window ns(, rate_filter's until)] -> when the entry may go."""
    return max(value[0] + value[2], value[3] if len(value) > 3 else 0) + 1, False


class RateFilter(NamedTuple):
    """A compiled rate_filter entry (Suricata's threshold.config rate_filter line)."""

    gid: int
    sid: int
    track: str  # by_src | by_dst | by_rule | by_both
    count: int
    seconds: int
    new_action: str
    timeout: int


def _tracked(track: str, pkt: Packet) -> bytes:
    return {"by_src": pkt.src, "by_dst": pkt.dst, "by_rule": b"", "by_both": pkt.src + pkt.dst}[
        track
    ]


def _rate(rf: RateFilter, entry: list[int] | None, now: int) -> tuple[int, list[int]]:
    """(until when the new action holds, the counter after this match): more than
    `count` matches within `seconds` switch the action for `timeout` seconds."""
    window = rf.seconds * _NS
    until = entry[3] if entry is not None else 0
    if entry is None or now - entry[0] >= window:
        start, count = now, 1
    else:
        start, count = entry[0], entry[1] + 1
    if count > rf.count and now >= until:
        until = now + rf.timeout * _NS
    return until, [start, count, window, until]


def _allowed(th: Threshold, entry: list[int] | None, now: int) -> tuple[bool, list[int]]:
    """Whether this match alerts, and the counter after it (Suricata's semantics)."""
    window = th.seconds * _NS
    fresh = entry is None or now - entry[0] >= window
    start, count = (now, 1) if fresh else (entry[0], entry[1] + 1)  # type: ignore[index]
    if th.kind == "limit":
        allow = count <= th.count
    elif th.kind == "both":
        allow = count == th.count
    elif th.kind == "detection_filter":
        allow = count > th.count
    else:  # threshold: every count-th match in the window
        allow = count >= th.count
        if allow:
            count = 0
    return allow, [start, count, window]


class Judge:
    """Decides packets for one rule set (the matcher's rules)."""

    def __init__(
        self,
        matcher: Matcher,
        action_order: Sequence[str] = DEFAULT_ACTION_ORDER,
        suppress: Sequence[Suppression] = (),
        rate_filters: Sequence[RateFilter] = (),
        window: int = 512,
    ) -> None:
        self.matcher = matcher
        self.window = window  # stream_window: the longest match joined across segments
        rules = matcher.rules
        rank = {a: k for k, a in enumerate(action_order)}
        self._order = {a: rank[_FAMILY.get(a, a)] for a in (*action_order, *_FAMILY)}
        index = {(r.gid, r.sid): j for j, r in enumerate(rules)}
        self._rates = {index[f.gid, f.sid]: f for f in rate_filters if (f.gid, f.sid) in index}
        self._suppress: dict[int, list[tuple[str, Space | None]]] = {}
        for sup in suppress:
            if (sup.gid, sup.sid) in index:
                self._suppress.setdefault(index[sup.gid, sup.sid], []).append(
                    (sup.track, sup.space)
                )
        # Within a packet, matched rules are looked at in this order (flowbits' phases).
        self._rank = {j: (phase(r.flowbits, r.flowint), r.gid, r.sid) for j, r in enumerate(rules)}
        # tcp-pkt rules match single packets only, as in Suricata; tcp and ip ones both.
        self._joinable = [joinable(r.payload) and not _packets_only(r) for r in rules]
        self.joins = any(self._joinable)  # no joinable rule: no carry to keep
        self.sizes = any(r.stream_size is not None for r in rules)
        self._stream_only = [_stream_only(r) for r in rules]
        self._stream_only_any = any(self._stream_only)

    def packet(
        self,
        buf: bytes,
        pkt: Packet,
        flow: FlowInfo | None,
        flowvars: FlowVars | None,
        counters: Counters | None,
        now: int,
        carry: bytes | None = None,
        payload: bytes | None = None,
        sizes: tuple[int, int] = (0, 0),
    ) -> tuple[list[tuple[int, str]], int | None]:
        """(the (rule, action) pairs to alert on, the sid that drops the packet or None).

        `flow` and `flowvars` are None inside a tunnel: rules that read the flow do not
        match there. `flowvars` is changed in place by the rules that set flowbits and
        flowints. `carry`: the stream's bytes before this segment (stream.py; None:
        no stream data);
        `payload`: the packet's, when the caller has it already; `sizes`: the bytes
        (client, server) sent (stream.py)."""
        found, payload = self._candidates(buf, pkt, payload)
        if carry is not None and payload and (carry or self._stream_only_any):
            found += self._joined(buf, pkt, carry, payload, set(found))
        if not found:
            return [], None
        rules, fired, acts = self.matcher.rules, [], {}
        for j in sorted(found, key=self._rank.__getitem__):
            rule = rules[j]
            if rule.stateful and (flow is None or not _flow_holds(rule, flow, flowvars, sizes)):
                continue
            if flowvars is not None:
                if rule.flowbits is not None:
                    rule.flowbits.apply(flowvars.bits)
                if rule.flowint is not None:
                    rule.flowint.apply(flowvars.ints)
            if rule.threshold is None or counters is None or self._counts(rule, pkt, counters, now):
                fired.append(j)
                acts[j] = self._rated(j, pkt, counters, now) if counters else rule.action
        # Suricata's action-order: a matching pass stops what comes after it in the
        # order (by default everything: pass is first), not what comes before.
        fired.sort(key=lambda j: (self._order[acts[j]], j))
        stop = next((k for k, j in enumerate(fired) if acts[j] == "pass"), None)
        fired = sorted(fired[:stop])
        drops = [rules[j].sid for j in fired if acts[j] not in ("alert", "pass")]
        alerts = [
            (j, acts[j]) for j in fired if not _silent(rules[j]) and not self._suppressed(j, pkt)
        ]
        return alerts, min(drops) if drops else None

    def _rated(self, j: int, pkt: Packet, counters: Counters, now: int) -> str:
        """The rule's action, or its rate_filter's new action while that holds."""
        rule = self.matcher.rules[j]
        rf = self._rates.get(j)
        if rf is None:
            return rule.action
        key = b"rf:%d:%d:" % (rule.gid, rule.sid) + _tracked(rf.track, pkt)
        until, entry = _rate(rf, counters.table.get(key), now)
        counters.table.set(key, entry)
        counters.due.set(key, *threshold_due(key, entry))
        return rf.new_action if now < until else rule.action

    def _suppressed(self, j: int, pkt: Packet) -> bool:
        """A suppress entry for the rule whose address the packet has (or no address)."""
        for track, space in self._suppress.get(j, ()):
            if space is None:
                return True
            fam = 0 if pkt.version == 4 else 1
            addrs = {"by_src": (pkt.src,), "by_dst": (pkt.dst,)}.get(track, (pkt.src, pkt.dst))
            if any(_in_space(space, fam, int.from_bytes(a, "big")) for a in addrs):
                return True
        return False

    def _candidates(
        self, buf: bytes, pkt: Packet, payload: bytes | None
    ) -> tuple[list[int], bytes]:
        """The rules whose header, payload and header keywords match; the payload."""
        m, p = self.matcher, pkt.proto
        if payload is None:
            payload = b""
            if not pkt.later and (p == 6 or m.scans(p)):
                # A TCP data offset that runs past the segment raises MalformedPayload.
                start, stop = payload_span(buf, 0, pkt.end, pkt.version, p, pkt.l3, pkt.l4)
                payload = buf[start:stop] if stop > start and m.scans(p) else b""
        found = m.match(pkt.version, p, pkt.later, pkt.src, pkt.dst, pkt.sport, pkt.dport, payload)
        if self._stream_only_any:  # tcp-stream rules match the stream, never one packet
            found = [j for j in found if not self._stream_only[j]]
        return self._headers_hold(buf, pkt, found), payload

    def _joined(
        self, buf: bytes, pkt: Packet, carry: bytes, payload: bytes, found: set[int]
    ) -> list[int]:
        """Rules that match across the segment boundary: on carry + payload, but on
        neither alone (the payload's matches are `found`). A match that starts in the
        carry and is no longer than the window ends in the payload's first `window`
        bytes: only those are joined (a stream's first segment is taken whole)."""
        m, rules = self.matcher, self.matcher.rules
        head = payload[: self.window] if carry else payload
        joined = m.match(
            pkt.version, pkt.proto, False, pkt.src, pkt.dst, pkt.sport, pkt.dport, carry + head
        )
        fresh = [
            j
            for j in joined
            if j not in found and self._joinable[j] and not rules[j].payload.match(carry)  # type: ignore[union-attr]
        ]
        return self._headers_hold(buf, pkt, fresh)

    def _headers_hold(self, buf: bytes, pkt: Packet, found: list[int]) -> list[int]:
        rules, at4 = self.matcher.rules, None if pkt.l4 < 0 else pkt.l4
        return [
            j
            for j in found
            if rules[j].header is None
            or rules[j].header.match(buf, pkt.l3, at4, pkt.version, pkt.end)  # type: ignore[union-attr]
        ]

    def _counts(self, rule: Rule, pkt: Packet, counters: Counters, now: int) -> bool:
        th = rule.threshold
        assert th is not None
        key = b"%d:%d:" % (rule.gid, rule.sid) + _tracked(th.track, pkt)
        allow, entry = _allowed(th, counters.table.get(key), now)
        counters.table.set(key, entry)
        counters.due.set(key, *threshold_due(key, entry))
        return allow


def _flow_holds(
    rule: Rule, flow: FlowInfo, flowvars: FlowVars | None, sizes: tuple[int, int]
) -> bool:
    if rule.stream_size is not None and not rule.stream_size.holds(*sizes):
        return False
    spec = rule.flow
    if spec is not None:
        if spec.established is not None and spec.established != flow.established:
            return False
        if spec.to_server is not None and spec.to_server != flow.to_server:
            return False
    if flowvars is None:
        return True
    fb, fi = rule.flowbits, rule.flowint
    return (fb is None or fb.holds(flowvars.bits)) and (fi is None or fi.holds(flowvars.ints))


def _stream_only(rule: Rule) -> bool:
    return rule.proto == "tcp-stream" or (rule.flow is not None and rule.flow.stream is True)


def _packets_only(rule: Rule) -> bool:
    return rule.proto == "tcp-pkt" or (rule.flow is not None and rule.flow.stream is False)


def _silent(rule: Rule) -> bool:
    return rule.noalert or (rule.flowbits is not None and rule.flowbits.noalert)
