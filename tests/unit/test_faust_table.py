"""FaustStateTable's read cache: per partition, write-through, emptied at rebalances."""

from __future__ import annotations

from typing import Any

import pytest

from snf.runtime.worker import faust_compat, faust_table
from snf.runtime.worker.faust_table import FaustStateTable


class CountingDict(dict):
    """Stands in for the Faust table: counts the reads that reach it."""

    reads = 0

    def get(self, key: Any, default: Any = None) -> Any:
        self.reads += 1
        return super().get(key, default)


@pytest.fixture
def partition(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    current = [0]
    monkeypatch.setattr(faust_compat, "current_partition", lambda: current[0])
    return current


def test_reads_are_cached_per_partition_and_writes_go_through(partition: list[int]) -> None:
    backing = CountingDict({b"k": [1]})
    table = FaustStateTable(backing)
    assert table.get(b"k") == [1] and table.get(b"k") == [1]
    assert table.get(b"absent") is None and table.get(b"absent") is None
    assert backing.reads == 2  # one per key, absent keys included
    table.set(b"k", [2])
    assert backing[b"k"] == [2] and table.get(b"k") == [2] and backing.reads == 2
    table.delete(b"k")
    assert b"k" not in backing and table.get(b"k") is None and backing.reads == 2
    partition[0] = 1  # another partition's entry under the same key is its own
    backing[b"k"] = [9]
    assert table.get(b"k") == [9] and backing.reads == 3


def test_forget_reads_again_what_a_rebalance_may_have_changed(partition: list[int]) -> None:
    backing = CountingDict({b"k": [1]})
    table = FaustStateTable(backing)
    assert table.get(b"k") == [1]
    backing[b"k"] = [5]  # as changelog recovery writes RocksDB directly
    table.forget()
    assert table.get(b"k") == [5] and backing.reads == 2


def test_the_cache_stays_bounded(partition: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faust_table, "CACHED_KEYS", 3)
    backing = CountingDict()
    table = FaustStateTable(backing)
    for i in range(10):
        table.get(bytes([i]))
    assert table._cached <= 3
    assert table.get(bytes([9])) is None
