"""FunctionEngine: one function core applied to one batch, shell-agnostic.

Both shells (snf.runtime.worker.app over Kafka, snf.runtime.local in-process) call
`handle` and `end_of_input`, so a Kafka run and a --local run execute exactly
the same code between "message in" and "batches and records per port out".

The engine keeps the function's only counters: "in", "<port>" or
"<port>:<reason>" per packet, "<record port>" per record, "flushes", and the
core's declared metrics (Decisions.metrics, FinishContext.metrics). It
refuses undeclared ports, reasons and metrics, checking each distinct one
once (snf.core.reasons).

End markers (snf.wire.EndMarker) end a replay's input: a partition records
the origins of one end id's markers in the control table (so a restarted
worker keeps them), and on the `expected`-th distinct one calls the core's
finish() once.

Sweeps (snf.core.contract, "Bounded state"): the control table holds each
partition's next grid point of packet time; `handle` cuts a batch where the
running maximum of its timestamps reaches it and sweeps there, so outputs and
state do not depend on how the packets were cut into batches.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from snf.core.contract import (
    SWEEP_LIMIT,
    Decisions,
    FinishContext,
    NetworkFunction,
    Record,
    SweepContext,
)
from snf.core.reasons import ERROR, ReasonCheck
from snf.core.tables import CONTROL_TABLE, BatchState, TableView
from snf.packet.batch import PacketBatch
from snf.packet.parse import parse_packet_batch
from snf.wire import EndMarker

__all__ = ["FunctionEngine", "StageOutput"]

log = logging.getLogger("snf.core.engine")

# Control table: end ids open (markers counted, not all in) and the last ended.
OPEN_KEY, ENDED_KEY = b"ends:open", b"ends:done"
MAX_OPEN_ENDS = 16  # more at once is not a replay: the marker is refused
MAX_ENDED = 16
SWEEP_KEY = b"sweep"  # control table: the partition's next grid point of packet time (ns)


@dataclass
class StageOutput:
    packets: dict[str, PacketBatch] = field(default_factory=dict)  # non-empty packet ports
    records: dict[str, list[Record]] = field(default_factory=dict)  # non-empty record ports
    rewritten: bool = False  # some packet's bytes changed


class FunctionEngine:
    def __init__(self, function: NetworkFunction) -> None:
        self.function = function
        self.ports = function.ports
        self.record_ports = function.record_ports
        self.counters: Counter[str] = Counter()
        self.sweep_limit = SWEEP_LIMIT  # expiries per table per sweep
        self._check_reason = ReasonCheck(function.kind, function.reasons)
        self._metrics = frozenset(function.metrics)
        taken = {"in", "flushes", *self.ports, *self.record_ports}
        for name in self._metrics:
            if name in taken or name.partition(":")[0] in self.ports:
                raise ValueError(f"{function.kind}: metric {name!r} is a name the engine uses")

    def handle(self, batch: PacketBatch, state: BatchState) -> StageOutput:
        """Decide a batch, write its state back, return the output per port."""
        try:
            headers = parse_packet_batch(batch)
            # The grid point lives in the control table: a state without one
            # (a core's unit test) is never swept.
            if self.function.sweep_interval_ns > 0 and len(batch) and CONTROL_TABLE in state:
                decisions = self._swept(batch, headers, state)
            else:
                decisions = self.function.process(batch, headers, state)
        except Exception:  # a core bug must not kill the worker or lose packets
            log.exception(
                "%s failed on batch %d; dropping it whole", self.function.kind, batch.batch_id
            )
            state.discard()
            self.function.forget(state.partition)  # its index may hold the discarded writes
            port = "drop" if "drop" in self.ports else self.ports[-1]
            decisions = Decisions([port] * len(batch), [ERROR] * len(batch))
        state.write_back()
        counters = self.counters
        counters["in"] += len(batch)
        check = self._check_reason
        out = StageOutput(rewritten=bool(decisions.replaced))
        for port, idx in _by_port(decisions.ports).items():
            if port not in self.ports:
                raise ValueError(f"{self.function.kind} emitted to undeclared port {port!r}")
            reasons = decisions.reasons
            if idx is not None:
                reasons = list(map(reasons.__getitem__, idx.tolist()))
            for reason, n in Counter(reasons).items():
                check(reason)  # a set lookup once a reason is known
                counters[f"{port}:{reason}" if reason else port] += n
            out.packets[port] = batch.select(idx, reasons=reasons, replaced=decisions.replaced)
        out.records = self._checked_records(decisions.records)
        if decisions.metrics:
            self._count_metrics(decisions.metrics)
        return out

    def forget(self, partition: int) -> None:
        """The partition's tables may have changed beneath the core (a new
        assignment, a recovery's undo): drop what the core derived from them."""
        self.function.forget(partition)

    def _swept(self, batch: PacketBatch, headers: object, state: BatchState) -> Decisions:
        """process() between the sweeps at the grid points this batch reaches."""
        core, interval = self.function, self.function.sweep_interval_ns
        control = state.table(CONTROL_TABLE)
        ts = batch.records["ts_ns"]
        top = np.maximum.accumulate(ts)
        stored = control.get(SWEEP_KEY)
        tick = (int(ts[0]) // interval + 1) * interval if stored is None else int(stored)
        cuts: list[tuple[int, int]] = []  # (first packet after the sweep, grid point)
        while int(top[-1]) >= tick:
            at = int(np.searchsorted(top, tick, side="left"))
            last = int(top[at]) // interval * interval  # a jump over several points: sweep once
            cuts.append((at, last))
            tick = last + interval
        if tick != stored:
            control.set(SWEEP_KEY, tick)
        if not cuts:
            return core.process(batch, headers, state)  # type: ignore[arg-type]
        out = Decisions()
        start = 0
        for at, now in [*cuts, (len(batch), -1)]:
            if at > start:
                part = batch.select(range(start, at))
                part.headers = headers.take(range(start, at))  # type: ignore[attr-defined]
                _extend(out, core.process(part, part.headers, state), start)
            if now >= 0:
                ctx = SweepContext(state.partition, now, self.sweep_limit)
                _extend(out, Decisions(records=core.sweep(state, ctx), metrics=ctx.metrics), 0)
            start = at
        return out

    def end_of_input(
        self, marker: EndMarker, partition: int, state: BatchState
    ) -> StageOutput | None:
        """Count an end marker's origin; when `expected` distinct origins are in,
        finish the core once (else None). A repeated origin changes nothing."""
        view = state.table(CONTROL_TABLE)
        key = b"flush:" + marker.end_id.encode()  # the stored key predates "end marker"
        if marker.end_id in (view.get(ENDED_KEY) or ()):
            return None  # an end already handled, sent again
        seen: list[str] = list(view.get(key) or [])
        origin = marker.origin or f"#{len(seen)}"  # anonymous markers each count
        if origin in seen or len(seen) >= marker.expected:
            return None  # a marker re-sent after a crash, or an end already handled
        if not seen:
            opened = list(view.get(OPEN_KEY) or [])
            if len(opened) >= MAX_OPEN_ENDS:  # the shell dead-letters the marker
                raise ValueError(f"{len(opened)} ends are open already (at most {MAX_OPEN_ENDS})")
            view.set(OPEN_KEY, [*opened, marker.end_id])
        seen.append(origin)
        view.set(key, seen)
        if len(seen) != marker.expected:
            state.write_back()
            return None
        ctx = FinishContext(partition, self.function.partitions, marker.end_ts_ns)
        try:
            records = self.function.finish(state, ctx)
        except Exception:
            log.exception("%s failed to finish partition %d", self.function.kind, partition)
            state.discard()
            self.function.forget(partition)
            records = {}
            ctx.metrics.clear()
        _close_end(view, key, marker.end_id)
        state.write_back()
        self.counters["flushes"] += 1
        out = StageOutput(records=self._checked_records(records))
        self._count_metrics(ctx.metrics)
        return out

    def _count_metrics(self, metrics: Mapping[str, int]) -> None:
        counters = self.counters
        for name, n in metrics.items():
            if name not in self._metrics:
                raise ValueError(f"{self.function.kind} counted undeclared metric {name!r}")
            if n:
                counters[name] += n

    def _checked_records(self, records: dict[str, list[Record]]) -> dict[str, list[Record]]:
        out = {}
        for port, items in records.items():
            if port not in self.record_ports:
                raise ValueError(f"{self.function.kind} emitted to undeclared port {port!r}")
            if items:
                out[port] = items
                self.counters[port] += len(items)
        return out


def _close_end(view: TableView, key: bytes, end_id: str) -> None:
    """An end is done: its origins go, its id joins the few remembered as ended,
    so the control table stays small however many ends a partition sees."""
    view.delete(key)
    view.set(OPEN_KEY, [e for e in view.get(OPEN_KEY) or () if e != end_id])
    ended = list(view.get(ENDED_KEY) or ())[-(MAX_ENDED - 1) :]
    view.set(ENDED_KEY, [*ended, end_id])


def _extend(out: Decisions, part: Decisions, offset: int) -> None:
    """Append the decisions of a slice that starts at packet `offset`."""
    out.ports += part.ports
    out.reasons += part.reasons
    for i, data in part.replaced.items():
        out.replaced[offset + i] = data
    for port, items in part.records.items():
        out.records.setdefault(port, []).extend(items)
    for name, n in part.metrics.items():
        out.metrics[name] = out.metrics.get(name, 0) + n


def _by_port(ports: list[str]) -> dict[str, np.ndarray | None]:
    """Port -> indices of its packets (None: the whole batch), in first-use order."""
    names = dict.fromkeys(ports)
    if len(names) == 1:
        return dict.fromkeys(names)
    code = {port: i for i, port in enumerate(names)}
    codes = np.fromiter(map(code.__getitem__, ports), dtype=np.int64, count=len(ports))
    return {port: np.flatnonzero(codes == i) for port, i in code.items()}
