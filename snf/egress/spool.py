"""Spool: packets kept on disk in sorted runs, read back merged by packet id.

The one-shot collector must write its packets ordered by id, and a run may
hold more packets than memory. So packets wait in memory up to `limit`
bytes, then go to a temporary file as one run sorted by id (source, seq);
reading merges the runs (a k-way merge, a block of each run at a time,
blocks sized to hold MERGE_BYTES together), so memory holds the blocks,
not the packets. What never reached `limit` is
sorted in memory and never touches the disk, so small runs (and --local on
the bundled captures) cost what they did. With `limit=None` the owner
decides when to `spill()` (the collector, one budget for all its spools).

A row is the packet's fixed fields (ROW); its bytes go beside it, in the
same order.
"""

from __future__ import annotations

import operator
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["ROW", "Spool"]

ROW = np.dtype(
    [
        ("source", "<u8"),
        ("seq", "<u8"),
        ("ts_ns", "<i8"),
        ("arrival", "<u8"),  # position among what the collector kept, for arrival order
        ("orig_len", "<u4"),
        ("cap_len", "<u4"),
        ("full_len", "<u4"),  # > 0: the bytes are a head (snf.packet.heads)
        ("linktype", "<u4"),
        ("reason", "<u4"),  # index into the collector's reasons
    ]
)
SPOOL_BYTES = 64 << 20  # bytes held in memory before a run goes to disk
BLOCK_ROWS = 16384  # rows read from each run at a time while merging (at most)
MIN_BLOCK_ROWS = 256  # ... and at least: past MERGE_BYTES / 256 rows runs, memory grows
MERGE_BYTES = 32 << 20  # what the blocks of one merge hold together

Chunk = tuple[np.ndarray, list[bytes]]  # rows sorted by id, and their bytes (or [])


@dataclass(frozen=True)
class _Run:
    at: int  # file offset of the rows; the bytes follow them
    rows: int
    size: int  # bytes of packet data


class Spool:
    def __init__(self, limit: int | None = SPOOL_BYTES) -> None:
        self.limit = limit
        self.rows = 0
        self._parts: list[tuple[np.ndarray, bytes]] = []
        self._held = 0
        self._runs: list[_Run] = []
        self._file: tempfile._TemporaryFileWrapper | None = None
        self._end = 0

    def add(self, rows: np.ndarray, payload: bytes) -> None:
        """Rows (dtype ROW) and their bytes back to back, in the same order."""
        self._parts.append((rows, payload))
        self._held += rows.nbytes + len(payload)
        self.rows += len(rows)
        if self.limit is not None and self._held > self.limit:
            self.spill()

    @property
    def held(self) -> int:
        """Bytes waiting in memory."""
        return self._held

    @property
    def spilled(self) -> int:
        """Runs written to disk so far."""
        return len(self._runs)

    def spill(self) -> None:
        """Write what waits in memory to disk as one sorted run."""
        if not self._parts:
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="snf-spool-")  # noqa: SIM115 - close()
        f = self._file
        held = _Sorted(self._parts)
        f.seek(self._end)
        f.write(held.rows.tobytes())
        for at in range(0, len(held.rows), BLOCK_ROWS):  # a block of slices at a time
            f.write(b"".join(held.datas(at, at + BLOCK_ROWS)))
        size = int(held.rows["cap_len"].sum(dtype=np.int64))
        self._runs.append(_Run(self._end, len(held.rows), size))
        self._end += held.rows.nbytes + size
        self._parts, self._held = [], 0

    def chunks(self, data: bool = True, size: int = BLOCK_ROWS) -> Iterator[Chunk]:
        """Every row, sorted by id, in chunks; with their bytes when `data`."""
        if not self._runs:  # all in memory: one sort
            held = _Sorted(self._parts)
            for at in range(0, len(held.rows), size):
                yield held.rows[at : at + size], held.datas(at, at + size) if data else []
            return
        self.spill()  # the rest too, so that merging holds one block per run, no more
        f = self._file
        assert f is not None
        f.flush()
        # Blocks shrink as runs add up, so that the merge holds ~MERGE_BYTES however many.
        size_per_row = ROW.itemsize + 64 + sum(r.size for r in self._runs) // max(self.rows, 1)
        block = MERGE_BYTES // (len(self._runs) * size_per_row)
        block = max(MIN_BLOCK_ROWS, min(BLOCK_ROWS, block))
        yield from _merge([_Cursor(f.fileno(), run, data, block) for run in self._runs])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Sorted:
    """The rows of `parts` sorted by id; their bytes sliced a range at a time, so
    sorting never copies the payloads."""

    def __init__(self, parts: list[tuple[np.ndarray, bytes]]) -> None:
        self.payloads = [p for _, p in parts]
        if not parts:
            self.rows = np.zeros(0, dtype=ROW)
            return
        rows = np.concatenate([r for r, _ in parts])
        order = np.lexsort((rows["seq"], rows["source"]))
        self.rows = rows[order]
        part = np.repeat(np.arange(len(parts)), [len(r) for r, _ in parts])
        cap = rows["cap_len"].astype(np.int64)
        end = np.cumsum(cap)
        firsts = np.concatenate([[0], np.cumsum([len(p) for p in self.payloads])[:-1]])
        start = end - cap - firsts[part]  # within its part's payload
        self.part, self.start, self.end = part[order], start[order], (start + cap)[order]

    def datas(self, lo: int, hi: int) -> list[bytes]:
        payloads = map(self.payloads.__getitem__, self.part[lo:hi].tolist())
        cuts = map(slice, self.start[lo:hi].tolist(), self.end[lo:hi].tolist())
        return list(map(operator.getitem, payloads, cuts))


