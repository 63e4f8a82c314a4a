"""FaustStateTable: the worker's StateTable over one Faust table (RocksDB, changelog).

Faust takes the partition of a read or write from the current event, so the
table is only valid inside stream iteration, or inside
faust_compat.standing_in_for_event for records the worker reads itself.

Reads go through a write-through cache per partition: a Faust read costs a
RocksDB lookup and a JSON decode (~30-50 µs), and the worker is the only
writer of its partitions' state while it owns them. Whatever Faust may
write behind the worker's back (changelog recovery, standby promotion)
happens in a rebalance, and every rebalance empties the cache (`forget`).
The cached objects are shared like a dict's values, as --local's in-memory
store shares them, so cores see the same thing in both modes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from snf.runtime.worker import faust_compat

__all__ = ["CACHED_KEYS", "FaustStateTable"]

CACHED_KEYS = 1 << 18  # per worker; beyond it the cache starts over (memory stays bounded)


class FaustStateTable:
    __slots__ = ("_cache", "_cached", "table")

    def __init__(self, table: Any) -> None:
        self.table = table  # faust.Table(key_type=bytes), JSON values
        self._cache: dict[int, dict[bytes, Any]] = {}  # partition -> key -> value (None: absent)
        self._cached = 0

    def _part(self) -> dict[bytes, Any]:
        partition = faust_compat.current_partition()
        cache = self._cache.get(partition)
        if cache is None:
            cache = self._cache[partition] = {}
        elif self._cached >= CACHED_KEYS:
            self.forget()
            cache = self._cache[partition] = {}
        return cache

    def get(self, key: bytes) -> Any | None:
        cache = self._part()
        if key in cache:
            return cache[key]
        value = cache[key] = self.table.get(key)
        self._cached += 1
        return value

    def set(self, key: bytes, value: Any) -> None:
        self.table[key] = value
        cache = self._part()
        self._cached += key not in cache
        cache[key] = value

    def delete(self, key: bytes) -> None:
        with contextlib.suppress(KeyError):
            del self.table[key]
        cache = self._part()
        self._cached += key not in cache
        cache[key] = None

    def forget(self) -> None:
        """Empty the cache (at every rebalance)."""
        self._cache.clear()
        self._cached = 0

    def items(self) -> Iterator[tuple[bytes, Any]]:
        return faust_compat.partition_items(self.table, faust_compat.current_partition())
