"""What a one-shot run takes and gives: options, result, errors, the accounting check.

Shared by the two halves of `snf run` (snf.harness.oneshot, the --local run
and the summary; snf.harness.kafka_run, the run over Kafka).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from snf.egress.collector import Collector
from snf.errors import SnfError
from snf.ingress.replay import ReplayOptions, ReplaySummary
from snf.pipeline.model import Pipeline

__all__ = ["RunError", "RunOptions", "RunResult", "check_accounting"]


class RunError(SnfError):
    """A run that could not account for every packet, or whose workers failed."""


@dataclass
class RunOptions:
    out: Path | None = None
    events: Path | None = None
    local: bool = False
    brokers: str | None = None
    replay: ReplayOptions = field(default_factory=ReplayOptions)
    timeout: float = 60.0  # give up after this long without a new packet at the sink
    keep: bool = False  # keep topics and the run directory
    rundir: Path | None = None
    loglevel: str = "info"
    # Hooks for `snf chaos` (snf.harness.chaos). The sink fills `collector` when given, so the
    # caller still holds what arrived when the run fails (lost packets are a verdict
    # there, not only an error); `on_published(n)` is called after each ingress batch
    # is handed to the producer, with the packets published so far (faults fire at a
    # fraction of the capture).
    collector: Collector | None = None
    on_published: Callable[[int], None] | None = None


@dataclass
class RunResult:
    pipeline: Pipeline
    replay: ReplaySummary
    collector: Collector
    seconds: float
    mode: str
    processing_seconds: float = 0.0  # from the first packet sent to the last accounted for
    # function -> port -> packets, when known exactly (--local counts in the engines)
    port_totals: dict[str, dict[str, int]] | None = None

    @property
    def processing_pps(self) -> float:
        return self.replay.packets / self.processing_seconds if self.processing_seconds else 0.0


def check_accounting(pipeline: Pipeline, sent: int, collector: Collector) -> None:
    """Every packet came out somewhere (or was discarded), and only once unless
    the wiring fans out."""
    graph = pipeline.graph
    if collector.total > sent or (collector.total < sent and not graph.discards):
        raise RunError(f"{collector.total} distinct packets came out, {sent} went in")
    if collector.conflicts and not graph.fan_out:
        raise RunError(f"{collector.conflicts} packets came out of two different ports")
