"""--local: the whole pipeline in one process, with in-memory state.

The reference mode. It runs the same FunctionEngine per function and keeps
one state per (function, partition), exactly as the Kafka workers do, so a
Kafka run must produce the same Collector contents.
"""

from __future__ import annotations

from snf.batch import PacketBatch
from snf.collect import EGRESS, Collector
from snf.engine import FunctionEngine
from snf.pipeline import Pipeline
from snf.state import BatchState, MemoryStore

__all__ = ["LocalPipeline"]


class LocalPipeline:
    def __init__(self, pipeline: Pipeline, collector: Collector | None = None) -> None:
        self.pipeline = pipeline
        self.collector = collector or Collector()
        self.stages: list[tuple[str, FunctionEngine, list[dict[str, MemoryStore]]]] = [
            (
                pf.name,
                FunctionEngine(pf.create(pipeline.partitions)),
                [BatchState.memory(pf.cls.tables) for _ in range(pipeline.partitions)],
            )
            for pf in pipeline.functions
        ]

    def __call__(self, partition: int, batch: PacketBatch) -> None:
        """Push one ingress batch through the chain (same signature as a publisher)."""
        current = [batch]
        last = len(self.stages) - 1
        for i, (name, engine, stores) in enumerate(self.stages):
            following: list[PacketBatch] = []
            for b in current:
                for port, out in engine.handle(b, BatchState(stores[partition])).items():
                    if port == "pass":
                        if i < last:
                            following.append(out)
                        else:
                            self.collector.add(EGRESS, out)
                    else:
                        self.collector.add((name, port), out)
            current = following
