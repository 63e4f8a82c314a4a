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
    Expiry: a packet finds its flow expired, the sweep ends it every
    sweep_interval of packet time (bounds.py: same records), finish() at the
    end; a full table (max_entries) ends a flow with "lack of resources".

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
    EVICTED,
    BoundedStateConfig,
    Decisions,
    FinishContext,
    FunctionConfig,
    NetworkFunction,
    Record,
    SweepContext,
    triage,
)
from snf.core.limits import Seconds
from snf.core.reasons import MALFORMED
from snf.core.tables import BatchState, TableView
from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers

from .bounds import FlowExpiry
from .records import ACTIVE, END, END_REASONS, FORCED, IDLE, flow_record, new_entry

__all__ = ["FlowMonitor", "FlowMonitorConfig"]

_NS = 1_000_000_000
_FIN = 0x01
_RST = 0x04
TABLE = "flows"
# flowEndReason -> its metric, e.g. "flows:idle timeout"
END_METRICS = {reason: f"flows:{reason}" for reason in END_REASONS}


class FlowMonitorConfig(BoundedStateConfig):
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
    metrics: ClassVar[tuple[str, ...]] = (*END_METRICS.values(), EVICTED)
    key: ClassVar[str] = "flow"
    tables: ClassVar[tuple[str, ...]] = (TABLE,)
    Config: ClassVar[type[FunctionConfig]] = FlowMonitorConfig

    def __init__(self, config: FlowMonitorConfig) -> None:
        super().__init__(config)
        self.config: FlowMonitorConfig = config
        self._idle_ns = round(config.idle_timeout * _NS)
        self._active_ns = round(config.active_timeout * _NS)
        self._expiry = FlowExpiry(TABLE, self._idle_ns, self._active_ns, config.max_entries)

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        decisions, ip = triage(headers)
        ts = batch.records["ts_ns"].tolist()
        payload = batch.payload
        offsets = batch.offsets
        table = state.table(TABLE)
        expiry = self._expiry
        index = expiry.index(state)
        version, flow = headers.version, headers.flow
        direction, tcp_flags, l3_off = headers.direction, headers.tcp_flags, headers.l3_off
        idle_ns, active_ns, most = self._idle_ns, self._active_ns, expiry.max_entries
        # This batch's entries (key -> entry, None once ended) and what the store held;
        # `dirty`: keys changed since the index last heard of them.
        live: dict[bytes, list[int] | None] = {}
        before: dict[bytes, Any] = {}
        dirty: set[bytes] = set()
        records: list[Record] = []
        emit = records.append
        evicted = 0

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
                if e[3] + e[5] == 0:  # left by a sweep's active timeout: the next record
                    e = new_entry(t, e[2], e[8]) if t - e[1] <= idle_ns else None
                elif t - e[1] > idle_ns:
                    emit(flow_record(key, e, IDLE))
                    e = None
                elif t - e[0] > active_ns:
                    emit(flow_record(key, e, ACTIVE))
                    e = new_entry(t, e[2], e[8])
            if e is None:
                if len(index) + len(dirty) >= most:  # maybe full: count exactly
                    evicted += expiry.make_room(key, table, index, live, before, dirty, emit)
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
            dirty.add(key)

        expiry.flush(index, live, dirty)
        _write(table, live, before)
        decisions.records["flows"] = records
        decisions.metrics = _end_metrics(records)
        if evicted:
            decisions.metrics[EVICTED] = evicted
        return decisions

    def sweep(self, state: BatchState, ctx: SweepContext) -> dict[str, list[Record]]:
        """Export the flows that ended by ctx.now_ns with no packet to find them."""
        table = state.table(TABLE)
        index = self._expiry.index(state)
        records = self._expiry.sweep(table, index, ctx.now_ns, ctx.limit)
        ctx.metrics.update(_end_metrics(records))
        return {"flows": records}

    def forget(self, partition: int) -> None:
        self._expiry.forget(partition)

    def finish(self, state: BatchState, ctx: FinishContext) -> dict[str, list[Record]]:
        """Emit and delete every flow left on this partition, by (ts_ns, flowStart, key)."""
        table = state.table(TABLE)
        entries = sorted((e[1], e[0], key, e) for key, e in table.items())
        records: list[Record] = []
        for last, _start, key, e in entries:
            table.delete(key)
            if e[3] + e[5] == 0:
                continue  # an active timeout's empty remainder: nothing to report
            reason = IDLE if ctx.end_ts_ns - last > self._idle_ns else FORCED
            records.append(flow_record(key, e, reason))
            ctx.metrics[END_METRICS[reason]] += 1
        self._expiry.forget(ctx.partition)
        return {"flows": records}


def _write(table: TableView, live: dict[bytes, list[int] | None], before: dict[bytes, Any]) -> None:
    """One write per changed flow, none for a flow born and ended in this batch."""
    for key, e in live.items():
        if e != before[key]:
            if e is None:
                table.delete(key)
            else:
                table.set(key, e)


def _end_metrics(records: list[Record]) -> dict[str, int]:
    if not records:
        return {}
    ends = Counter(record["flowEndReason"] for record in records)
    return {END_METRICS[end]: n for end, n in ends.items()}
