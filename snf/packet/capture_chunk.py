"""CaptureChunk: consecutive packets of a capture as columns over the file's bytes.

The unit the replay reads, routes and batches (snf.ingress.accumulator):
one numpy array per field and, for the bytes, the start of each packet in a
shared buffer (the memory-mapped file). Nothing is copied per packet until
a batch's payload is joined, and that join is one C-level pass
(`gather`), not a Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CaptureChunk", "gather"]


def gather(data: Any, starts: Sequence[int], ends: Sequence[int]) -> bytes:
    """data[s:e] for every (s, e), joined: slicing and join both run in C."""
    view = memoryview(data)
    return b"".join(map(view.__getitem__, map(slice, starts, ends)))


@dataclass(slots=True)
class CaptureChunk:
    """Packet i is data[start[i] : start[i] + cap_len[i]]; every array is int64."""

    data: Any  # bytes, or the capture's mmap
    start: np.ndarray
    cap_len: np.ndarray
    orig_len: np.ndarray
    ts_ns: np.ndarray
    linktype: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    @classmethod
    def from_packets(
        cls, ts_ns: Sequence[int], orig_len: Sequence[int], datas: Sequence[bytes], linktype: Any
    ) -> CaptureChunk:
        """A chunk over one joined buffer (packets that are not in a file)."""
        lens = np.fromiter(map(len, datas), dtype=np.int64, count=len(datas))
        start = np.zeros(len(datas), dtype=np.int64)
        np.cumsum(lens[:-1], out=start[1:])
        kinds = np.broadcast_to(np.asarray(linktype, dtype=np.int64), (len(datas),)).copy()
        return cls(
            b"".join(datas),
            start,
            lens,
            np.asarray(orig_len, dtype=np.int64).reshape(-1),
            np.asarray(ts_ns, dtype=np.int64).reshape(-1),
            kinds,
        )

    def packets(self) -> list[bytes]:
        view = memoryview(self.data)
        ends = self.start + self.cap_len
        return list(
            map(bytes, map(view.__getitem__, map(slice, self.start.tolist(), ends.tolist())))
        )

    def payload(self, index: np.ndarray | None = None) -> bytes:
        """The packets (all, or those at `index`, in that order) back to back."""
        start = self.start if index is None else self.start[index]
        end = start + (self.cap_len if index is None else self.cap_len[index])
        return gather(self.data, start.tolist(), end.tolist())

    def take(self, index: np.ndarray | slice) -> CaptureChunk:
        """The packets at `index` (positions or a slice), over the same bytes."""
        return CaptureChunk(
            self.data,
            self.start[index],
            self.cap_len[index],
            self.orig_len[index],
            self.ts_ns[index],
            self.linktype[index],
        )
