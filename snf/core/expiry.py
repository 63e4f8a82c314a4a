"""ExpiryIndex: when each entry of one table on one partition expires.

A core that sweeps (snf.core.contract, "Bounded state") cannot scan its table
at every grid point: over Kafka the table is RocksDB, and a scan of a million
entries per second of packet time would be the whole cost. So it keeps, per
partition, this index beside the table: key -> due time (the packet time from
which the lazy path treats the entry as absent), in (due, key) order, plus the
embryonic entries (half-open TCP) in an order of their own, evicted first.

The index is a function of the table contents alone: the core computes each
entry's due from its key and value, updates the index at every write, and
after forget() rebuilds it from the table (`build`). So a sweep or an eviction
picks the same keys whether the index grew with the stream or was rebuilt
mid-stream after a takeover.

Heaps with lazy deletion: a changed due pushes a new (due, key) and the old
one is skipped when it surfaces; the heap is rebuilt when stale items
outnumber live ones.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from snf.core.tables import BatchState

__all__ = ["DueOf", "ExpiryIndex", "PartitionIndexes"]

# (key, value) -> (due ns, embryonic)
DueOf = Callable[[bytes, Any], tuple[int, bool]]

_SLACK = 1024  # stale heap items tolerated beyond the live ones before a rebuild


class _Order:
    """Keys by (due, key): a dict of the truth and a heap with stale items."""

    __slots__ = ("due", "heap")

    def __init__(self) -> None:
        self.due: dict[bytes, int] = {}
        self.heap: list[tuple[int, bytes]] = []

    def set(self, key: bytes, due: int) -> None:
        if self.due.get(key) != due:
            self.due[key] = due
            heapq.heappush(self.heap, (due, key))
            if len(self.heap) > 2 * len(self.due) + _SLACK:
                self.heap = [(d, k) for k, d in self.due.items()]
                heapq.heapify(self.heap)

    def first(self) -> tuple[int, bytes] | None:
        """The earliest live (due, key), its stale predecessors dropped."""
        heap, due = self.heap, self.due
        while heap:
            d, key = heap[0]
            if due.get(key) == d:
                return d, key
            heapq.heappop(heap)
        return None


class ExpiryIndex:
    """Due time per key of one table on one partition (module docstring)."""

    __slots__ = ("_all", "_embryonic")

    def __init__(self) -> None:
        self._all = _Order()
        self._embryonic = _Order()

    @classmethod
    def build(cls, items: Iterable[tuple[bytes, Any]], due_of: DueOf) -> ExpiryIndex:
        """The index of a table's contents (after forget(), or on first sight)."""
        index = cls()
        for key, value in items:
            due, embryonic = due_of(key, value)
            index.set(key, due, embryonic)
        return index

    def __len__(self) -> int:
        return len(self._all.due)

    def __contains__(self, key: bytes) -> bool:
        return key in self._all.due

    def due(self, key: bytes) -> int | None:
        return self._all.due.get(key)

    def set(self, key: bytes, due: int, embryonic: bool = False) -> None:
        """The entry of `key` was written: it expires at `due` (packet time, ns)."""
        self._all.set(key, due)
        if embryonic:
            self._embryonic.set(key, due)
        else:
            self._embryonic.due.pop(key, None)

    def discard(self, key: bytes) -> None:
        """The entry of `key` was deleted."""
        self._all.due.pop(key, None)
        self._embryonic.due.pop(key, None)

    def expired(self, now_ns: int, limit: int) -> list[bytes]:
        """Up to `limit` keys due by `now_ns`, earliest (due, key) first. The caller
        deletes or rewrites each (discard / set), else it comes back next time."""
        order = self._all
        popped: list[tuple[int, bytes]] = []
        while len(popped) < limit:
            top = order.first()
            if top is None or top[0] > now_ns:
                break
            popped.append(heapq.heappop(order.heap))
        for item in popped:  # still live until the caller says otherwise
            heapq.heappush(order.heap, item)
        return [key for _, key in popped]

    def refresh(self, keys: Iterable[bytes], values: Mapping[bytes, Any], due_of: DueOf) -> None:
        """Bring the index up to `values` for `keys` (None: deleted)."""
        for key in keys:
            value = values[key]
            if value is None:
                self.discard(key)
            else:
                self.set(key, *due_of(key, value))

    def victim(self) -> bytes | None:
        """The entry to evict from a full table: the earliest embryonic one, else the
        earliest to expire; ties by key."""
        top = self._embryonic.first() or self._all.first()
        return None if top is None else top[1]


class _Buildable(Protocol):
    @classmethod
    def build(cls, items: Iterable[tuple[bytes, Any]], due_of: Any) -> Any: ...


Index = TypeVar("Index", bound=_Buildable)


class PartitionIndexes(Generic[Index]):
    """One index of one table per partition, built from the table on first use
    and again after forget(): what a core's `forget(partition)` drops."""

    __slots__ = ("_by_partition", "_due_of", "_kind", "_table")

    def __init__(self, table: str, due_of: Any, kind: type[Index] = ExpiryIndex) -> None:  # type: ignore[assignment]
        self._table, self._due_of, self._kind = table, due_of, kind
        self._by_partition: dict[int, Index] = {}

    def of(self, state: BatchState) -> Index:
        index = self._by_partition.get(state.partition)
        if index is None:
            items = state.table(self._table).items()
            index = self._by_partition[state.partition] = self._kind.build(items, self._due_of)
        return index

    def forget(self, partition: int) -> None:
        self._by_partition.pop(partition, None)
