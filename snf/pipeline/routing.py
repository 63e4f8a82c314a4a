"""Partitioning across functions: how packets enter each stage of a chain.

Each function declares what its state needs (NetworkFunction.key): "any",
"flow" (both directions of a flow on one partition) or "custom" (its own
key_hashes). `plan()` turns a chain into one Hop per stage:

    keep   the packets are already where the stage needs them: the batch
           goes to the same partition number, unsplit
    flow   route by the bidirectional flow hash
    key    route by functions' key_hashes: the stage's own key and, ahead of
           it, the custom keys that every stage up to them accepts (a packet
           follows the first of them that has a preference for it)

So a chain such as firewall -> nat is partitioned at ingress by the NAT's
key (flow-consistent, so the firewall is served too) and the batches pass
from the firewall to the NAT without a split. A StageRouter applies a hop to
an output batch: it splits the batch only when some packet must move.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from snf.core.contract import NetworkFunction
from snf.core.engine import StageOutput
from snf.packet.batch import PacketBatch
from snf.packet.fragments import FlowRouter
from snf.packet.headers import Headers
from snf.packet.parse import parse_packet_batch
from snf.pipeline.model import Pipeline, PipelineFunction, Route

__all__ = [
    "Hop",
    "PipelinePlan",
    "StageRouter",
    "deliveries",
    "key_hashes",
    "plan",
    "plan_pipeline",
]


@dataclass(frozen=True)
class Hop:
    mode: Literal["keep", "flow", "key"]
    # "key": the functions whose key_hashes route, in chain order: a packet goes
    # by the first one that has a preference for it. "keep": the keys the
    # packets already follow (empty: the flow hash).
    keyers: tuple[NetworkFunction, ...] = ()
    indices: tuple[int, ...] = ()  # the keyers' positions in the chain

    def describe(self, names: Sequence[str]) -> str:
        if self.mode == "key":
            return "partitioned by the key of " + ", then ".join(names[i] for i in self.indices)
        return "keeps its partition (no re-split)" if self.mode == "keep" else "partitioned by flow"


def _composite(functions: Sequence[NetworkFunction], j: int) -> list[int]:
    """Custom keys, from stage j on, that can partition stage j's input together.

    Flow-consistent keys combine: packets one function has no preference for
    follow the next one's (the NAT does not care where a VIP's traffic goes,
    the load balancer does), so one partitioning serves them all and the
    batches need not be split between them. A key that splits flows (ratelimit
    by src) serves only itself and "any" stages before it.
    """
    keyers: list[int] = []
    only_any = True
    for k in range(j, len(functions)):
        g = functions[k]
        if g.key == "custom":
            if g.key_flow_consistent:
                keyers.append(k)
                continue
            if not keyers and only_any:
                return [k]
            break
        if g.key == "flow":
            only_any = False
    return keyers


def plan(functions: Sequence[NetworkFunction]) -> list[Hop]:
    """One Hop per stage; hops[0] is how the capture agent partitions ingress."""
    hops: list[Hop] = []
    flow_consistent: bool | None = None  # None: nothing partitioned yet (ingress)
    for j, f in enumerate(functions):
        if (
            f.key != "custom"
            and flow_consistent is not None
            and (f.key == "any" or flow_consistent)
        ):
            # Carry the keys the packets are partitioned by, for the next hop's check.
            hops.append(Hop("keep", hops[-1].keyers, hops[-1].indices))
            continue
        ks = _composite(functions, j)
        if ks:
            keyers = tuple(functions[k] for k in ks)
            hops.append(Hop("key", keyers, tuple(ks)))
            flow_consistent = all(g.key_flow_consistent for g in keyers)
        else:
            hops.append(Hop("flow"))
            flow_consistent = True
    return hops


class StageRouter:
    """Applies one hop to the batches a stage's upstream emits."""

    def __init__(self, hop: Hop, partitions: int, previous: Hop | None = None) -> None:
        self.hop = hop
        self.partitions = partitions
        # Same key as the hop before and nothing rewritten since: packets are in place.
        self.same_as_previous = (
            previous is not None
            and hop.mode == "key"
            and previous.mode != "flow"
            and previous.indices == hop.indices
        )
        self.router = FlowRouter()
        self.split_batches = 0

    def route(
        self, batch: PacketBatch, partition: int, rewritten: bool = True
    ) -> list[tuple[int, PacketBatch]]:
        """(partition, batch) pairs: the batch whole when it may stay, else its parts."""
        hop = self.hop
        if hop.mode == "keep" or (self.same_as_previous and not rewritten) or not len(batch):
            return [(partition, batch)]
        headers = parse_packet_batch(batch)
        hashes = key_hashes(hop.keyers, batch, headers) if hop.mode == "key" else None
        parts = self.router.route(
            headers, batch.records["ts_ns"], self.partitions, hashes, partition
        )
        if all(p == partition for p in parts):
            return [(partition, batch)]
        self.split_batches += 1
        by_part: dict[int, list[int]] = {}
        for i, p in enumerate(parts):
            by_part.setdefault(p, []).append(i)
        return [(p, batch.select(idx)) for p, idx in sorted(by_part.items())]


