"""The flow monitor's batch path (a helper of snf.functions.flowmon).

`count_flows` is FlowMonitor._count_each, the per-packet loop, with the same
steps in the same order: one pass over the header columns zipped together
(no per-packet list indexing), one dict lookup per packet for its flow's
entry, entries built inline. The caller checks that every column has one
entry per packet (zip would stop at the shortest, where the loop raises on
a missing one); the equivalence tests run both on every capture.
"""

from __future__ import annotations

from itertools import count
from typing import Any

from snf.core.contract import Decisions, Record
from snf.core.reasons import MALFORMED
from snf.core.tables import TableView
from snf.packet.batch import PacketBatch
from snf.packet.headers import KIND_IP, Headers

from .records import ACTIVE, END, IDLE, flow_record

__all__ = ["Counted", "columns", "count_flows"]

_FIN = 0x01
_RST = 0x04
_ABSENT: Any = object()  # not yet looked up in this batch (None: no entry)
# key -> entry (None once ended), key -> what the store held, records emitted
Counted = tuple[dict[bytes, Any], dict[bytes, Any], list[Record]]


def columns(h: Headers) -> tuple[list[Any], ...]:
    """The header columns count_flows reads (each must have one entry per packet)."""
    return (h.kind, h.flow, h.direction, h.tcp_flags, h.l3_off, h.version)


def count_flows(
    batch: PacketBatch,
    h: Headers,
    table: TableView,
    decisions: Decisions,
    idle_ns: int,
    active_ns: int,
) -> Counted:
    """Count every IP packet into its flow's entry; emit the flows that end."""
    ports, reasons = decisions.ports, decisions.reasons
    payload = batch.payload
    get = table.get
    live: dict[bytes, Any] = {}
    found = live.get
    before: dict[bytes, Any] = {}
    records: list[Record] = []
    emit = records.append
    columns = zip(
        count(), h.kind, h.flow, batch.records["ts_ns"].tolist(), h.direction, h.tcp_flags,
        h.l3_off, h.version, batch.offsets,
    )  # fmt: skip
    for i, kind, key, t, d, flags, l3, v, start in columns:
        if kind != KIND_IP:
            continue  # decided by triage()
        try:
            at = start + l3
            if v == 4:
                octets = payload[at + 2] << 8 | payload[at + 3]
            else:
                octets = (payload[at + 4] << 8 | payload[at + 5]) + 40
            if d not in (0, 1) or l3 < 0:
                raise ValueError("inconsistent headers")
        except Exception:  # headers that break the parser's promises: drop, never raise
            ports[i], reasons[i] = "drop", MALFORMED
            continue
        e = found(key, _ABSENT)
        if e is _ABSENT:
            stored = before[key] = get(key)
            e = list(stored) if stored is not None else None  # never mutate the store's copy
        if e is not None:
            if t - e[1] > idle_ns:
                emit(flow_record(key, e, IDLE))
                e = None
            elif t - e[0] > active_ns:
                emit(flow_record(key, e, ACTIVE))
                e = [t, t, e[2], 0, 0, 0, 0, 0, e[8]]  # records.new_entry
        if e is None:
            e = [t, t, d, 0, 0, 0, 0, 0, 0]
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
    return live, before, records
