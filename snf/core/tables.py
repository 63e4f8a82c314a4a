"""State interface seen by function cores.

A core reads and writes named tables through a TableView. Within one batch a
view caches reads and coalesces writes, so each key is written at most once
per batch however many packets touch it (a Faust table set costs one
changelog record, ~0.2 ms here). The backend Store is either in memory
(--local) or a Faust table (snf.runtime.worker.app); cores never know which.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

__all__ = ["CONTROL_TABLE", "STATE_TABLE", "BatchState", "MemoryStore", "Store", "TableView"]

# Every function has this table besides its own: the engine's end-marker
# counts (snf.core.engine), so a restarted worker still knows where an end stands.
CONTROL_TABLE = "control"
# Over Kafka, all tables of a function are one Faust table of this name (keys
# prefixed by the table's): one changelog keeps every write in order.
STATE_TABLE = "state"

_MISSING = object()
_DELETED = object()


class Store(Protocol):
    """Backend of one table for one partition."""

    def get(self, key: bytes) -> Any | None: ...

    def set(self, key: bytes, value: Any) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def items(self) -> Iterable[tuple[bytes, Any]]:
        """Every (key, value) of this store's partition (used by finish, not per packet)."""
        ...


class MemoryStore:
    """Plain dict store; values round-trip through the same JSON shape as Faust's."""

    def __init__(self) -> None:
        self.data: dict[bytes, Any] = {}

    def get(self, key: bytes) -> Any | None:
        return self.data.get(key)

    def set(self, key: bytes, value: Any) -> None:
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)

    def items(self) -> Iterable[tuple[bytes, Any]]:
        return list(self.data.items())


class TableView:
    """Read-through, write-back view of one Store for the length of a batch."""

    __slots__ = ("_cache", "_deferred", "_dirty", "_store")

    def __init__(self, store: Store, *, deferred: bool = False) -> None:
        self._store = store
        self._cache: dict[bytes, Any] = {}
        self._dirty: set[bytes] = set()
        self._deferred = deferred

    def get(self, key: bytes) -> Any | None:
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            value = self._store.get(key)
            self._cache[key] = _DELETED if value is None else value
            return value
        return None if value is _DELETED else value

    def set(self, key: bytes, value: Any) -> None:
        self._cache[key] = value
        self._dirty.add(key)

    def delete(self, key: bytes) -> None:
        self._cache[key] = _DELETED
        self._dirty.add(key)

    def items(self) -> Iterator[tuple[bytes, Any]]:
        """Every live (key, value), this batch's writes included (slow: for finish)."""
        cache = self._cache
        for key, value in self._store.items():
            if key not in cache:
                yield key, value
        for key, value in list(cache.items()):
            if value is not _DELETED:
                yield key, value

    def discard(self) -> None:
        """Forget this batch's reads and writes (the batch failed)."""
        self._dirty.clear()
        self._cache.clear()

    def write_back(self) -> int:
        """Write every changed key once; return the number of writes.

        A deferred view only counts them: its shell writes them later (`apply`),
        after journaling their before-images (snf.guarantee.journal)."""
        if self._deferred:
            return len(self._dirty)
        return self.apply()

    def pending(self) -> list[tuple[bytes, Any]]:
        """The changed keys and their new values (None: deleted), not yet written."""
        return [(k, None if self._cache[k] is _DELETED else self._cache[k]) for k in self._dirty]

    def apply(self) -> int:
        """Write every changed key once, whether deferred or not."""
        store = self._store
        for key in self._dirty:
            value = self._cache[key]
            if value is _DELETED:
                store.delete(key)
            else:
                store.set(key, value)
        n = len(self._dirty)
        self._dirty.clear()
        self._cache.clear()
        return n


class BatchState:
    """The tables of one function on one partition, for one batch.

    `partition` is the input partition whose tables these are: a core that keeps
    an in-memory index derived from its tables (snf.core.expiry) keys it by this."""

    __slots__ = ("_views", "partition")

    def __init__(
        self, stores: dict[str, Store], *, deferred: bool = False, partition: int = 0
    ) -> None:
        self._views = {name: TableView(store, deferred=deferred) for name, store in stores.items()}
        self.partition = partition

    def table(self, name: str) -> TableView:
        return self._views[name]

    def __contains__(self, name: str) -> bool:
        return name in self._views

    def write_back(self) -> int:
        return sum(v.write_back() for v in self._views.values())

    def discard(self) -> None:
        for v in self._views.values():
            v.discard()

    def pending(self) -> dict[str, list[tuple[bytes, Any]]]:
        """Per table, the writes a deferred state holds (see TableView.pending)."""
        return {name: w for name, v in self._views.items() if (w := v.pending())}

    def apply(self) -> int:
        return sum(v.apply() for v in self._views.values())

    @staticmethod
    def memory(tables: Iterable[str]) -> dict[str, MemoryStore]:
        return {name: MemoryStore() for name in tables}
