"""FunctionEngine: one function core applied to one batch, shell-agnostic.

Both shells (snf.runtime.faust_app over Kafka, snf.local in-process) call
`handle`, so a Kafka run and a --local run execute exactly the same code
between "batch in" and "batches per port out".
"""

from __future__ import annotations

import logging
from collections import Counter

from snf.batch import PacketBatch
from snf.function import NetworkFunction, Verdicts
from snf.parse import parse_packet_batch
from snf.state import BatchState

__all__ = ["FunctionEngine"]

log = logging.getLogger("snf.engine")


class FunctionEngine:
    def __init__(self, function: NetworkFunction) -> None:
        self.function = function
        self.ports = function.ports
        self.counters: Counter[str] = Counter()

    def handle(self, batch: PacketBatch, state: BatchState) -> dict[str, PacketBatch]:
        """Decide a batch, flush its state writes, return the non-empty output per port."""
        try:
            headers = parse_packet_batch(batch)
            verdicts = self.function.process(batch, headers, state)
        except Exception:  # a core bug must not kill the worker or lose packets
            log.exception(
                "%s failed on batch %d; dropping it whole", self.function.kind, batch.batch_id
            )
            state.discard()
            port = "drop" if "drop" in self.ports else self.ports[-1]
            verdicts = Verdicts([port] * len(batch), ["error"] * len(batch))
        state.flush()
        by_port: dict[str, list[int]] = {}
        reasons_by_port: dict[str, list[str]] = {}
        for i, (port, reason) in enumerate(zip(verdicts.ports, verdicts.reasons, strict=True)):
            idx = by_port.get(port)
            if idx is None:
                idx = by_port[port] = []
                reasons_by_port[port] = []
            idx.append(i)
            reasons_by_port[port].append(reason)
        counters = self.counters
        counters["in"] += len(batch)
        out: dict[str, PacketBatch] = {}
        for port, idx in by_port.items():
            if port not in self.ports:
                raise ValueError(f"{self.function.kind} emitted to undeclared port {port!r}")
            reasons = reasons_by_port[port]
            for reason, n in Counter(reasons).items():
                counters[f"{port}:{reason}" if reason else port] += n
            out[port] = batch.select(idx, reasons=reasons, replaced=verdicts.replaced)
        return out
