"""FunctionEngine and BatchState: the code both shells share."""

from __future__ import annotations

from typing import ClassVar

import pytest

from snf.core.contract import Decisions, FinishContext, FunctionConfig, NetworkFunction, triage
from snf.core.engine import FunctionEngine
from snf.core.reasons import MALFORMED, NON_IP, numbered
from snf.core.tables import CONTROL_TABLE, BatchState, MemoryStore
from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.parse import parse_packet_batch
from snf.wire import EndMarker
from tests.packets import arp, tcp4


class Exploding(NetworkFunction):
    kind = "exploding"
    tables: ClassVar[tuple[str, ...]] = ("t",)
    Config = FunctionConfig

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        state.table("t").set(b"k", 1)
        raise RuntimeError("core bug")


class Counting(NetworkFunction):
    kind = "counting"
    reasons: ClassVar[tuple[str, ...]] = ("odd",)
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


class Saying(NetworkFunction):
    """Gives every packet the reason it is told to, and counts what it is told to."""

    kind = "saying"
    reasons: ClassVar[tuple[str, ...]] = ("late", numbered("rule"))
    metrics: ClassVar[tuple[str, ...]] = ("new", "ended")
    Config = FunctionConfig

    def __init__(self, reason: str = "", counted: dict[str, int] | None = None) -> None:
        super().__init__(FunctionConfig())
        self.reason = reason
        self.counted = counted or {}

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        n = len(batch)
        return Decisions(["drop"] * n, [self.reason] * n, metrics=dict(self.counted))

    def finish(self, state: BatchState, ctx: FinishContext) -> dict[str, list]:
        ctx.metrics["ended"] += 2
        return {}


def _said(reason: str, counted: dict[str, int] | None = None) -> FunctionEngine:
    engine = FunctionEngine(Saying(reason, counted))
    engine.handle(_batch(3), BatchState({}))
    return engine


def test_declared_reasons_and_numbered_ones_are_counted() -> None:
    assert _said("late").counters == {"in": 3, "drop:late": 3}
    assert _said(numbered("rule", 12)).counters == {"in": 3, "drop:rule:12": 3}


@pytest.mark.parametrize("reason", ["early", "rule:x", "rule:", "rule:N", "sid:1", "rule:1:2"])
def test_an_undeclared_reason_is_refused(reason: str) -> None:
    with pytest.raises(ValueError, match=f"saying gave undeclared reason '{reason}'"):
        _said(reason)


def test_metrics_of_process_and_finish_are_counted_once_declared() -> None:
    engine = _said("", {"new": 2, "ended": 0})
    assert engine.counters == {"in": 3, "drop": 3, "new": 2}
    out = engine.end_of_input(EndMarker("e", 0), 0, BatchState({CONTROL_TABLE: MemoryStore()}))
    assert out is not None
    assert engine.counters == {"in": 3, "drop": 3, "new": 2, "ended": 2, "flushes": 1}
    with pytest.raises(ValueError, match="saying counted undeclared metric 'old'"):
        _said("", {"old": 1})


def test_a_metric_may_not_take_a_name_the_engine_counts() -> None:
    for name in ("in", "drop", "pass:late", "flushes"):
        fn = Saying()
        fn.metrics = (name,)  # type: ignore[misc]
        with pytest.raises(ValueError, match=f"metric '{name}' is a name the engine uses"):
            FunctionEngine(fn)


def test_triage_decides_what_carries_no_ip() -> None:
    frames = [tcp4("10.0.0.1", "10.0.0.2", 1, 2), arp(), b"\x00" * 13]
    rows = [(0, len(f), f, 1, i, "") for i, f in enumerate(frames)]
    headers = parse_packet_batch(PacketBatch.from_rows(LINKTYPE_ETHERNET, rows))
    decisions, ip = triage(headers)
    assert (decisions.ports, decisions.reasons, list(ip)) == (
        ["pass", "pass", "drop"],
        ["", "", MALFORMED],
        [0],
    )
    decisions, ip = triage(headers, drop_non_ip=True)
    assert (decisions.ports, decisions.reasons) == (
        ["pass", "drop", "drop"],
        ["", NON_IP, MALFORMED],
    )
    decisions, ip = triage(parse_packet_batch(PacketBatch.from_rows(LINKTYPE_ETHERNET, rows[:1])))
    assert (decisions.ports, decisions.reasons, list(ip)) == (["pass"], [""], [0])
