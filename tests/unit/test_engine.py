"""FunctionEngine and BatchState: the code both shells share."""

from __future__ import annotations

from typing import ClassVar

from snf.core.contract import Decisions, FunctionConfig, NetworkFunction
from snf.core.engine import FunctionEngine
from snf.core.tables import BatchState, MemoryStore
from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers
from tests.packets import tcp4


class Exploding(NetworkFunction):
    kind = "exploding"
    tables: ClassVar[tuple[str, ...]] = ("t",)
    Config = FunctionConfig

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        state.table("t").set(b"k", 1)
        raise RuntimeError("core bug")


class Counting(NetworkFunction):
    kind = "counting"
    tables: ClassVar[tuple[str, ...]] = ("t",)
    Config = FunctionConfig

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        table = state.table("t")
        for flow in headers.flow:
            table.set(flow, (table.get(flow) or 0) + 1)
        ports = ["pass" if i % 2 else "drop" for i in range(len(batch))]
        return Decisions(ports, ["" if p == "pass" else "odd" for p in ports])


def _batch(n: int) -> PacketBatch:
    rows = [(i, 60, tcp4("10.0.0.1", "10.0.0.2", 1000, 80), 5, i, "") for i in range(n)]
    return PacketBatch.from_rows(1, rows)


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self, key: bytes, value: object) -> None:
        self.sets += 1
        super().set(key, value)


def test_outputs_are_split_by_port_with_reasons_and_counted() -> None:
    engine = FunctionEngine(Counting(FunctionConfig()))
    store = CountingStore()
    out = engine.handle(_batch(10), BatchState({"t": store})).packets
    assert [seq for _, seq in out["pass"].packet_ids()] == [1, 3, 5, 7, 9]
    assert {out["drop"].reason_of(i) for i in range(5)} == {"odd"}
    assert engine.counters == {"in": 10, "pass": 5, "drop:odd": 5}
    assert store.sets == 1  # ten updates of one key, one write
    assert store.data == {next(iter(store.data)): 10}


def test_a_failing_core_drops_the_batch_with_a_reason_and_writes_nothing() -> None:
    engine = FunctionEngine(Exploding(FunctionConfig()))
    store = CountingStore()
    out = engine.handle(_batch(4), BatchState({"t": store})).packets
    assert list(out) == ["drop"]
    assert len(out["drop"]) == 4
    assert {out["drop"].reason_of(i) for i in range(4)} == {"error"}
    assert store.sets == 0


def test_table_view_reads_through_and_deletes_once() -> None:
    store = CountingStore()
    store.data[b"a"] = [1]
    view = BatchState({"t": store}).table("t")
    assert view.get(b"a") == [1]
    view.delete(b"a")
    assert view.get(b"a") is None
    view.set(b"b", [2])
    view.delete(b"b")
    assert view.write_back() == 2
    assert store.data == {}
