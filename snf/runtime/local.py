"""--local: the whole pipeline in one process, with in-memory state.

The reference mode. It runs the same FunctionEngine per function, keeps one
state per (function, partition) and routes between functions with the same
routers as the Kafka workers (snf.pipeline.routing.deliveries), so a Kafka run must
produce the same Collector contents. Batches go depth-first through the
graph as they come. With `heads`, batches are cut to their heads where a
Kafka worker would cut them (Route.heads) and the collector joins the tails
back from the ingress batches, as the Kafka sink does: a check of the join.
"""

from __future__ import annotations

from snf.core.engine import FunctionEngine, StageOutput
from snf.core.tables import BatchState, MemoryStore
from snf.egress.collector import Collector
from snf.packet.batch import PacketBatch
from snf.packet.heads import cut_heads
from snf.pipeline.model import Pipeline
from snf.pipeline.routing import Hop, PipelinePlan, StageRouter, deliveries, plan_pipeline
from snf.wire import EndMarker

__all__ = ["LocalPipeline"]


class LocalPipeline:
    def __init__(
        self, pipeline: Pipeline, collector: Collector | None = None, heads: bool = False
    ) -> None:
        self.pipeline = pipeline
        self.heads = heads
        self.collector = collector or Collector()
        self.plan: PipelinePlan = plan_pipeline(pipeline)
        self.engines = {name: FunctionEngine(core) for name, core in self.plan.cores.items()}
        self.stores: dict[str, list[dict[str, MemoryStore]]] = {
            pf.name: [BatchState.memory(pf.state_tables) for _ in range(pf.partitions)]
            for pf in pipeline.functions
        }
        self.routers: dict[str, dict[str, StageRouter]] = {
            pf.name: self.plan.routers(pf.name) for pf in pipeline.functions
        }

    @property
    def ingress_hop(self) -> Hop:
        return self.plan.ingress_hop

    @property
    def hops(self) -> list[Hop]:
        """Input hop per function, in declaration order."""
        return [self.plan.hops[f.name] for f in self.pipeline.functions]

    def __call__(self, partition: int, batch: PacketBatch) -> None:
        """Push one ingress batch through the graph (same signature as a publisher)."""
        if self.heads:
            self.collector.add_payloads(batch)
        self._stage(self.pipeline.graph.entry, partition, batch)

    def _stage(self, name: str, partition: int, batch: PacketBatch) -> None:
        pf = self.pipeline.function(name)
        state = BatchState(self.stores[name][partition], partition=partition)
        out = self.engines[name].handle(batch, state)
        self._emit(name, out)
        for port, route, p, b in deliveries(out, partition, pf, self.routers[name]):
            if self.heads and route.heads:
                b = cut_heads(b)
            if route.dest.kind == "function":
                self._stage(route.dest.target, p, b)
            else:
                key = pf.terminal_key(port, route.dest)
                assert key is not None
                self.collector.add(key, b)

    def _emit(self, name: str, out: StageOutput) -> None:
        pf = self.pipeline.function(name)
        for port, records in out.records.items():
            for route in pf.routes[port]:
                key = pf.terminal_key(port, route.dest)
                if key is not None:
                    self.collector.add_records(key, records)

    def port_totals(self) -> dict[str, dict[str, int]]:
        """function -> "in" and packets per packet port, from the engines' counters."""
        out = {}
        for name, engine in self.engines.items():
            totals = {"in": engine.counters["in"]}
            for port in engine.ports:
                totals[port] = sum(
                    n for k, n in engine.counters.items() if k == port or k.startswith(port + ":")
                )
            out[name] = totals
        return out

    def end_of_input(self, end_id: str, end_ts_ns: int) -> None:
        """End of input: every function finishes every partition, upstream first."""
        for name in self.pipeline.graph.order:
            engine = self.engines[name]
            for p, store in enumerate(self.stores[name]):
                state = BatchState(store, partition=p)
                out = engine.end_of_input(EndMarker(end_id, end_ts_ns, 1), p, state)
                if out is not None:
                    self._emit(name, out)
