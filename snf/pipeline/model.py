"""A validated pipeline: its functions, their wiring, and every name derived from it.

Per-function settings (instances, partitions, replication, standby replicas,
processing guarantee) default to the pipeline's. `PipelineFunction.routes`
resolves each output port to topics; `Pipeline.topic_specs` lists every topic
to create, changelogs included. Load one with snf.pipeline.loader.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from snf.core.contract import FunctionConfig, NetworkFunction
from snf.core.tables import CONTROL_TABLE, STATE_TABLE
from snf.errors import ConfigError
from snf.pipeline import names
from snf.pipeline.graph import Dest, Graph
from snf.pipeline.spec import Autoscale, FunctionSpec, PipelineSpec

__all__ = [
    "COMPACTED_TOPIC_CONFIGS",
    "EGRESS",
    "Layout",
    "Pipeline",
    "PipelineFunction",
    "PortKey",
    "Route",
    "TopicSpec",
    "topic_configs",
]

# How the sink names a terminal: (function, port); egress is ("", "egress").
PortKey = tuple[str, str]
EGRESS: PortKey = ("", "egress")


@dataclass(frozen=True)
class TopicSpec:
    partitions: int
    replication: int
    configs: dict[str, str] = dataclasses.field(default_factory=dict)


# A changelog is compacted, but Kafka's log cleaner only cleans closed segments,
# and by default a segment closes at 1 GiB or after 7 days: a changelog of a
# function that sweeps (deletes) its expired entries would never be compacted,
# and a successor would replay every write and tombstone since the start
# (docs/FAULT-TOLERANCE.md, "Changelog restore time" after a flood).
COMPACTED_TOPIC_CONFIGS = {
    "cleanup.policy": "compact",
    # Close a segment at 64 MiB or 10 min (at its next write): what is never
    # compacted is at most that much of the newest writes.
    "segment.bytes": str(64 << 20),
    "segment.ms": str(10 * 60_000),
    # Clean once 10% of the log is dirty (Kafka's 0.5 lets it grow to twice the
    # live state): a restore reads every record, so fewer beats less cleaner I/O.
    "min.cleanable.dirty.ratio": "0.1",
    # A tombstone stays 1 h after its segment was cleaned (Kafka: 24 h). A reader
    # that saw the put must see the delete too: a restore (2 min for 1M records)
    # or a catching-up standby must reach the end of the log within it.
    "delete.retention.ms": str(3_600_000),
}


def topic_configs(replication: int, compact: bool = False) -> dict[str, str]:
    """Kafka's usual durability pairing: with 3 replicas, a write needs 2;
    changelogs (`compact`) also get COMPACTED_TOPIC_CONFIGS."""
    configs = {"min.insync.replicas": str(max(1, replication - 1))}
    if compact:
        configs |= COMPACTED_TOPIC_CONFIGS
    return configs


@dataclass(frozen=True)
class Layout:
    """What every function needs to know about the others (name-independent)."""

    entry: str
    partitions: dict[str, int]  # function -> partitions of its input
    egress_partitions: int
    external: dict[str, int]  # topic:NAME destinations -> partitions
    private: bool = False  # a one-shot run: topic:NAME becomes snf.<run>.topic.NAME
    heads: bool = False  # ship heads after ingress (the pipeline's `ship: heads`)
    whole: frozenset[str] = frozenset()  # functions whose input must carry whole packets
    # functions whose outputs must carry whole packets: after a payload rewrite
    # (NetworkFunction.rewrites_payload) the ingress copy no longer completes a head
    whole_out: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Route:
    """One destination of one output port, resolved to a topic."""

    dest: Dest
    topic: str | None  # None: discard
    partitions: int  # of that topic
    heads: bool = False  # packets on it may be cut to their heads (snf.packet.heads)


@dataclass(frozen=True)
class PipelineFunction:
    """A validated function with its class, its config model and its derived wiring."""

    pipeline: str
    name: str
    kind: str
    spec: FunctionSpec
    cls: type[NetworkFunction]
    config: FunctionConfig
    outputs: dict[str, tuple[Dest, ...]]  # port -> destinations
    inputs: tuple[tuple[str, str], ...]  # upstream (function, port); () for the entry
    layout: Layout
    replication: int | None  # None: the cluster's (Pipeline.resolved)

    @property
    def partitions(self) -> int:
        return self.layout.partitions[self.name]

    @property
    def autoscaled(self) -> bool:
        return isinstance(self.spec.instances, Autoscale)

    @property
    def instances(self) -> int:
        """Instances to start with: the fixed count, or max(min, 1) when autoscaled."""
        s = self.spec.instances
        return s if isinstance(s, int) else max(s.min, 1)

    @property
    def min_instances(self) -> int:
        s = self.spec.instances
        return s if isinstance(s, int) else s.min

    @property
    def max_instances(self) -> int:
        s = self.spec.instances
        return s if isinstance(s, int) else s.max

    @property
    def lag_threshold(self) -> int:
        s = self.spec.instances
        return 10 if isinstance(s, int) else s.lag_threshold

    @property
    def cooldown(self) -> float:
        s = self.spec.instances
        return 60.0 if isinstance(s, int) else s.cooldown

    @property
    def standby_replicas(self) -> int:
        return self.spec.standby_replicas

    @property
    def processing_guarantee(self) -> str:
        return self.spec.processing_guarantee

    @property
    def journaled(self) -> bool:
        """Whether its worker journals events and dedups by lineage (snf.guarantee.journal)."""
        return self.spec.processing_guarantee == "exactly_once"

    @property
    def entry(self) -> bool:
        return self.layout.entry == self.name

    @property
    def input_topic(self) -> str:
        if self.entry:
            return names.ingress_topic(self.pipeline)
        return names.input_topic(self.pipeline, self.name)

    @property
    def dlq_topic(self) -> str:
        """Where the worker puts input messages it cannot process (snf dlq)."""
        return names.dlq_topic(self.input_topic)

    def route(self, port: str, dest: Dest) -> Route:
        lay = self.layout
        heads = lay.heads and self.name not in lay.whole_out
        if dest.kind == "function":
            topic = names.input_topic(self.pipeline, dest.target)
            heads = heads and dest.target not in lay.whole
            return Route(dest, topic, lay.partitions[dest.target], heads)
        if dest.kind == "egress":
            return Route(dest, names.egress_topic(self.pipeline), lay.egress_partitions, heads)
        if dest.kind == "topic":
            topic = names.private_topic(self.pipeline, dest.target) if lay.private else dest.target
            return Route(dest, topic, lay.external[dest.target])
        if dest.kind == "port":
            topic = names.port_topic(self.pipeline, self.name, port)
            return Route(dest, topic, self.partitions, heads)
        return Route(dest, None, 0)

    @property
    def routes(self) -> dict[str, tuple[Route, ...]]:
        """Output port -> resolved destinations: packet ports, then record ports."""
        return {port: tuple(self.route(port, d) for d in ds) for port, ds in self.outputs.items()}

    @property
    def port_topics(self) -> dict[str, str]:
        """Port -> topic, for ports with exactly one destination topic (tests, docs)."""
        out = {}
        for port, routes in self.routes.items():
            topics = [r.topic for r in routes if r.topic]
            if len(topics) == 1:
                out[port] = topics[0]
        return out

    def terminal_key(self, port: str, dest: Dest) -> PortKey | None:
        """How the sink names what this port writes to a terminal (None: not a terminal)."""
        if dest.kind == "egress":
            return EGRESS
        if dest.kind == "port":
            return (self.name, port)
        if dest.kind == "topic":
            return ("topic", dest.target)
        return None

    @property
    def state_tables(self) -> tuple[str, ...]:
        """The core's tables plus the engine's control table."""
        return (*self.cls.tables, CONTROL_TABLE)

    @property
    def group_id(self) -> str:
        return names.group_id(self.pipeline, self.name)

    @property
    def changelog_topics(self) -> dict[str, str]:
        """Faust table -> changelog topic (created before the workers start). All the
        core's tables share one Faust table, so that one changelog orders them."""
        return {STATE_TABLE: names.changelog_topic(self.pipeline, self.name, STATE_TABLE)}

    def create(self, partitions: int | None = None) -> NetworkFunction:
        fn = self.cls(self.config)
        fn.partitions = partitions or self.partitions
        return fn


