"""Collector: what came out of a pipeline, deduplicated by packet id.

The Kafka sink and the --local runner both fill a Collector, and both write
results through it, so their files can be compared byte for byte. Output is
ordered by packet id (source, seq), i.e. capture order, which keeps every
flow in order whatever the interleaving of partitions was.

Records (JSON objects from record ports such as ids.alerts or flowmon.flows)
are deduplicated by their canonical JSON text, which is why cores must emit
deterministic records, and written ordered by (ts_ns, text).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snf.egress.wholes import WholeStore
from snf.packet.batch import PacketBatch, format_packet_id
from snf.packet.pcapng_writer import PcapngWriter
from snf.pipeline.model import EGRESS, PortKey

__all__ = ["Collector"]

PacketId = tuple[int, int]  # (source id, seq)


@dataclass(slots=True)
class _Packet:
    linktype: int
    ts_ns: int
    orig_len: int
    data: bytes
    reason: str


@dataclass
class _Terminal:
    """What reached one terminal: the batches as they came, minus repeats."""

    parts: list[PacketBatch] = field(default_factory=list)
    ids: dict[int, set[int]] = field(default_factory=dict)  # source id -> seqs
    count: int = 0


@dataclass
class Collector:
    duplicates: int = 0  # an id delivered again in a message of new lineage: a real repeat
    redelivered: int = 0  # messages skipped by lineage: a redo's copies (snf.guarantee.journal)
    conflicts: int = 0  # same id on two terminals: fan-out, else a correctness bug
    # record port -> canonical JSON text -> (ts_ns, record)
    records: dict[PortKey, dict[str, tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    duplicate_records: int = 0
    duplicates_at: Counter[PortKey] = field(default_factory=Counter)  # `duplicates` per terminal
    _terminals: dict[PortKey, _Terminal] = field(default_factory=dict, repr=False)
    _seen: dict[int, set[int]] = field(default_factory=dict, repr=False)  # any terminal
    # Whole copies of the packets (from ingress), to complete heads (snf.packet.heads).
    wholes: WholeStore = field(default_factory=WholeStore, repr=False)
    _view: tuple[int, dict[PortKey, dict[PacketId, _Packet]]] | None = field(
        default=None, repr=False
    )

    def add_records(self, where: PortKey, records: list[dict[str, Any]]) -> int:
        """Add records from a record port; return how many were new."""
        bucket = self.records.setdefault(where, {})
        new = 0
        for record in records:
            text = json.dumps(record, sort_keys=True, separators=(",", ":"))
            if text in bucket:
                self.duplicate_records += 1
                continue
            bucket[text] = (int(record.get("ts_ns", 0)), record)
            new += 1
        return new

    def add_payloads(self, batch: PacketBatch) -> None:
        """Keep an ingress batch's whole packets, to complete heads that come out."""
        self.wholes.add(batch)

    def record_list(self, where: PortKey) -> list[dict[str, Any]]:
        """The records of one port in output order."""
        bucket = self.records.get(where, {})
        return [bucket[t][1] for t in sorted(bucket, key=lambda t: (bucket[t][0], t))]

    def add(self, where: PortKey, batch: PacketBatch) -> int:
        """Add a batch from a terminal; return how many packets were new anywhere.

        Deduplicated per terminal: with fan-out one id may reach several
        terminals (`conflicts` counts those; without fan-out each is a bug).
        A batch of new ids from one source, the common case, is checked with
        set operations and kept whole.
        """
        term = self._terminals.setdefault(where, _Terminal())
        if not len(batch):
            self._view = None
            return 0
        fresh = _fresh_whole(term, batch)
        kept = batch if fresh is not None else _fresh_each(term, batch)
        repeats = len(batch) - len(kept)
        self.duplicates += repeats
        self.duplicates_at[where] += repeats
        if not len(kept):
            return 0
        term.parts.append(kept)
        term.count += len(kept)
        self._view = None
        new = 0
        for sid, seqs in (fresh if fresh is not None else _ids_by_source(kept)).items():
            seen = self._seen.setdefault(sid, set())
            before = len(seen)
            seen.update(seqs)
            new += len(seen) - before
        self.conflicts += len(kept) - new
        return new

    @property
    def packets(self) -> dict[PortKey, dict[PacketId, _Packet]]:
        """terminal -> packet id -> packet, in arrival order (built on demand, for
        checks and tests; the writers read the batches directly)."""
        version = sum(t.count for t in self._terminals.values())
        if (
            self._view is None
            or self._view[0] != version
            or len(self._view[1]) != len(self._terminals)
        ):
            view = {
                where: _packet_dict(t.parts, self.wholes) for where, t in self._terminals.items()
            }
            self._view = (version, view)
        return self._view[1]

    @property
    def total(self) -> int:
        return sum(len(seqs) for seqs in self._seen.values())

    def count(self, where: PortKey) -> int:
        term = self._terminals.get(where)
        return term.count if term else 0

    def reasons(self, where: PortKey) -> Counter[str]:
        found: Counter[str] = Counter()
        term = self._terminals.get(where)
        for part in term.parts if term else ():
            counts = np.bincount(part.records["reason"], minlength=len(part.reasons))
            for reason, n in zip(part.reasons, counts.tolist(), strict=True):
                if n:
                    found[reason] += n
        return found

    def write_pcapng(self, path: Path, where: PortKey = EGRESS) -> int:
        """The packets of one terminal in packet id order, each id in its comment."""
        term = self._terminals.get(where)
        with PcapngWriter(path) as w:
            if term is None or not term.count:
                return 0
            cols = _sorted_columns(term.parts, self.wholes)
            comments = _comments(cols["source"], cols["seq"])
            w.write_batch(cols["linktype"], cols["ts_ns"], cols["orig_len"], cols["data"], comments)
        return term.count

    def write_events(self, directory: Path) -> list[Path]:
        """One JSON Lines file per terminal but egress: <function>.<port>.jsonl
        (topic.<name>.jsonl for an external topic)."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for function, port in sorted(self.records):
            path = directory / f"{function}.{port}.jsonl"
            with path.open("w") as f:
                for record in self.record_list((function, port)):
                    f.write(json.dumps(record) + "\n")
            written.append(path)
        for (function, port), bucket in sorted(self.packets.items()):
            bucket = dict(sorted(bucket.items()))
            if (function, port) == EGRESS:
                continue
            path = directory / f"{function}.{port}.jsonl"
            with path.open("w") as f:
                for pid, p in bucket.items():
                    f.write(
                        json.dumps(
                            {
                                "ts": p.ts_ns / 1e9,
                                "ts_ns": p.ts_ns,
                                "packet_id": format_packet_id(*pid),
                                "function": function,
                                "port": port,
                                "reason": p.reason,
                                "len": p.orig_len,
                            }
                        )
                        + "\n"
                    )
            written.append(path)
        return written


def _comments(source: np.ndarray, seq: np.ndarray) -> list[bytes]:
    """b"snf id=<format_packet_id>" per packet of id-sorted columns, by C-level maps."""
    out: list[bytes] = []
    bounds = [0, *(np.flatnonzero(np.diff(source)) + 1).tolist(), len(source)]
    for start, end in itertools.pairwise(bounds):  # one run per source
        prefix = f"snf id={format_packet_id(int(source[start]), 0)[:-1]}"
        text = "\n".join(map(prefix.__add__, map(str, seq[start:end].tolist())))
        out.extend(text.encode().split(b"\n"))
    return out


def _ids_by_source(batch: PacketBatch) -> dict[int, list[int]]:
    src = batch.records["source"]
    seqs = batch.records["seq"]
    if len(batch.sources) == 1:
        return {batch.sources[0]: seqs.tolist()}
    return {batch.sources[s]: seqs[src == s].tolist() for s in np.unique(src).tolist()}


def _fresh_whole(term: _Terminal, batch: PacketBatch) -> dict[int, set[int]] | None:
    """The batch's ids by source when every one is new to the terminal (then
    recorded there), else None."""
    by_source = _ids_by_source(batch)
    fresh = {sid: set(seqs) for sid, seqs in by_source.items()}
    if sum(map(len, fresh.values())) != len(batch):
        return None  # an id repeats within the batch
    if any(not term.ids.get(sid, set()).isdisjoint(seqs) for sid, seqs in fresh.items()):
        return None
    for sid, seqs in fresh.items():
        term.ids.setdefault(sid, set()).update(seqs)
    return fresh


def _fresh_each(term: _Terminal, batch: PacketBatch) -> PacketBatch:
    """The packets whose id the terminal has not seen yet, first copy kept."""
    keep = []
    for i, (sid, seq) in enumerate(batch.packet_ids()):
        seqs = term.ids.setdefault(sid, set())
        if seq not in seqs:
            seqs.add(seq)
            keep.append(i)
    return batch.select(keep)


def _packet_dict(parts: list[PacketBatch], wholes: WholeStore) -> dict[PacketId, _Packet]:
    out = {}
    for part in parts:
        lt = part.linktype
        rec = part.records
        ids = part.packet_ids()
        datas = wholes.join(ids, part.packets(), rec["cap_len"], rec["full_len"])
        for (ts, orig, _, sid, seq, reason), data in zip(part.rows(), datas, strict=True):
            out[(sid, seq)] = _Packet(lt, ts, orig, bytes(data), reason)
    return out


def _sorted_columns(parts: list[PacketBatch], wholes: WholeStore) -> dict[str, Any]:
    """Every packet of `parts` as columns, sorted by packet id (source, seq), heads
    joined with their tails."""
    recs = [p.records for p in parts]
    source = np.concatenate(
        [
            np.asarray(p.sources, dtype=np.uint64)[r["source"]]
            for p, r in zip(parts, recs, strict=True)
        ]
    )
    seq = np.concatenate([r["seq"] for r in recs])
    order = np.lexsort((seq, source))
    cap = np.concatenate([r["cap_len"] for r in recs]).astype(np.int64)
    end = np.cumsum(cap)
    start = end - cap
    whole = b"".join(p.payload for p in parts)  # one copy; then plain byte slices, the fastest
    data = list(map(whole.__getitem__, map(slice, start[order].tolist(), end[order].tolist())))
    full = np.concatenate([r["full_len"] for r in recs]).astype(np.int64)[order]
    if full.any():
        ids = list(zip(source[order].tolist(), seq[order].tolist(), strict=True))
        data = wholes.join(ids, data, cap[order], full)
    kinds = np.repeat([p.linktype for p in parts], [len(r) for r in recs])[order]
    return {
        "source": source[order],
        "seq": seq[order],
        "linktype": kinds,
        "ts_ns": np.concatenate([r["ts_ns"] for r in recs])[order],
        "orig_len": np.concatenate([r["orig_len"] for r in recs])[order],
        "data": data,
    }
