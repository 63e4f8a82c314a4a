"""Collector: what came out of a pipeline, deduplicated by packet id.

The Kafka sink and the --local runner both fill a Collector, and both write
results through it, so their files can be compared byte for byte. Output is
ordered by packet id (source, seq), i.e. capture order, which keeps every
flow in order whatever the interleaving of partitions was.

Memory is bounded, so a run of any length fits: packets go to a Spool per
terminal (snf.egress.spool: sorted runs on disk past SPOOL_BYTES, merged by
id when written), ids to exact bitmaps (snf.egress.seen: 1 bit per packet
per terminal), and the ingress copies that complete heads to a spool of
their own, joined with each terminal's heads by a merge on id.

Records (JSON objects from record ports such as ids.alerts or flowmon.flows)
are deduplicated by their canonical JSON text, which is why cores must emit
deterministic records, and written ordered by (ts_ns, text); they stay in
memory (a record summarises many packets).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snf.egress.seen import SeenIds
from snf.egress.spool import ROW, SPOOL_BYTES, Chunk, Spool
from snf.packet.batch import PacketBatch, format_packet_id
from snf.packet.pcapng_writer import PcapngWriter
from snf.pipeline.model import EGRESS, PortKey

__all__ = ["Collector", "packet_rows"]

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
    """What reached one terminal, minus repeats."""

    spool: Spool
    seen: SeenIds = field(default_factory=SeenIds)
    count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


@dataclass
class Wholes:
    """Whole copies of packets (from ingress), to complete heads (snf.packet.heads)."""

    spool: Spool
    missing: int = 0  # heads written without their copy (kept as heads)


@dataclass
class Collector:
    duplicates: int = 0  # an id delivered again in a message of new lineage: a real repeat
    redelivered: int = 0  # messages skipped by lineage: a redo's copies (snf.guarantee.journal)
    conflicts: int = 0  # same id on two terminals: fan-out, else a correctness bug
    # record port -> canonical JSON text -> (ts_ns, record)
    records: dict[PortKey, dict[str, tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    duplicate_records: int = 0
    duplicates_at: Counter[PortKey] = field(default_factory=Counter)  # `duplicates` per terminal
    spool_bytes: int = SPOOL_BYTES  # held in memory by all spools together, then spilled
    total: int = 0  # distinct packet ids, any terminal
    _terminals: dict[PortKey, _Terminal] = field(default_factory=dict, repr=False)
    _any: SeenIds = field(default_factory=SeenIds, repr=False)
    _reasons: dict[str, int] = field(default_factory=dict, repr=False)  # reason -> row index
    _arrival: int = field(default=0, repr=False)
    wholes: Wholes = field(init=False, repr=False)
    _view: tuple[int, dict[PortKey, dict[PacketId, _Packet]]] | None = field(
        default=None, repr=False
    )

    def __post_init__(self) -> None:
        self.wholes = Wholes(Spool(None))

    def add_records(self, where: PortKey, records: list[dict[str, Any]]) -> int:
        """Add records from a record port; return how many were new. An empty block
        (a Kafka run's end marker) opens no terminal: --local has none either."""
        if not records:
            return 0
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
        whole = batch.records["full_len"] == 0
        if whole.any():
            kept = batch if whole.all() else batch.select(np.flatnonzero(whole))
            self.wholes.spool.add(self._rows(kept), kept.payload)
            self._within_budget()

    def record_list(self, where: PortKey) -> list[dict[str, Any]]:
        """The records of one port in output order."""
        bucket = self.records.get(where, {})
        return [bucket[t][1] for t in sorted(bucket, key=lambda t: (bucket[t][0], t))]

    def add(self, where: PortKey, batch: PacketBatch) -> int:
        """Add a batch from a terminal; return how many packets were new anywhere.

        Deduplicated per terminal: with fan-out one id may reach several
        terminals (`conflicts` counts those; without fan-out each is a bug).
        """
        term = self._terminals.get(where)
        if term is None:
            term = self._terminals[where] = _Terminal(Spool(None))
        if not len(batch):
            return 0
        rec = batch.records
        sources = np.asarray(batch.sources, dtype=np.uint64)[rec["source"]]
        fresh = term.seen.fresh(sources, rec["seq"])
        n = int(fresh.sum())
        self.duplicates += len(batch) - n
        self.duplicates_at[where] += len(batch) - n
        if not n:
            return 0
        kept = batch if n == len(batch) else batch.select(np.flatnonzero(fresh))
        rows = self._rows(kept)
        term.spool.add(rows, kept.payload)
        self._within_budget()
        term.count += n
        counts = np.bincount(kept.records["reason"], minlength=len(kept.reasons)).tolist()
        term.reasons.update({r: k for r, k in zip(kept.reasons, counts, strict=True) if k})
        new = int(self._any.fresh(rows["source"], rows["seq"]).sum())
        self.conflicts += n - new
        self.total += new
        return new

    def _within_budget(self) -> None:
        """Spill the largest spools until what they hold fits `spool_bytes`."""
        spools = [self.wholes.spool, *(t.spool for t in self._terminals.values())]
        held = sum(s.held for s in spools)
        while held > self.spool_bytes:
            big = max(spools, key=lambda s: s.held)
            held -= big.held
            big.spill()

    def _rows(self, batch: PacketBatch) -> np.ndarray:
        """The spool rows (snf.egress.spool.ROW) of a batch, in its order."""
        rec = batch.records
        rows = np.empty(len(rec), dtype=ROW)
        rows["source"] = np.asarray(batch.sources, dtype=np.uint64)[rec["source"]]
        for name in ("seq", "ts_ns", "orig_len", "cap_len", "full_len"):
            rows[name] = rec[name]
        rows["arrival"] = np.arange(self._arrival, self._arrival + len(rec))
        self._arrival += len(rec)
        rows["linktype"] = batch.linktype
        table = [self._reasons.setdefault(r, len(self._reasons)) for r in batch.reasons]
        rows["reason"] = np.asarray(table, dtype=np.uint32)[rec["reason"]]
        return rows

    def _chunks(self, where: PortKey, data: bool = True) -> Iterator[Chunk]:
        """A terminal's packets in id order, heads joined with their tails."""
        term = self._terminals.get(where)
        if term is None:
            return
        join = _Join(self.wholes) if data else None
        for rows, datas in term.spool.chunks(data):
            yield rows, join(rows, datas) if join is not None else datas

    @property
    def packets(self) -> dict[PortKey, dict[PacketId, _Packet]]:
        """terminal -> packet id -> packet, in arrival order (built on demand, in
        memory: for checks and tests; the writers stream from the spools)."""
        if self._view is None or self._view[0] != self._arrival:
            self._view = (self._arrival, {w: self._packet_dict(w) for w in self._terminals})
        return self._view[1]

    def _packet_dict(self, where: PortKey) -> dict[PacketId, _Packet]:
        names = list(self._reasons)
        found = []
        keys = ("arrival", "source", "seq", "linktype", "ts_ns", "orig_len", "reason")
        for rows, datas in self._chunks(where):
            found.extend(zip(*(rows[k].tolist() for k in keys), datas, strict=True))
        found.sort(key=lambda row: row[0])
        return {
            (s, q): _Packet(lt, ts, orig, bytes(d), names[r])
            for _, s, q, lt, ts, orig, r, d in found
        }

    def count(self, where: PortKey) -> int:
        term = self._terminals.get(where)
        return term.count if term else 0

    def reasons(self, where: PortKey) -> Counter[str]:
        term = self._terminals.get(where)
        return Counter(term.reasons) if term else Counter()

    def write_pcapng(self, path: Path, where: PortKey = EGRESS) -> int:
        """The packets of one terminal in packet id order, each id in its comment."""
        with PcapngWriter(path) as w:
            for rows, datas in self._chunks(where):
                comments = _comments(rows["source"], rows["seq"])
                w.write_batch(rows["linktype"], rows["ts_ns"], rows["orig_len"], datas, comments)
        return self.count(where)

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
        names = list(self._reasons)
        for function, port in sorted(self._terminals):
            if (function, port) == EGRESS:
                continue
            path = directory / f"{function}.{port}.jsonl"
            with path.open("w") as f:
                for rows, _ in self._chunks((function, port), data=False):
                    f.writelines(packet_rows(rows, names, function, port))
            written.append(path)
        return written


def packet_rows(rows: np.ndarray, reasons: list[str], function: str, port: str) -> Iterator[str]:
    """The JSON Lines of packets at a side port: one line per row (spool.ROW)."""
    cols = (rows[k].tolist() for k in ("ts_ns", "source", "seq", "reason", "orig_len"))
    for ts, sid, seq, reason, length in zip(*cols, strict=True):
        line = {
            "ts": ts / 1e9,
            "ts_ns": ts,
            "packet_id": format_packet_id(sid, seq),
            "function": function,
            "port": port,
            "reason": reasons[reason],
            "len": length,
        }
        yield json.dumps(line) + "\n"


def _comments(source: np.ndarray, seq: np.ndarray) -> list[bytes]:
    """b"snf id=<format_packet_id>" per packet of id-sorted columns, by C-level maps."""
    out: list[bytes] = []
    bounds = [0, *(np.flatnonzero(np.diff(source)) + 1).tolist(), len(source)]
    for start, end in itertools.pairwise(bounds):  # one run per source
        prefix = f"snf id={format_packet_id(int(source[start]), 0)[:-1]}"
        text = "\n".join(map(prefix.__add__, map(str, seq[start:end].tolist())))
        out.extend(text.encode().split(b"\n"))
    return out


class _Join:
    """Heads completed from their whole copies: a merge join of a terminal's chunks
    with the ingress copies, both in id order, one chunk of copies held at a time."""

    def __init__(self, wholes: Wholes) -> None:
        self.wholes = wholes
        self.copies: Iterator[Chunk] | None = None
        self.rows = np.zeros(0, dtype=ROW)
        self.datas: list[bytes] = []

    def __call__(self, rows: np.ndarray, datas: list[bytes]) -> list[bytes]:
        cut = np.flatnonzero(rows["full_len"] > 0)
        if not len(cut):
            return datas
        if self.copies is None:
            self.copies = self.wholes.spool.chunks()
        out = list(datas)
        left = cut
        last = (int(rows["source"][-1]), int(rows["seq"][-1]))
        while len(left):
            left = self._fill(rows, out, left)
            if len(self.rows) and _last(self.rows) >= last:
                break  # these copies reach past the chunk: keep them for the next
            nxt = next(self.copies, None)
            if nxt is None:
                break
            self.rows, self.datas = nxt
        self.wholes.missing += len(left)
        return out

    def _fill(self, rows: np.ndarray, out: list[bytes], want: np.ndarray) -> np.ndarray:
        """Join the heads at `want` found among the held copies; return the rest."""
        if not len(self.rows):
            return want
        have_src, have_seq = self.rows["source"], self.rows["seq"]
        found = np.full(len(want), -1, dtype=np.int64)
        src, seq = rows["source"][want], rows["seq"][want]
        for sid in np.unique(src).tolist():
            lo = int(np.searchsorted(have_src, sid, side="left"))
            hi = int(np.searchsorted(have_src, sid, side="right"))
            at = np.flatnonzero(src == sid)
            pos = np.searchsorted(have_seq[lo:hi], seq[at]) + lo
            ok = pos < hi
            ok[ok] = have_seq[pos[ok]] == seq[at][ok]
            found[at[ok]] = pos[ok]
        hit = np.flatnonzero(found >= 0)
        cap, full = rows["cap_len"][want].tolist(), rows["full_len"][want].tolist()
        for k in hit.tolist():
            i = int(want[k])
            out[i] = out[i] + self.datas[found[k]][cap[k] : full[k]]
        return want[found < 0]


def _last(rows: np.ndarray) -> tuple[int, int]:
    return int(rows["source"][-1]), int(rows["seq"][-1])
