"""Stream: what `snf sink --follow` writes as it reads, in bounded memory.

A following sink may run for months, so it keeps no packet: each batch is
deduplicated and written at once, egress to the pcapng, side ports and
records to `<function>.<port>.jsonl` (the same lines as the one-shot files),
and the files are flushed after every poll, so Ctrl-C leaves valid files.
With `transmit` (live mode, snf.egress.transmit) each egress batch is also
sent out of interfaces as it is written, before the pcapng gets it.

Order: batches are written in the order they are read, and the packets of
a batch in its order. A flow's packets share one partition at every stage
and a partition is read in order, so every flow comes out in order; the
interleaving of partitions is whatever the reads gave (the one-shot
collector sorts by id instead, which needs the whole run).

Dedup, bounded (snf.egress.seen):
- packets: per terminal, the last `window` seqs of each source (at most 64
  sources) as bits, 512 KiB per source at the default 4 Mi seqs. A copy of a
  packet is removed when it comes within `window` packets of the newest of
  its source; an older one is let through and counted (`unchecked`);
  forgotten ids are counted (`evicted`). Redo copies after a crash are
  skipped before this, by lineage (snf.guarantee.lineage), whatever their age.
- records: the last `records_window` distinct records per port (digests),
  the oldest forgotten first (`records_evicted`).
- heads wait for their ingress copies (snf.egress.wholes, at most
  WHOLES_BYTES and WHOLES_PACKETS) for at most MAX_WAITING batches.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from snf.egress.collector import packet_rows
from snf.egress.seen import SeenIds
from snf.egress.wholes import WholeStore
from snf.packet.batch import PacketBatch, format_packet_id
from snf.packet.pcapng_writer import PcapngWriter
from snf.pipeline.model import EGRESS, PortKey

__all__ = ["DEDUP_WINDOW", "MAX_WAITING", "RECORD_WINDOW", "Stream", "Transmit"]

DEDUP_WINDOW = 1 << 22  # seqs per source per terminal whose copies are removed
RECORD_WINDOW = 1 << 17  # distinct records remembered per record port
WHOLES_BYTES = 256 << 20  # ingress copies kept to join heads
WHOLES_PACKETS = 1 << 20  # ... and at most this many of them (an index entry each)
MAX_WAITING = 64  # egress batches that wait for their ingress copies before going as heads
# (frames, their source ids, their capture times in ns)
Transmit = Callable[[Sequence[bytes], np.ndarray, np.ndarray], None]


class Stream:
    def __init__(
        self,
        out: Path | None = None,
        events: Path | None = None,
        window: int = DEDUP_WINDOW,
        records_window: int = RECORD_WINDOW,
        transmit: Transmit | None = None,
    ) -> None:
        self.writer = PcapngWriter(out) if out is not None else None
        self.transmit = transmit  # live: egress frames to interfaces (snf.egress.transmit)
        self.events = events
        if events is not None:
            events.mkdir(parents=True, exist_ok=True)
        self.window, self.records_window = window, records_window
        self.wholes = WholeStore(max_bytes=WHOLES_BYTES, max_packets=WHOLES_PACKETS)
        self.counts: Counter[PortKey] = Counter()  # distinct packets per terminal
        self.record_counts: Counter[PortKey] = Counter()
        self.total = 0  # distinct packets, any terminal (within the window)
        self.duplicates = self.redelivered = self.conflicts = 0
        self.duplicate_records = self.records_evicted = 0
        self._seen: dict[PortKey, SeenIds] = {}
        self._any = SeenIds(window)
        self._texts: dict[PortKey, OrderedDict[bytes, None]] = {}
        self._files: dict[PortKey, TextIO] = {}
        self._waiting: deque[PacketBatch] = deque()

    def add(self, where: PortKey, batch: PacketBatch) -> int:
        """Deduplicate a terminal's batch and write it (egress: once its heads can
        be joined); return how many packets were new anywhere."""
        if not len(batch):
            return 0
        seen = self._seen.get(where)
        if seen is None:
            seen = self._seen[where] = SeenIds(self.window)
        rec = batch.records
        sources = np.asarray(batch.sources, dtype=np.uint64)[rec["source"]]
        fresh = seen.fresh(sources, rec["seq"])
        n = int(fresh.sum())
        self.duplicates += len(batch) - n
        if not n:
            return 0
        kept = batch if n == len(batch) else batch.select(np.flatnonzero(fresh))
        self.counts[where] += n
        new = int(self._any.fresh(sources[fresh], kept.records["seq"]).sum())
        self.conflicts += n - new
        self.total += new
        if where == EGRESS:
            if self.writer is not None or self.transmit is not None:
                self._waiting.append(kept)
        elif self.events is not None:
            self._file(where).writelines(_side_lines(where, kept))
        return new

    def add_records(self, where: PortKey, records: list[dict[str, Any]]) -> int:
        """Write the records not among the last `records_window` of their port."""
        recent = self._texts.setdefault(where, OrderedDict())
        new = []
        for record in records:
            text = json.dumps(record, sort_keys=True, separators=(",", ":"))
            key = hashlib.blake2b(text.encode(), digest_size=16).digest()
            if key in recent:
                self.duplicate_records += 1
                continue
            recent[key] = None
            if len(recent) > self.records_window:
                recent.popitem(last=False)
                self.records_evicted += 1
            new.append(record)
        self.record_counts[where] += len(new)
        if new and self.events is not None:
            self._file(where).writelines(json.dumps(r) + "\n" for r in new)
        return len(new)

    def add_payloads(self, batch: PacketBatch) -> None:
        self.wholes.add(batch)

    def _file(self, where: PortKey) -> TextIO:
        f = self._files.get(where)
        if f is None:
            assert self.events is not None
            f = self._files[where] = (self.events / f"{where[0]}.{where[1]}.jsonl").open("w")
        return f

    def flush(self, final: bool = False) -> None:
        """Write the egress batches whose heads can be joined (all when `final`, or
        when too many wait), then flush every file."""
        waiting = self._waiting
        while waiting and (final or len(waiting) > MAX_WAITING or self.wholes.has_all(waiting[0])):
            self._write(waiting.popleft())
        if self.writer is not None:
            self.writer.flush()
        for f in self._files.values():
            f.flush()

    def _write(self, batch: PacketBatch) -> None:
        rec = batch.records
        ids = batch.packet_ids()
        datas = self.wholes.join(ids, batch.packets(), rec["cap_len"], rec["full_len"])
        if self.transmit is not None:  # first: the wire waits for nothing else
            sources = np.asarray(batch.sources, dtype=np.uint64)[rec["source"]]
            self.transmit(datas, sources, rec["ts_ns"])
        if self.writer is not None:
            kinds = np.full(len(batch), batch.linktype)
            comments = [f"snf id={format_packet_id(s, q)}".encode() for s, q in ids]
            self.writer.write_batch(kinds, rec["ts_ns"], rec["orig_len"], datas, comments)

    def close(self) -> None:
        self.flush(final=True)
        if self.writer is not None:
            self.writer.close()
        for f in self._files.values():
            f.close()

    def summary(self) -> dict[str, Any]:
        """Counts for the sink's summary: what was written and what bounded memory cost."""
        seen = [*self._seen.values(), self._any]
        return {
            "egress": self.counts[EGRESS],
            "distinct": self.total,
            "records": sum(self.record_counts.values()),
            "duplicates": self.duplicates,
            "duplicate_records": self.duplicate_records,
            "redelivered": self.redelivered,
            "conflicts": self.conflicts,
            "evicted": sum(s.evicted for s in seen),  # ids the dedup windows forgot
            "unchecked": sum(s.unchecked for s in self._seen.values()),  # older than a window
            "records_evicted": self.records_evicted,
            "wholes_evicted": self.wholes.evicted,
            "heads_unjoined": self.wholes.missing,
        }


def _side_lines(where: PortKey, batch: PacketBatch) -> list[str]:
    """The JSON Lines of a side port's packets, as the one-shot files have them."""
    rec = batch.records
    rows = np.rec.fromarrays(
        [
            rec["ts_ns"],
            np.asarray(batch.sources, dtype=np.uint64)[rec["source"]],
            rec["seq"],
            rec["reason"],
            rec["orig_len"],
        ],
        names=["ts_ns", "source", "seq", "reason", "orig_len"],
    )
    return list(packet_rows(rows, list(batch.reasons), where[0], where[1]))
