"""Signature IDS/IPS: Suricata's rule language over headers, payloads and tunnels.

Summary
    Every IP packet, and every packet inside its tunnels (IP-in-IP, GRE,
    ERSPAN, VXLAN, Geneve: tunnels.py), is matched against every rule (the
    part of Suricata's language in docs/functions/ids.md). A multi-pattern
    prefilter (ahocorasick-rs, a byte DFA) finds which rules' fast patterns occur in
    the payload; only those run their payload program (payload.py: content
    and its modifiers, pcre, byte_*), never a Python loop over all rules.
    Header keywords (header_keywords.py) read the raw packet. Actions follow
    Suricata's default order: a matching `pass` rule lets the packet through
    and silences every other rule; otherwise a matching `drop` or `reject`
    rule drops it; every other matching rule raises an alert record (unless
    `noalert`). Stateless so far: no flow keywords, no stream reassembly.

Ports
    pass     packets no drop rule matched (or a pass rule matched); non-IP frames
    drop     reason "sid:<sid>" (the lowest sid among the matching drop rules),
             "malformed" (snf.packet.parse says so, or a TCP data offset < 20 bytes or
             past the segment)
    alerts   (record port) one JSON object per matching rule that alerts, EVE-like:
             ts, ts_ns, packet_id, sid, rev, gid, msg, action, [classtype, priority,
             references, metadata], proto, src, sport, dst, dport, [tunnel]; per
             packet in (gid, sid) order, at most packet_alert_max

Config (IdsConfig)
    rules       list of rule strings ("rule <n>" in errors, 1-based), or
    rules_file  path of a rules file, one rule per line ("<path>:<line>" in
                errors); relative to the current directory, or to the
                validation context's "base_dir" when the loader gives one.
                Exactly one of the two. Blank lines and '#' comments are skipped.
    vars        {NAME: spec}: address or port specs used as $NAME in rules
    strict      an unsupported rule fails the load (default: for `rules` yes,
                for `rules_file` no: those are skipped and listed, see `skipped`)
    packet_alert_max  alert records per packet at most (default 15)
    Rules are parsed and compiled when the config is validated, so a bad rule
    fails the load with its number or line and the reason.

State
    None (key "any": any partition will do).

Metrics
    the engine's counters: "in", "pass", "drop:<reason>", "alerts" (records);
    declared: "tunneled" (inner packets judged), "tunnel_errors" (tunnels that
    could not be opened; the outer packet was judged alone).

Example
    - type: ids
      vars: {HOME_NET: "10.0.0.0/8", HTTP_PORTS: "[80,8080]"}
      rules:
        - alert tcp any any -> $HOME_NET $HTTP_PORTS (msg:"admin"; content:"/admin"; sid:1;)
        - drop udp any any -> $HOME_NET 53 (msg:"bad"; content:"|03|bad|03|com"; nocase; sid:2;)
        - alert tcp any any -> any 80 (msg:"id"; flags:PA; content:"?id="; pcre:"/id=\\d/"; sid:4;)
        - pass ip 10.9.0.0/16 any <> any any (msg:"scanner"; sid:3;)
"""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar

from snf.core.contract import (
    EVICTED,
    Decisions,
    FunctionConfig,
    NetworkFunction,
    Record,
    SweepContext,
    triage,
)
from snf.core.expiry import PartitionIndexes
from snf.core.reasons import MALFORMED, numbered
from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch
from snf.packet.headers import FRAG_LATER, Headers

from .alerts import alert_records
from .config import IdsConfig
from .flow_keywords import FlowVars
from .flows import FlowInfo, FlowTimeouts, FlowView, due_of
from .judge import Counters, Judge, Packet, threshold_due
from .match import Matcher, payload_span
from .stream import stream_sizes, stream_step
from .tunnels import TunnelError, carries_tunnel, decapsulate, five_tuple

__all__ = ["Ids", "IdsConfig"]

