"""Flow monitor: bidirectional flow records (IPFIX information elements) as JSON.

Summary
    Every packet passes untouched. Each bidirectional IP flow (Headers.flow:
    both directions share one key) is counted, and its record goes out on the
    record port `flows` when the flow ends. Field names are IPFIX information
    element names (RFC 7012, IANA registry), with RFC 5103's "reverse" prefix
    for the direction opposite the flow's initiator (the sender of its first
    packet). Octets are IP-layer bytes: the IPv4 total length, or the IPv6
    payload length + 40, never the frame length. Time is packet time.

    A flow ends, lazily, when one of its packets arrives and finds it
        idle        ts - last_seen > idle_timeout: the old flow is emitted with
                    "idle timeout" and this packet starts a new flow (this
                    packet's sender is the new initiator)
        too old     ts - flowStart > active_timeout: the flow so far is emitted
                    with "active timeout"; a new record starts with this
                    packet, keeping the initiator and the FINs seen
        closed      TCP RST, or FIN seen in both directions: the record
                    including this packet is emitted with "end of flow
                    detected" and the entry deleted (a later packet, e.g.
                    the last ACK, starts a new flow)
    At the end of a replay, finish() emits every remaining flow: "idle timeout"
    if end_ts - last_seen > idle_timeout, else "forced end".

Ports
    pass    every packet but malformed ones, unchanged (non-IP frames too,
            counted in no flow)
    drop    reason "malformed"
    flows   (record port) one JSON record per ended flow, see docs/functions/flowmon.md

Config (FlowMonitorConfig)
    idle_timeout    seconds of packet time without a packet, default 15, > 0
    active_timeout  seconds of packet time since the flow started, default 300, > 0

State
    flows  key: the canonical bidirectional flow key (Headers.flow)
           value: [start_ns, last_ns, initiator direction, fwd_pkts,
                  fwd_octets, rev_pkts, rev_octets, tcp_flags, fin_bits]
           (fin_bits: bit d set when a FIN was seen in Headers.direction d)
           written at most once per flow per batch; deleted when the flow's
           record is emitted and no packet continues it
    Expiry is lazy (a packet finds its flow expired) plus finish() at the end.

Metrics
    the engine's counters: "in", "pass", "drop:malformed", "flows" (records);
    and the core's metrics "flows:<flowEndReason>" (records per end reason).

Example
    - type: flowmon
      idle_timeout: 15
      active_timeout: 300
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

from pydantic import Field

from snf.core.contract import (
    Decisions,
    FinishContext,
    FunctionConfig,
    NetworkFunction,
    Record,
    triage,
)
from snf.core.limits import Seconds
from snf.core.reasons import MALFORMED
from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers

from .records import ACTIVE, END, END_REASONS, FORCED, IDLE, flow_record, new_entry

__all__ = ["FlowMonitor", "FlowMonitorConfig"]

_NS = 1_000_000_000
_FIN = 0x01
_RST = 0x04
TABLE = "flows"
# flowEndReason -> its metric, e.g. "flows:idle timeout"
END_METRICS = {reason: f"flows:{reason}" for reason in END_REASONS}


class FlowMonitorConfig(FunctionConfig):
    """Config of the flow monitor."""

    idle_timeout: Seconds = Field(
        default=15,
        description="Seconds of packet time without a packet after which a flow ends "
        "('idle timeout'); checked when the flow's next packet arrives, and at the end of input.",
    )
    active_timeout: Seconds = Field(
        default=300,
        description="Seconds of packet time after its first packet after which a long "
        "flow's record is emitted ('active timeout') and a new record started.",
    )


class FlowMonitor(NetworkFunction):
    """Flow exporter core; see the module docstring."""

    kind: ClassVar[str] = "flowmon"
    ports: ClassVar[tuple[str, ...]] = ("pass", "drop")
    record_ports: ClassVar[tuple[str, ...]] = ("flows",)
    reasons: ClassVar[tuple[str, ...]] = (MALFORMED,)
    metrics: ClassVar[tuple[str, ...]] = tuple(END_METRICS.values())
    key: ClassVar[str] = "flow"
    tables: ClassVar[tuple[str, ...]] = (TABLE,)
    Config: ClassVar[type[FunctionConfig]] = FlowMonitorConfig

    def __init__(self, config: FlowMonitorConfig) -> None:
        super().__init__(config)
        self.config: FlowMonitorConfig = config
        self._idle_ns = round(config.idle_timeout * _NS)
        self._active_ns = round(config.active_timeout * _NS)

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        decisions, ip = triage(headers)
        ts = batch.records["ts_ns"].tolist()
        payload = batch.payload
        offsets = batch.offsets
        table = state.table(TABLE)
        version, flow = headers.version, headers.flow
        direction, tcp_flags, l3_off = headers.direction, headers.tcp_flags, headers.l3_off
        idle_ns, active_ns = self._idle_ns, self._active_ns
        # This batch's entries (key -> entry, None once ended) and what the store held.
        live: dict[bytes, list[int] | None] = {}
        before: dict[bytes, Any] = {}
        records: list[Record] = []
        emit = records.append

        for i in ip:
            try:
                key = flow[i]
                t = ts[i]
                d = direction[i]
                flags = tcp_flags[i]
                at = offsets[i] + l3_off[i]
                if version[i] == 4:
                    octets = payload[at + 2] << 8 | payload[at + 3]
                else:
                    octets = (payload[at + 4] << 8 | payload[at + 5]) + 40
                if d not in (0, 1) or l3_off[i] < 0:
                    raise ValueError("inconsistent headers")
            except Exception:  # headers that break the parser's promises: drop, never raise
                decisions.ports[i], decisions.reasons[i] = "drop", MALFORMED
                continue
            if key in live:
                e = live[key]
            else:
                stored = before[key] = table.get(key)
                e = list(stored) if stored is not None else None  # never mutate the store's copy
            if e is not None:
                if t - e[1] > idle_ns:
                    emit(flow_record(key, e, IDLE))
                    e = None
                elif t - e[0] > active_ns:
                    emit(flow_record(key, e, ACTIVE))
                    e = new_entry(t, e[2], e[8])
            if e is None:
                e = new_entry(t, d)
            if d == e[2]:
                e[3] += 1
                e[4] += octets
            else:
                e[5] += 1
                e[6] += octets
            if t > e[1]:
                e[1] = t  # packet time may step back; last_seen never does
            if flags:
                e[7] |= flags
                if flags & _FIN:
                    e[8] |= 1 << d
                if flags & _RST or e[8] == 3:
                    emit(flow_record(key, e, END))
                    e = None
            live[key] = e

        # One write per changed flow, none for a flow born and ended in this batch.
        for key, e in live.items():
            if e != before[key]:
                if e is None:
                    table.delete(key)
                else:
                    table.set(key, e)

        decisions.records["flows"] = records
        if records:
            ends = Counter(record["flowEndReason"] for record in records)
            decisions.metrics = {END_METRICS[end]: n for end, n in ends.items()}
        return decisions

    def finish(self, state: BatchState, ctx: FinishContext) -> dict[str, list[Record]]:
        """Emit and delete every flow left on this partition, by (ts_ns, flowStart, key)."""
        table = state.table(TABLE)
        entries = sorted((e[1], e[0], key, e) for key, e in table.items())
        records: list[Record] = []
        for last, _start, key, e in entries:
            reason = IDLE if ctx.end_ts_ns - last > self._idle_ns else FORCED
            records.append(flow_record(key, e, reason))
            table.delete(key)
            ctx.metrics[END_METRICS[reason]] += 1
        return {"flows": records}
