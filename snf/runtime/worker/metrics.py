"""WorkerMetrics: one worker's Prometheus metrics, in a registry of its own.

Served at /metrics by snf.runtime.worker.health. Every family has the labels
pipeline, function and instance (the supervisor's instance number, from
$SNF_INSTANCE, else the host name: a pod's name), some a fourth (FAMILIES).

Counting costs the hot path nothing new: the engine's counters
(FunctionEngine.counters, which stats.json also shows), the Processor's
batch count and the state stores' read and write counts are plain integers,
turned into samples only when /metrics is scraped. Histograms are observed
once per stage per batch (`lap`), never per packet.

Latency: a Kafka record carries its producer's send time (its timestamp), so
`snf_hop_latency_seconds` is the wall time from the capture agent's publish
(for the first function) or the upstream function's send, to this function's
outputs handed to the producer: queueing plus processing of one hop, whatever
the age of the capture being replayed. Nothing is added to the wire, so an
end-to-end figure is the sum of the hops along a path.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from snf.core.engine import FunctionEngine
    from snf.runtime.worker.state_table import CountingStore, PrefixedStore

__all__ = [
    "FAMILIES",
    "INSTANCE_ENV",
    "LABELS",
    "STAGES",
    "Family",
    "WorkerMetrics",
    "instance_name",
    "sample_names",
]

log = logging.getLogger("snf.worker")

INSTANCE_ENV = "SNF_INSTANCE"  # set by snf.ops.worker_process for each instance
LABELS = ("pipeline", "function", "instance")
# The Processor's steps per record (snf.runtime.worker.processor). Without the
# journal (at_least_once), state writes happen inside "engine". "reserve": the wait
# for a reserved table's write to be acknowledged (only batches that write one).
STAGES = ("decode", "engine", "journal", "state_apply", "reserve", "produce")
STAGE_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# 15, 20 and 35 ms: the live inline target (p99 <= 20 ms per hop) falls between them.
HOP_BUCKETS = tuple(
    ms / 1000
    for ms in (1, 2.5, 5, 10, 15, 20, 25, 35, 50, 100, 250, 500, 1e3, 2.5e3, 5e3, 1e4, 3e4, 6e4)
)
# Processor counters (in FunctionEngine.counters) of messages it skipped -> reason label.
SKIPPED = {
    "redelivered": "redelivered",  # this process handled it already (a seek back)
    "skipped": "before_recovery",  # an earlier owner handled it
    "duplicate_in": "duplicate",  # an upstream redo sent it again
    "bad_batch": "undecodable",
}

# Engine and Processor counters exported even before they first count.
ALWAYS = {
    "in": "snf_packets_in_total",
    "out": "snf_packets_sent_total",
    "flushes": "snf_finished_total",
}


@dataclass(frozen=True)
class Family:
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    labels: tuple[str, ...] = ()  # besides LABELS


FAMILIES: dict[str, Family] = {
    "snf_packets_in_total": Family("counter", "Packets the function's core received."),
    "snf_packets_out_total": Family(
        "counter",
        "Packets the core sent to each port, by reason ('' when none): drops are port=\"drop\".",
        ("port", "reason"),
    ),
    "snf_packets_sent_total": Family(
        "counter", "Packets sent to destinations (a port wired to two counts twice)."
    ),
    "snf_records_out_total": Family("counter", "Records sent per record port.", ("port",)),
    "snf_batches_total": Family("counter", "Packet batches (Kafka messages) the engine ran."),
    "snf_finished_total": Family("counter", "Partitions whose end of input finished the core."),
    "snf_messages_skipped_total": Family("counter", "Input messages skipped, by why.", ("reason",)),
    "snf_packets_skipped_total": Family(
        "counter", "Packets a resumed replay sent again, dropped at the first function."
    ),
    "snf_events_undone_total": Family("counter", "Events undone by recoveries (to run again)."),
    "snf_function_metric_total": Family("counter", "The core's own declared metrics.", ("metric",)),
    "snf_state_reads_total": Family(
        "counter", "Reads of the state store by the core (one per key per batch).", ("table",)
    ),
    "snf_state_writes_total": Family(
        "counter", "State writes and deletes applied (one per key per batch).", ("table",)
    ),
    "snf_changelog_records_total": Family(
        "counter", "Writes to the state table, journal included: one changelog record each."
    ),
    "snf_journal_wait_seconds_total": Family(
        "counter", "Time spent waiting for acknowledgements with the journal's ring full."
    ),
    "snf_consumer_lag_messages": Family(
        "gauge",
        "Input messages not yet handled, from the fetcher's last high watermark.",
        ("partition",),
    ),
    "snf_stage_seconds": Family("histogram", "Time per Processor stage per message.", ("stage",)),
    "snf_hop_latency_seconds": Family(
        "histogram", "From the input message's Kafka timestamp to its outputs sent."
    ),
}


def sample_names() -> set[str]:
    """Every sample name the worker can expose (what PromQL may refer to)."""
    names = set()
    for name, family in FAMILIES.items():
        if family.kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def instance_name() -> str:
    return os.environ.get(INSTANCE_ENV) or socket.gethostname()


Lag = Callable[[], Mapping[int, int]]  # input partition -> messages behind


class WorkerMetrics:
    """The registry of one worker and what feeds it (the Processor connects itself)."""

    def __init__(self, pipeline: str, function: str, instance: str) -> None:
        self.labels = (pipeline, function, instance)
        self.registry = CollectorRegistry()
        stage = self._histogram("snf_stage_seconds", STAGE_BUCKETS)
        self.stage = {s: stage.labels(*self.labels, s) for s in STAGES}
        self.hop_latency = self._histogram("snf_hop_latency_seconds", HOP_BUCKETS).labels(
            *self.labels
        )
        self.batches = 0
        self.journal_wait = 0.0
        self.engine: FunctionEngine | None = None
        self.stores: Mapping[str, PrefixedStore] = {}
        self.changelog: CountingStore | None = None
        self.lag: Lag | None = None
        self.registry.register(_Snapshot(self))

    def _histogram(self, name: str, buckets: tuple[float, ...]) -> Histogram:
        family = FAMILIES[name]
        return Histogram(
            name,
            family.help,
            [*LABELS, *family.labels],
            buckets=buckets,
            registry=self.registry,
        )

    def lap(self, stage: str, since: float) -> float:
        """Observe the time since `since` (a perf_counter) as `stage`; return now."""
        now = perf_counter()
        self.stage[stage].observe(now - since)
        return now


class _Snapshot(Collector):
    """The plain counters of the engine, the Processor and the stores, at scrape time."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        families = {
            name: (CounterMetricFamily if f.kind == "counter" else GaugeMetricFamily)(
                name, f.help, labels=[*LABELS, *f.labels]
            )
            for name, f in FAMILIES.items()
            if f.kind != "histogram"
        }

        def add(name: str, value: float, *extra: str) -> None:
            families[name].add_metric([*m.labels, *extra], value)

        if m.engine is not None:
            self._engine(m.engine, add)
        add("snf_batches_total", m.batches)
        add("snf_journal_wait_seconds_total", m.journal_wait)
        for table, store in m.stores.items():
            add("snf_state_reads_total", store.reads, table)
            add("snf_state_writes_total", store.writes, table)
        if m.changelog is not None:
            add("snf_changelog_records_total", m.changelog.writes)
        for partition, lag in sorted(self._lag().items()):
            add("snf_consumer_lag_messages", lag, str(partition))
        yield from families.values()

    def _lag(self) -> Mapping[int, int]:
        if self.m.lag is None:
            return {}
        try:
            return self.m.lag()
        except Exception:  # a consumer mid-rebalance: no lag this scrape, never a failed scrape
            log.debug("no lag for /metrics", exc_info=True)
            return {}

    @staticmethod
    def _engine(engine: FunctionEngine, add: Callable[..., None]) -> None:
        counters = engine.counters
        # Present from the start, so a first rate() sees the step from zero.
        for key, name in ALWAYS.items():
            add(name, counters.get(key, 0))
        declared = frozenset(engine.function.metrics)
        for key, n in list(counters.items()):
            port, _, reason = key.partition(":")
            if key in declared:
                add("snf_function_metric_total", n, key)
            elif key in ALWAYS:
                continue
            elif key in SKIPPED:
                add("snf_messages_skipped_total", n, SKIPPED[key])
            elif key == "duplicate_in_packets":
                add("snf_packets_skipped_total", n)
            elif key == "undone":
                add("snf_events_undone_total", n)
            elif port in engine.ports:
                add("snf_packets_out_total", n, port, reason)
            elif key in engine.record_ports:
                add("snf_records_out_total", n, key)
