"""Bounded state of the flow monitor: sweeps and eviction over a flows table.

A helper of snf.functions.flowmon. Per partition, an ExpiryIndex
(snf.core.expiry) says when each flow expires: the first packet time at which
the lazy path would end it, min(last + idle, start + active) + 1 ns. A sweep
at a grid point ends the flows due by then, with the record the lazy path
would have emitted ("idle timeout", or "active timeout" leaving an empty
entry that keeps the initiator and FINs for the flow's next record). A full
table evicts with "lack of resources": flows nobody answered first (no
reverse packet), then the one closest to expiry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from snf.core.contract import Record
from snf.core.expiry import ExpiryIndex, PartitionIndexes
from snf.core.tables import BatchState, TableView

from .records import (
    ACTIVE,
    FINS,
    FWD_PKTS,
    IDLE,
    INIT,
    LACK,
    LAST,
    REV_PKTS,
    START,
    flow_record,
)

__all__ = ["FlowExpiry"]


class FlowExpiry:
    """Due times of a flows table, per partition, and what ends flows without a packet."""

    def __init__(self, table: str, idle_ns: int, active_ns: int, max_entries: int) -> None:
        self.idle_ns = idle_ns
        self.active_ns = active_ns
        self.max_entries = max_entries
        self._index = PartitionIndexes(table, self.entry_due)

    def entry_due(self, key: bytes, e: Any) -> tuple[int, bool]:
        """(due, embryonic): embryonic = no reverse packet (or an empty entry)."""
        if e[FWD_PKTS] + e[REV_PKTS] == 0:
            return e[LAST] + self.idle_ns + 1, True
        due = min(e[LAST] + self.idle_ns, e[START] + self.active_ns) + 1
        return due, e[REV_PKTS] == 0

    def index(self, state: BatchState) -> ExpiryIndex:
        """The partition's index, rebuilt from its table after forget()."""
        return self._index.of(state)

    def forget(self, partition: int) -> None:
        self._index.forget(partition)

    def sweep(self, table: TableView, index: ExpiryIndex, now: int, limit: int) -> list[Record]:
        """End the flows due by `now` (at most `limit`), earliest (due, key) first."""
        records: list[Record] = []
        for key in index.expired(now, limit):
            stored = table.get(key)
            if stored is None:  # cannot happen while the index is exact; stay safe
                index.discard(key)
                continue
            e = list(stored)
            if e[FWD_PKTS] + e[REV_PKTS] == 0 or now - e[LAST] > self.idle_ns:
                if e[FWD_PKTS] + e[REV_PKTS]:
                    records.append(flow_record(key, e, IDLE))
                table.delete(key)
                index.discard(key)
            else:  # active timeout: the record so far, an empty entry carries on
                records.append(flow_record(key, e, ACTIVE))
                rest = [e[START], e[LAST], e[INIT], 0, 0, 0, 0, 0, e[FINS]]
                table.set(key, rest)
                index.set(key, *self.entry_due(key, rest))
        return records

    def make_room(
        self,
        key: bytes,
        table: TableView,
        index: ExpiryIndex,
        live: dict[bytes, list[int] | None],
        before: dict[bytes, Any],
        dirty: set[bytes],
        emit: Callable[[Record], None],
    ) -> int:
        """Before `key` starts a flow: if that takes a new slot of a full table, end
        a victim (emitting its record unless empty). Returns the evictions (0 or 1)."""
        self.flush(index, live, dirty)
        if key in index or len(index) < self.max_entries:
            return 0
        if (record := self._evict(table, index, live, before)) is not None:
            emit(record)
        return 1

    def _evict(
        self,
        table: TableView,
        index: ExpiryIndex,
        live: dict[bytes, list[int] | None],
        before: dict[bytes, Any],
    ) -> Record | None:
        victim = index.victim()
        if victim is None:
            return None
        if victim in live:
            e = live[victim]
        else:
            stored = before[victim] = table.get(victim)
            e = None if stored is None else list(stored)
        live[victim] = None
        index.discard(victim)
        if e is None or e[FWD_PKTS] + e[REV_PKTS] == 0:
            return None
        return flow_record(victim, e, LACK)

    def flush(
        self, index: ExpiryIndex, live: dict[bytes, list[int] | None], dirty: set[bytes]
    ) -> None:
        """Bring the index up to this batch's entries (changed keys in `dirty`)."""
        index.refresh(dirty, live, self.entry_due)
        dirty.clear()
