"""--local: the whole pipeline in one process, with in-memory state.

The reference mode. It runs the same FunctionEngine per function, keeps one
state per (function, partition) and routes between stages with the same
StageRouters as the Kafka workers, so a Kafka run must produce the same
Collector contents. Batches go depth-first through the chain as they come.
"""

from __future__ import annotations

from snf.batch import PacketBatch
from snf.collect import EGRESS, Collector
from snf.engine import FunctionEngine, StageOutput
from snf.pipeline import Pipeline
from snf.routing import Hop, StageRouter, chain, deliveries, stage_router
from snf.state import BatchState, MemoryStore
from snf.wire import Flush

__all__ = ["LocalPipeline"]


class LocalPipeline:
    def __init__(self, pipeline: Pipeline, collector: Collector | None = None) -> None:
        self.pipeline = pipeline
        self.collector = collector or Collector()
        n = pipeline.partitions
        functions, self.hops = chain(pipeline)
        self.names = [pf.name for pf in pipeline.functions]
        self.engines = [FunctionEngine(f) for f in functions]
        self.stores: list[list[dict[str, MemoryStore]]] = [
            [BatchState.memory(pf.state_tables) for _ in range(n)] for pf in pipeline.functions
        ]
        self.routers: list[StageRouter | None] = [
            stage_router(self.hops, i, n) for i in range(len(functions))
        ]

    @property
    def ingress_hop(self) -> Hop:
        return self.hops[0]

    def __call__(self, partition: int, batch: PacketBatch) -> None:
        """Push one ingress batch through the chain (same signature as a publisher)."""
        self._stage(0, partition, batch)

    def _stage(self, i: int, partition: int, batch: PacketBatch) -> None:
        out = self.engines[i].handle(batch, BatchState(self.stores[i][partition]))
        self._emit(i, out)
        last = self.routers[i] is None
        for port, p, b in deliveries(out, partition, self.routers[i]):
            if port != "pass":
                self.collector.add((self.names[i], port), b)
            elif last:
                self.collector.add(EGRESS, b)
            else:
                self._stage(i + 1, p, b)

    def _emit(self, i: int, out: StageOutput) -> None:
        for port, records in out.records.items():
            self.collector.add_records((self.names[i], port), records)

    def flush(self, flush_id: str, end_ts_ns: int) -> None:
        """End of input: every function flushes every partition, in chain order."""
        for i, engine in enumerate(self.engines):
            for p in range(self.pipeline.partitions):
                out = engine.control(
                    Flush(flush_id, end_ts_ns, 1), p, BatchState(self.stores[i][p])
                )
                if out is not None:
                    self._emit(i, out)