def deliveries(
    out: StageOutput, partition: int, fn: PipelineFunction, routers: dict[str, StageRouter]
) -> Iterator[tuple[str, Route, int, PacketBatch]]:
    """(port, route, partition, batch) for each packet output of a stage, in both
    shells: links to functions through that function's router, terminals on the
    event's partition (modulo the topic's count), discard nowhere."""
    routes = fn.routes
    for port, batch in out.packets.items():
        for r in routes[port]:
            if r.dest.kind == "function":
                for p, part in routers[r.dest.target].route(batch, partition, out.rewritten):
                    yield port, r, p, part
            elif r.topic is not None:
                yield port, r, partition % r.partitions, batch


def key_hashes(
    keyers: Sequence[NetworkFunction], batch: PacketBatch, headers: Headers
) -> list[int | None]:
    """Per packet, the first keyer's hash that is not None (None when none cares)."""
    merged = list(keyers[0].key_hashes(batch, headers))
    for g in keyers[1:]:
        if None not in merged:
            break
        merged = [
            h if h is not None else o
            for h, o in zip(merged, g.key_hashes(batch, headers), strict=True)
        ]
    return merged


@dataclass
class PipelinePlan:
    """The cores of a pipeline (one each), their input hops and edge routers."""

    pipeline: Pipeline
    cores: dict[str, NetworkFunction]
    hops: dict[str, Hop]

    @property
    def ingress_hop(self) -> Hop:
        return self.hops[self.pipeline.graph.entry]

    def routers(self, name: str) -> dict[str, StageRouter]:
        """Downstream function -> the router for this function's links to it."""
        fn = self.pipeline.function(name)
        out = {}
        for down in self.pipeline.graph.downstream(name):
            g = self.pipeline.function(down)
            previous = self.hops[name] if g.partitions == fn.partitions else None
            out[down] = StageRouter(self.hops[down], g.partitions, previous)
        return out

    def ends_expected(self, name: str) -> int:
        """Distinct end markers one partition of `name` waits for: one per
        upstream partition that can send it packets."""
        fn = self.pipeline.function(name)
        if fn.entry:
            return 1
        keep = self.hops[name].mode == "keep"
        ups = {u for u, _ in fn.inputs}
        return sum(1 if keep else self.pipeline.function(u).partitions for u in ups)

    def marker_targets(self, name: str, partition: int) -> list[tuple[str, list[int]]]:
        """(topic, partitions) that a finished partition of `name` sends its end marker to."""
        fn = self.pipeline.function(name)
        targets: dict[str, list[int]] = {}
        for routes in fn.routes.values():
            for r in routes:
                if r.topic is None or r.topic in targets:
                    continue
                if r.dest.kind == "function" and self.hops[r.dest.target].mode != "keep":
                    targets[r.topic] = list(range(r.partitions))
                else:
                    targets[r.topic] = [partition % r.partitions]
        return list(targets.items())

    def describe(self, name: str) -> str:
        return self.hops[name].describe([f.name for f in self.pipeline.functions])


def plan_pipeline(pipeline: Pipeline) -> PipelinePlan:
    """Hops over the pipeline's graph (see the module docstring).

    Along a linear stretch (each function feeding exactly one function that
    has no other input, with the same partition count) this is plan() over
    that stretch. Where inputs meet (fan-in), packets keep their partitions
    only if every upstream is partitioned the same way; otherwise the
    function's own key re-partitions every link into it.
    """
    graph = pipeline.graph
    index = {f.name: i for i, f in enumerate(pipeline.functions)}
    cores = {f.name: f.create() for f in pipeline.functions}
    hops: dict[str, Hop] = {}
    for name in graph.order:
        fn = pipeline.function(name)
        core = cores[name]
        prev = None if fn.entry else _common(pipeline, hops, name)
        if core.key != "custom" and prev is not None and (core.key == "any" or _consistent(prev)):
            hops[name] = Hop("keep", prev.keyers, prev.indices)
            continue
        stretch = _stretch(pipeline, name)
        ks = _composite([cores[n] for n in stretch], 0)
        if ks:
            chosen = [stretch[k] for k in ks]
            hops[name] = Hop(
                "key", tuple(cores[n] for n in chosen), tuple(index[n] for n in chosen)
            )
        else:
            hops[name] = Hop("flow")
    return PipelinePlan(pipeline, cores, hops)


def _consistent(hop: Hop) -> bool:
    """Does this partitioning keep every flow on one partition?"""
    return all(g.key_flow_consistent for g in hop.keyers)


def _common(pipeline: Pipeline, hops: dict[str, Hop], name: str) -> Hop | None:
    """The partitioning all of `name`'s upstreams share, at its partition count."""
    fn = pipeline.function(name)
    found: set[tuple[int, ...]] = set()
    hop = None
    for up, _ in fn.inputs:
        if pipeline.function(up).partitions != fn.partitions:
            return None
        hop = hops[up]
        found.add(hop.indices)
    return hop if len(found) == 1 else None


def _stretch(pipeline: Pipeline, name: str) -> list[str]:
    """`name` and the functions after it while each feeds exactly one function
    that reads nothing else and has the same partition count."""
    out = [name]
    graph = pipeline.graph
    while True:
        downs = graph.downstream(out[-1])
        if len(downs) != 1:
            return out
        nxt = pipeline.function(downs[0])
        if len(nxt.inputs) != 1 or nxt.partitions != pipeline.function(name).partitions:
            return out
        out.append(nxt.name)