class _Cursor:
    """A block at a time of one sorted run."""

    def __init__(self, fd: int, run: _Run, data: bool, block: int = BLOCK_ROWS) -> None:
        self.fd, self.run, self.data, self.block = fd, run, data, block
        self.next_row = 0  # the first row not loaded yet
        self.next_byte = run.at + run.rows * ROW.itemsize  # its bytes
        self.rows = np.zeros(0, dtype=ROW)
        self.datas: list[bytes] = []
        self._load()

    @property
    def more(self) -> bool:
        return self.next_row < self.run.rows

    def _load(self) -> None:
        n = min(self.block, self.run.rows - self.next_row)
        at = self.run.at + self.next_row * ROW.itemsize
        self.rows = np.frombuffer(os.pread(self.fd, n * ROW.itemsize, at), dtype=ROW)
        self.next_row += n
        cap = self.rows["cap_len"].astype(np.int64)
        size = int(cap.sum())
        if self.data:
            raw = os.pread(self.fd, size, self.next_byte)
            end = np.cumsum(cap)
            self.datas = list(map(raw.__getitem__, map(slice, (end - cap).tolist(), end.tolist())))
        self.next_byte += size

    def last(self) -> tuple[int, int]:
        return int(self.rows["source"][-1]), int(self.rows["seq"][-1])

    def take(self, bound: tuple[int, int] | None) -> Chunk:
        """The loaded rows up to id `bound` (None: all), loading the next block if
        this one is used up."""
        rows = self.rows
        if bound is None:
            n = len(rows)
        else:
            src, seq = rows["source"], rows["seq"]
            n = int(((src < bound[0]) | ((src == bound[0]) & (seq <= bound[1]))).sum())
        out = rows[:n], self.datas[:n]
        self.rows, self.datas = rows[n:], self.datas[n:]
        if not len(self.rows) and self.more:
            self._load()
        return out


def _merge(cursors: list[_Cursor]) -> Iterator[Chunk]:
    """Blocked k-way merge: each round emits every loaded row up to the smallest
    last id among runs with more to load, which cannot be passed by a later block."""
    while any(len(c.rows) for c in cursors):
        limits = [c.last() for c in cursors if c.more and len(c.rows)]
        bound = min(limits) if limits else None
        taken = [c.take(bound) for c in cursors if len(c.rows)]
        rows = np.concatenate([r for r, _ in taken])
        if not len(rows):
            continue
        order = np.lexsort((rows["seq"], rows["source"]))
        datas = [d for _, ds in taken for d in ds]
        yield rows[order], list(map(datas.__getitem__, order.tolist())) if datas else []
