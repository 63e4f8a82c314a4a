"""PacketBatch: the unit that flows through every topic and every function.

A batch holds packets of one link type bound for one partition. Per-packet
metadata sits in a numpy record array (one row per packet, fixed width), the
packet bytes in one contiguous buffer. Nothing here parses packets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RECORD_DTYPE", "PacketBatch", "PacketRow", "format_packet_id"]

# One row per packet. Packet id = (sources[source], seq).
RECORD_DTYPE = np.dtype(
    [
        ("ts_ns", "<i8"),  # capture timestamp, ns since the epoch
        ("seq", "<u8"),  # sequence number within its source
        ("orig_len", "<u4"),  # length on the wire
        ("cap_len", "<u4"),  # bytes carried here
        ("source", "<u2"),  # index into PacketBatch.sources
        ("reason", "<u2"),  # index into PacketBatch.reasons (0 = none)
        ("full_len", "<u4"),  # whole packet's cap_len when these bytes are its head, else 0
    ]
)

# (ts_ns, orig_len, data, source_id, seq, reason)
PacketRow = tuple[int, int, bytes, int, int, str]


def format_packet_id(source_id: int, seq: int) -> str:
    """Printable packet id: 16 hex digits of source, then the sequence number."""
    return f"{source_id:016x}:{seq}"


@dataclass(slots=True)
class PacketBatch:
    linktype: int
    records: np.ndarray
    payload: bytes
    sources: tuple[int, ...] = ()
    reasons: tuple[str, ...] = ("",)
    batch_id: int = 0
    _offsets: list[int] | None = field(default=None, repr=False)
    # The parsed headers of these exact bytes, when an in-process producer has
    # them (snf.packet.headers.Headers): the next stage need not parse again.
    headers: Any = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def offsets(self) -> list[int]:
        """Start offset of each packet in payload, plus the end (len + 1 items)."""
        if self._offsets is None:
            ends = np.cumsum(self.records["cap_len"], dtype=np.int64)
            self._offsets = [0, *ends.tolist()]
        return self._offsets

    def packet(self, i: int) -> bytes:
        off = self.offsets
        return self.payload[off[i] : off[i + 1]]

    def packets(self) -> list[bytes]:
        off = self.offsets
        data = self.payload
        return [data[off[i] : off[i + 1]] for i in range(len(self.records))]

    def packet_ids(self) -> list[tuple[int, int]]:
        """(source id, seq) per packet."""
        src = self.sources
        return [
            (src[s], q)
            for s, q in zip(
                self.records["source"].tolist(), self.records["seq"].tolist(), strict=True
            )
        ]

    def reason_of(self, i: int) -> str:
        return self.reasons[int(self.records["reason"][i])]

    def rows(self) -> Iterator[PacketRow]:
        rec = self.records
        src = self.sources
        reasons = self.reasons
        for i, (ts, orig, s, q, r) in enumerate(
            zip(
                rec["ts_ns"].tolist(),
                rec["orig_len"].tolist(),
                rec["source"].tolist(),
                rec["seq"].tolist(),
                rec["reason"].tolist(),
                strict=True,
            )
        ):
            yield ts, orig, self.packet(i), src[s], q, reasons[r]

    # -- building -------------------------------------------------------

    @classmethod
    def from_rows(cls, linktype: int, rows: Iterable[PacketRow], batch_id: int = 0) -> PacketBatch:
        rows = list(rows)
        rec = np.zeros(len(rows), dtype=RECORD_DTYPE)
        source_index: dict[int, int] = {}
        reason_index: dict[str, int] = {"": 0}
        ts, orig, cap, srcs, seqs, reas = [], [], [], [], [], []
        for t, o, data, sid, q, why in rows:
            ts.append(t)
            orig.append(o)
            cap.append(len(data))
            srcs.append(source_index.setdefault(sid, len(source_index)))
            seqs.append(q)
            reas.append(reason_index.setdefault(why, len(reason_index)))
        if rows:
            rec["ts_ns"] = ts
            rec["orig_len"] = orig
            rec["cap_len"] = cap
            rec["source"] = srcs
            rec["seq"] = seqs
            rec["reason"] = reas
        return cls(
            linktype=linktype,
            records=rec,
            payload=b"".join(r[2] for r in rows),
            sources=tuple(source_index),
            reasons=tuple(reason_index),
            batch_id=batch_id,
        )

    def select(
        self,
        indices: Sequence[int] | np.ndarray | None,
        reasons: Sequence[str] | None = None,
        replaced: dict[int, bytes] | None = None,
        batch_id: int | None = None,
    ) -> PacketBatch:
        """A new batch with the packets at `indices` (None: all), in that order.

        `reasons` (one per index) set the reason column; `replaced` maps an
        original index to rewritten bytes (same capture, new content).
        """
        whole = indices is None
        idx = np.arange(len(self)) if whole else np.asarray(indices, dtype=np.int64)
        rec = self.records.copy() if whole else self.records[idx]
        if whole and not replaced:
            payload = self.payload
        else:
            off = np.asarray(self.offsets, dtype=np.int64)
            view = memoryview(self.payload)
            cuts = map(slice, off[idx].tolist(), off[idx + 1].tolist())
            parts: list[Any] = list(map(view.__getitem__, cuts))
            if replaced:
                # Where each replaced packet sits in the selection (-1: not selected).
                where = np.full(len(self), -1, dtype=np.int64)
                where[idx] = np.arange(len(idx))
                at = where.tolist()  # list indexing: a numpy scalar per packet costs more
                for i, data in replaced.items():
                    j = at[i]
                    if j >= 0:
                        parts[j] = data
                new_len = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
                # A rewrite that changes the length (ipsec seals and opens) changes the
                # length on the wire by as much; bytes a snaplen cut off stay cut off.
                grown = new_len - rec["cap_len"].astype(np.int64)
                if grown.any():
                    rec["orig_len"] = rec["orig_len"].astype(np.int64) + grown
                rec["cap_len"] = new_len
            payload = b"".join(parts)
        reason_table: tuple[str, ...] = self.reasons
        if reasons is not None:
            table = dict.fromkeys(("", *reasons))
            reason_table = tuple(table)
            if len(table) == 1:
                rec["reason"] = 0
            else:
                code = {r: i for i, r in enumerate(reason_table)}
                rec["reason"] = np.fromiter(map(code.__getitem__, reasons), np.int64, len(idx))
        headers = None
        if self.headers is not None and not replaced:
            headers = self.headers if whole else self.headers.take(idx.tolist())
        return PacketBatch(
            linktype=self.linktype,
            records=rec,
            payload=payload,
            sources=self.sources,
            reasons=reason_table,
            batch_id=self.batch_id if batch_id is None else batch_id,
            headers=headers,
        )
