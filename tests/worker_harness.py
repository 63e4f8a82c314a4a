"""A worker's Processor without Faust or Kafka: the state table is a dict whose
writes are logged in order (the changelog), and sends are recorded with futures
the test acknowledges when it likes (import from tests.worker_harness)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from snf import wire
from snf.guarantee.journal import JOURNAL_PREFIX
from snf.guarantee.lineage import MAX_LINEAGE_VALUE, Lineage
from snf.packet.batch import PacketBatch
from snf.pipeline.loader import parse_pipeline
from snf.pipeline.model import Pipeline
from snf.pipeline.routing import plan_pipeline
from snf.runtime.worker.processor import InputRecord, Processor
from tests.packets import tcp4

__all__ = [
    "LoggedTable",
    "Sends",
    "input_records",
    "make_processor",
    "outputs_by_lineage",
    "restore",
    "user_state",
]

CAPTURE = "capture:test/0"  # the lineage origin of the records input_records makes
FLOWMON = "name: j\npartitions: 1\nfunctions:\n  - {name: fm, function: flowmon}\n"


class LoggedTable:
    """The single state table of one partition; `log` is its changelog, in order.
    Values go through JSON, as Faust's codec would store them."""

    def __init__(self, data: dict[bytes, Any] | None = None) -> None:
        self.data: dict[bytes, Any] = dict(data or {})
        self.log: list[tuple[bytes, Any]] = []

    def get(self, key: bytes) -> Any | None:
        return self.data.get(key)

    def set(self, key: bytes, value: Any) -> None:
        value = json.loads(json.dumps(value))
        self.data[key] = value
        self.log.append((key, value))

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)
        self.log.append((key, None))

    def items(self) -> Iterable[tuple[bytes, Any]]:
        return list(self.data.items())


def restore(log: Iterable[tuple[bytes, Any]]) -> LoggedTable:
    """What a new owner restores from a changelog (prefix)."""
    table = LoggedTable()
    for key, value in log:
        if value is None:
            table.data.pop(key, None)
        else:
            table.data[key] = value
    return table


def user_state(table: LoggedTable) -> dict[bytes, Any]:
    """The tables' contents without the journal's ring."""
    return {k: v for k, v in table.data.items() if not k.startswith(JOURNAL_PREFIX)}


@dataclass
class Send:
    topic: str
    value: bytes
    partition: int
    lineage: Lineage | None  # None: a dead letter
    future: asyncio.Future
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Sends:
    """The injected send function: records each message; acks are the test's to give."""

    sent: list[Send] = field(default_factory=list)
    auto_ack: bool = True

    async def __call__(
        self, topic: str, value: bytes, partition: int, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        dead = topic.endswith(".dlq")  # keeps the original headers, however malformed
        lineage = None if dead else Lineage.from_headers(headers)
        assert lineage is not None or dead
        self.sent.append(Send(topic, value, partition, lineage, future, list(headers)))
        if self.auto_ack:
            future.set_result(None)
        return future

    def ack(self, fraction: float, rng: Any) -> None:
        """Acknowledge each pending send with probability `fraction`, oldest first."""
        for s in self.sent:
            if not s.future.done() and rng.random() < fraction:
                s.future.set_result(None)

    def acked(self) -> list[Send]:
        return [s for s in self.sent if s.future.done()]


def outputs_by_lineage(sends: Iterable[Send]) -> dict[Lineage, tuple[str, int, bytes]]:
    """What a downstream consumer keeps: one message per lineage (a redo's copy must be
    identical to the first)."""
    out: dict[Lineage, tuple[str, int, bytes]] = {}
    for s in sends:
        message = (s.topic, s.partition, s.value)
        assert out.setdefault(s.lineage, message) == message, f"a redo changed {s.lineage}"
    return out


def make_processor(
    table: LoggedTable, sends: Sends, text: str = FLOWMON
) -> tuple[Processor, Pipeline]:
    pipeline = parse_pipeline(text)
    fn = pipeline.functions[0]
    return Processor(fn, plan_pipeline(pipeline), table, sends), pipeline


FLOWS = [(f"10.0.0.{1 + i % 3}", f"192.0.2.{1 + i % 2}", 1000 + i, 80) for i in range(5)]


def input_records(n: int, rng: Any, *, end: bool = True) -> list[InputRecord]:
    """`n` batches of 1-4 packets of a few TCP flows (each with a capture lineage),
    then an end marker: what partition 0 of a function's input topic holds."""
    records = []
    seq = 0
    for offset in range(n):
        rows = []
        for _ in range(rng.randrange(1, 5)):
            src, dst, sport, dport = rng.choice(FLOWS)
            frame = tcp4(src, dst, sport, dport, flags=rng.choice(["S", "A", "PA", "FA"]))
            rows.append((1_000_000_000 * (offset + 1) + seq, len(frame), frame, 7, seq, ""))
            seq += 1
        value = wire.encode(PacketBatch.from_rows(1, rows, batch_id=offset))
        headers = [Lineage(CAPTURE, seq - 1, 0).header()]  # stamped as the capture agent does
        records.append(InputRecord(0, offset, value, headers))
    if end:
        marker = wire.EndMarker("run", 1_000_000_000 * (n + 1))
        headers = [Lineage(CAPTURE, MAX_LINEAGE_VALUE - 1, 0).header()]
        records.append(InputRecord(0, n, wire.encode_end_marker(marker), headers))
    return records