@dataclass(frozen=True)
class Pipeline:
    spec: PipelineSpec
    path: Path | None
    functions: list[PipelineFunction]
    graph: Graph

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def partitions(self) -> int:
        """Partitions of ingress (the entry function's)."""
        return self.function(self.graph.entry).partitions

    def function(self, name: str) -> PipelineFunction:
        for fn in self.functions:
            if fn.name == name:
                return fn
        known = ", ".join(fn.name for fn in self.functions)
        raise ConfigError(f"pipeline {self.name!r} has no function {name!r}; it has: {known}")

    @property
    def ingress_topic(self) -> str:
        return names.ingress_topic(self.name)

    def ordered(self) -> list[PipelineFunction]:
        """Functions in topological order (upstream first)."""
        return [self.function(n) for n in self.graph.order]

    def renamed(self, name: str, private: bool = False) -> Pipeline:
        """The same pipeline under another instance name (e.g. one per `snf run`);
        `private` also gives its external topics names of their own."""
        spec = self.spec.model_copy(update={"name": name})
        fns = [
            dataclasses.replace(
                fn,
                pipeline=name,
                layout=dataclasses.replace(fn.layout, private=private or fn.layout.private),
            )
            for fn in self.functions
        ]
        return Pipeline(spec, self.path, fns, self.graph)

    def terminals(self) -> dict[str, list[tuple[PipelineFunction, str, Route]]]:
        """Terminal topic -> its writers (function, port, route), in declaration order."""
        out: dict[str, list[tuple[PipelineFunction, str, Route]]] = {}
        for fn in self.functions:
            for port, routes in fn.routes.items():
                for r in routes:
                    if r.topic and r.dest.kind != "function":
                        out.setdefault(r.topic, []).append((fn, port, r))
        return out

    def sink_topics(self) -> dict[str, PortKey]:
        """Terminal topics -> the name the sink files them under."""
        out: dict[str, PortKey] = {}
        for topic, writers in self.terminals().items():
            fn, port, r = writers[0]
            key = fn.terminal_key(port, r.dest)
            assert key is not None
            out[topic] = key
        return out

    def record_topics(self) -> set[str]:
        """Terminal topics that carry JSON records rather than packets."""
        return {
            topic
            for topic, writers in self.terminals().items()
            if any(port in fn.cls.record_ports for fn, port, _ in writers)
        }

    def terminal_ends(self) -> dict[str, list[int]]:
        """Terminal topic -> per partition, the distinct end markers of one end of input.

        Writer partition p ends partition p % T of a terminal topic with T
        partitions, once per topic however many of its ports write there.
        """
        ends: dict[str, list[int]] = {}
        for topic, writers in self.terminals().items():
            t = writers[0][2].partitions
            counts = [0] * t
            for n in {fn.name: fn.partitions for fn, _, _ in writers}.values():
                for p in range(n):
                    counts[p % t] += 1
            ends[topic] = counts
        return ends

    @property
    def unresolved(self) -> bool:
        """Whether a replication factor is left to the cluster (resolved at deploy)."""
        return self.spec.replication is None or any(f.replication is None for f in self.functions)

    def resolved(self, replication: int) -> Pipeline:
        """Every replication factor left to the cluster set to `replication`."""
        spec = self.spec.model_copy(update={"replication": self.spec.replication or replication})
        fns = [
            dataclasses.replace(f, replication=f.replication or replication) for f in self.functions
        ]
        return Pipeline(spec, self.path, fns, self.graph)

    def topic_specs(self) -> dict[str, TopicSpec]:
        """Every topic to create before starting, changelogs included."""
        if self.unresolved:  # no cluster asked: as on one broker
            return self.resolved(1).topic_specs()
        specs: dict[str, TopicSpec] = {}
        rep = self.spec.replication
        entry = self.function(self.graph.entry)
        specs[self.ingress_topic] = TopicSpec(
            entry.partitions, entry.replication, topic_configs(entry.replication)
        )
        for fn in self.functions:
            if not fn.entry:
                specs[fn.input_topic] = TopicSpec(
                    fn.partitions, fn.replication, topic_configs(fn.replication)
                )
            for routes in fn.routes.values():
                for r in routes:
                    if r.topic and r.topic not in specs:
                        n = fn.replication if r.dest.kind == "port" else rep
                        specs[r.topic] = TopicSpec(r.partitions, n, topic_configs(n))
            for topic in fn.changelog_topics.values():
                specs[topic] = TopicSpec(
                    fn.partitions, fn.replication, topic_configs(fn.replication, compact=True)
                )
            specs[fn.dlq_topic] = TopicSpec(
                fn.partitions, fn.replication, topic_configs(fn.replication)
            )
        return specs

    def topics(self) -> dict[str, int]:
        """Every data topic (not changelogs) with its partition count."""
        changelogs = self.changelog_topics()
        return {t: s.partitions for t, s in self.topic_specs().items() if t not in changelogs}

    def changelog_topics(self) -> dict[str, int]:
        """Changelogs, co-partitioned with their function's input topic."""
        return {
            topic: fn.partitions for fn in self.functions for topic in fn.changelog_topics.values()
        }
