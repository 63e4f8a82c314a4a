"""EndpointRewrites: a batch's IPv4 address/port rewrites, noted first, written at once.

The skeleton shared by the NAT's and the load balancer's batch paths. A path
notes, per packet, the end to rewrite (0 source, 1 destination) and the new
endpoint (4 address bytes and 2 port bytes); `apply` then writes them all:
from `min_bulk` rewrites on with the subclass's numpy kernel (`rewrite_rows`)
over a copy of the payload, below that (or when the batch is damaged) one
packet at a time with the subclass's per-packet rewrite (`rewrite_one`). Each
function keeps its own checksum rules in those two methods.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers

__all__ = ["EndpointRewrites"]


class EndpointRewrites:
    """Per end, packet indices and new endpoints; rewritten packets land in `replaced`."""

    __slots__ = ("batch", "h", "index", "new", "replaced")
    min_bulk: ClassVar[int]  # numpy's fixed cost per batch beats per-packet from here

    def __init__(self, batch: PacketBatch, h: Headers, replaced: dict[int, bytes]) -> None:
        self.batch = batch
        self.h = h
        self.replaced = replaced
        self.index: tuple[list[int], list[int]] = ([], [])
        self.new: tuple[list[bytes], list[bytes]] = ([], [])

    def __len__(self) -> int:
        return len(self.index[0]) + len(self.index[1])

    def rewrite_one(self, i: int, which: int, new: bytes) -> None:
        """Rewrite packet i now into `replaced`, as the per-packet path does (may raise)."""
        raise NotImplementedError

    def rewrite_rows(
        self,
        buf: np.ndarray,
        l3: np.ndarray,
        l4: np.ndarray,
        end: np.ndarray,
        proto: np.ndarray,
        which: np.ndarray,
        new: np.ndarray,
    ) -> None:
        """Write every row into buf (absolute offsets; its last 2 bytes are spare);
        `new` holds the address and port as three 16-bit words per row."""
        raise NotImplementedError

    def apply(self) -> list[int]:
        """Write every noted rewrite; return the packets that failed (none unless
        the batch's offsets overrun its payload)."""
        if len(self) >= self.min_bulk:
            try:
                self._bulk()
                return []
            except Exception:  # a damaged batch: packet by packet, each on its own
                pass
        failed = []
        for which in (0, 1):
            for i, new in zip(self.index[which], self.new[which], strict=True):
                try:
                    self.rewrite_one(i, which, new)
                except Exception:
                    failed.append(i)
        return failed

    def _bulk(self) -> None:
        batch, h = self.batch, self.h
        n = len(h)
        index = self.index[0] + self.index[1]
        idx = np.fromiter(index, dtype=np.int64, count=len(index))
        offsets = np.asarray(batch.offsets, dtype=np.int64)
        start, end = offsets[idx], offsets[idx + 1]
        new = np.frombuffer(b"".join(self.new[0]) + b"".join(self.new[1]), dtype=">u2")
        size = len(batch.payload)
        buf = np.zeros(size + 2, dtype=np.uint8)  # 2 spare bytes: checksums not captured
        buf[:size] = np.frombuffer(batch.payload, dtype=np.uint8)
        which = np.zeros(len(index), dtype=np.int64)
        which[len(self.index[0]) :] = 1
        self.rewrite_rows(
            buf,
            start + np.fromiter(h.l3_off, dtype=np.int64, count=n)[idx],
            start + np.fromiter(h.l4_off, dtype=np.int64, count=n)[idx],
            end,
            np.fromiter(h.proto, dtype=np.int64, count=n)[idx],
            which,
            new.reshape(-1, 3).astype(np.int64),
        )
        out = buf[:size].tobytes()
        replaced = self.replaced
        for i, a, b in zip(index, start.tolist(), end.tolist(), strict=True):
            replaced[i] = out[a:b]
