"""Shared pieces of the function tests (import as ``from tests.harness import JsonStore``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from snf.core.contract import Record
from snf.core.engine import FunctionEngine
from snf.core.reasons import ERROR
from snf.core.tables import BatchState, MemoryStore
from snf.packet.batch import PacketBatch

__all__ = ["Handled", "JsonStore", "handle"]


class JsonStore(MemoryStore):
    """MemoryStore that stores values as Faust's JSON would, and counts writes."""

    def __init__(self) -> None:
        super().__init__()
        self.sets = 0
        self.deletes = 0

    def set(self, key: bytes, value: Any) -> None:
        self.sets += 1
        super().set(key, json.loads(json.dumps(value)))

    def delete(self, key: bytes) -> None:
        self.deletes += 1
        super().delete(key)


@dataclass
class Handled:
    """What one batch became in a FunctionEngine, per packet in batch order."""

    ports: list[str]
    reasons: list[str]
    frames: list[bytes]  # every packet as it left (rewritten or not)
    records: dict[str, list[Record]]  # the non-empty record ports
    rewritten: bool  # some packet's bytes changed
    writes: int  # state writes of the batch (at most one per changed key)


def handle(engine: FunctionEngine, batch: PacketBatch, stores: Mapping[str, JsonStore]) -> Handled:
    """Run one batch through `engine`, as both shells do, with state in `stores`.

    Packet ids must be unique within the batch. A core that raised fails the
    test here: the engine would have dropped the whole batch with reason ERROR.
    """
    before = sum(s.sets + s.deletes for s in stores.values())
    out = engine.handle(batch, BatchState(dict(stores)))
    n = len(batch)
    where = {pid: i for i, pid in enumerate(batch.packet_ids())}
    assert len(where) == n, "packet ids must be unique within a batch"
    ports, reasons, frames = [""] * n, [""] * n, [b""] * n
    for port, sub in out.packets.items():
        for j, pid in enumerate(sub.packet_ids()):
            i = where[pid]
            ports[i], reasons[i], frames[i] = port, sub.reason_of(j), sub.packet(j)
    assert ERROR not in reasons, f"{engine.function.kind} raised on a batch (see the log)"
    writes = sum(s.sets + s.deletes for s in stores.values()) - before
    return Handled(ports, reasons, frames, out.records, out.rewritten, writes)
