"""Latency: capture-to-transmit times of live packets, in bounded memory.

A packet's capture time is its packet time (the kernel's timestamp at the
capturing ring, snf.live.afpacket); its transmit time is the clock when the
sink hands it to the sending socket. Both read this host's realtime clock,
so capture agent and sink must run on one host (they do inline). Kept as a
log-scale histogram: 400 bins from 10 µs to 100 s, about 4% wide, so a
sink that runs for months keeps 3 KiB.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["LatencyHistogram"]

EDGES_S = np.geomspace(1e-5, 100.0, 401)


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts = np.zeros(len(EDGES_S) + 1, dtype=np.int64)  # + under and over
        self.max_s = 0.0
        self.total = 0

    def add(self, ts_ns: np.ndarray, now_ns: int | None = None) -> None:
        if not len(ts_ns):
            return
        now_ns = time.time_ns() if now_ns is None else now_ns
        delays = (now_ns - np.asarray(ts_ns, dtype=np.int64)) / 1e9
        np.add.at(self.counts, np.searchsorted(EDGES_S, delays, side="right"), 1)
        self.max_s = max(self.max_s, float(delays.max()))
        self.total += len(delays)

    def quantile(self, q: float) -> float | None:
        """The upper edge of the bin holding quantile `q`, in seconds, never above the
        largest sample (None: no samples)."""
        if not self.total:
            return None
        index = int(np.searchsorted(np.cumsum(self.counts), q * self.total, side="left"))
        return min(float(EDGES_S[min(index, len(EDGES_S) - 1)]), self.max_s)

    def summary(self) -> dict[str, float | int | None]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1e3, 3)

        return {
            "packets": self.total,
            "p50_ms": ms(self.quantile(0.5)),
            "p99_ms": ms(self.quantile(0.99)),
            "max_ms": ms(self.max_s if self.total else None),
        }