_PROTO_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "IPv6-ICMP"}  # as in EVE
_PORT_PROTOS = frozenset({6, 17, 33, 132, 136})  # TCP UDP DCCP SCTP UDP-Lite
SID = "sid"  # numbered: sid:<sid>, the drop rule that dropped the packet


class Ids(NetworkFunction):
    """Signature IDS/IPS core; see the module docstring."""

    kind: ClassVar[str] = "ids"
    ports: ClassVar[tuple[str, ...]] = ("pass", "drop")
    record_ports: ClassVar[tuple[str, ...]] = ("alerts",)
    reasons: ClassVar[tuple[str, ...]] = (MALFORMED, numbered(SID))
    # inner packets of tunnels inspected; tunnels that could not be opened (outer judged)
    metrics: ClassVar[tuple[str, ...]] = ("tunneled", "tunnel_errors", EVICTED)
    tables: ClassVar[tuple[str, ...]] = ("flow", "thresh")
    key: ClassVar[str] = "flow"  # a flow's packets, both ways, on one partition
    needs_payload: ClassVar[bool] = True  # content rules match the payload
    Config: ClassVar[type[FunctionConfig]] = IdsConfig

    def __init__(self, config: IdsConfig) -> None:
        super().__init__(config)
        self.config: IdsConfig = config
        self.matcher = Matcher(config.compiled)
        self.judge = Judge(
            self.matcher,
            config.action_order,
            config.suppressions,
            config.rate_filters,
            config.stream_window,
        )
        self._flow_due_of = due_of(FlowTimeouts(**config.flow_timeouts.model_dump()))
        # Per partition, when each flow and threshold entry expires (snf.core.expiry).
        self._flow_due = PartitionIndexes("flow", self._flow_due_of)
        self._thresh_due = PartitionIndexes("thresh", threshold_due)
        joins = self.judge.joins and config.stream_window > 0
        self._tracks = joins or self.judge.sizes or any(r.stateful for r in self.matcher.rules)

    def forget(self, partition: int) -> None:
        self._flow_due.forget(partition)
        self._thresh_due.forget(partition)

    def sweep(self, state: BatchState, ctx: SweepContext) -> dict[str, list[Record]]:
        """Delete the flow and threshold entries expired by ctx.now_ns, earliest first."""
        for name, indexes in (("flow", self._flow_due), ("thresh", self._thresh_due)):
            view, index = state.table(name), indexes.of(state)
            for key in index.expired(ctx.now_ns, ctx.limit):
                view.delete(key)
                index.discard(key)
        return {}

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        decisions, ip = triage(headers)
        buf, offsets, ts = batch.payload, batch.offsets, batch.records["ts_ns"].tolist()
        flows = self._flows(state)
        counters = Counters(state.table("thresh"), self._thresh_due.of(state))
        # (packet index, matching rules to alert on, the packet's part of the alert record)
        hits: list[tuple[int, list[tuple[int, str]], dict[str, Any]]] = []
        tunnels = tunnel_errors = 0
        for i in ip:
            try:
                pkt = _packet(headers, i, offsets[i], offsets[i + 1])
                entry = info = flowvars = carry = payload = None
                sizes = (0, 0)
                if flows is not None:
                    entry, info = flows.track(headers, i, ts[i])
                    flowvars = FlowVars(set(entry[3]), dict(entry[6]))
                    carry, payload = self._stream(buf, pkt, entry, info, headers.tcp_flags[i])
                    sizes = stream_sizes(entry)
                verdict = self.judge.packet(
                    buf, pkt, info, flowvars, counters, ts[i], carry, payload, sizes
                )
                # The record's fields only for a packet that alerts (ipaddress is slow).
                fields = _packet_fields(headers, i) if verdict[0] else {}
                found = [(verdict, fields)]
                if not pkt.later and carries_tunnel(pkt.proto, pkt.dport):
                    try:
                        inner = self._tunnels(buf, pkt, counters, ts[i])
                    except TunnelError:  # as Suricata: a decoder event, the outer judged alone
                        tunnel_errors += 1
                    else:
                        tunnels += len(inner)
                        found += inner
            except Exception:  # crafted bytes broke an assumption: drop, never raise
                decisions.ports[i], decisions.reasons[i] = "drop", MALFORMED
                continue
            if flows is not None:
                flows.keep(headers.flow[i], entry, flowvars)  # type: ignore[arg-type]
            dropped_by = None
            for (matched, drop), fields in found:
                if matched:
                    hits.append((i, matched, fields))
                if drop is not None and (dropped_by is None or drop < dropped_by):
                    dropped_by = drop
            if dropped_by is not None:
                decisions.ports[i], decisions.reasons[i] = "drop", numbered(SID, dropped_by)
        limit = self.config.packet_alert_max
        decisions.records["alerts"] = alert_records(batch, self.matcher.rules, hits, limit)
        decisions.metrics.update(tunneled=tunnels, tunnel_errors=tunnel_errors)
        decisions.metrics[EVICTED] = flows.evicted if flows is not None else 0
        return decisions

    def _flows(self, state: BatchState) -> FlowView | None:
        """The partition's flows, or None when no rule reads them (no flow keyword,
        no stream matching): then no packet writes flow state."""
        if not self._tracks:
            return None
        return FlowView(
            state.table("flow"), self._flow_due.of(state), self._flow_due_of,
            self.config.midstream, self.config.max_flows,
        )  # fmt: skip

    def _stream(
        self, buf: bytes, pkt: Packet, entry: list[Any], info: FlowInfo, flags: int
    ) -> tuple[bytes | None, bytes | None]:
        """(the stream's bytes before this TCP segment, its payload); (None, None) when
        not tracked. Advances the flow's stream state (stream.py)."""
        window = self.config.stream_window if self.judge.joins else 0
        if pkt.proto != 6 or pkt.later or pkt.l4 < 0 or not (window or self.judge.sizes):
            return None, None
        start, stop = payload_span(buf, 0, pkt.end, pkt.version, 6, pkt.l3, pkt.l4)
        payload = buf[start:stop] if stop > start else b""
        seq = int.from_bytes(buf[pkt.l4 + 4 : pkt.l4 + 8], "big")
        side = 0 if info.to_server else 1
        return stream_step(entry, side, seq, flags, payload, window), payload

    def _tunnels(
        self, buf: bytes, outer: Packet, counters: Counters, now: int
    ) -> list[tuple[tuple[list[tuple[int, str]], int | None], dict[str, Any]]]:
        """Every packet inside the tunnels of `outer`, judged like it, without its flow."""
        out = []
        for inner in decapsulate(buf, outer.l3, limit=outer.end):
            t = five_tuple(buf, inner)
            pkt = Packet(
                inner.end, inner.version, inner.proto, inner.frag == FRAG_LATER, t.src, t.dst,
                t.sport or 0, t.dport or 0, inner.l3, -1 if inner.l4 is None else inner.l4,
            )  # fmt: skip
            verdict = self.judge.packet(buf, pkt, None, None, counters, now)
            out.append((verdict, {**t.alert_fields(), "tunnel": inner.tunnel}))
        return out


def _packet(h: Headers, i: int, base: int, end: int) -> Packet:
    l4 = h.l4_off[i]
    return Packet(
        end, h.version[i], h.proto[i], h.frag[i] == FRAG_LATER, h.src[i], h.dst[i],
        h.sport[i], h.dport[i], base + h.l3_off[i], base + l4 if l4 >= 0 else -1,
    )  # fmt: skip


def _packet_fields(h: Headers, i: int) -> dict[str, Any]:
    """The packet's part of an alert record (EVE-like names)."""
    p = h.proto[i]
    ports = p in _PORT_PROTOS and h.l4_off[i] >= 0
    return {
        "proto": _PROTO_NAMES.get(p, str(p)),
        "src": str(ipaddress.ip_address(h.src[i])),
        "sport": h.sport[i] if ports else None,
        "dst": str(ipaddress.ip_address(h.dst[i])),
        "dport": h.dport[i] if ports else None,
    }
