"""stats.json: a worker's counters and rates, for `snf status` and the supervisor.

Written atomically every few seconds into the worker's datadir. Rates are
over the last interval, so a reader needs only one snapshot.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["STATS_FILE", "WorkerStats", "read_stats"]

STATS_FILE = "stats.json"


class WorkerStats:
    def __init__(self, path: Path, counters: Counter[str]) -> None:
        self.path = path
        self.counters = counters
        self.started = time.time()
        self._last: tuple[float, int, int] | None = None  # (time, in, out)

    def snapshot(self, assigned: list[int], now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        packets_in, packets_out = self.counters["in"], self.counters["out"]
        in_pps = out_pps = 0.0
        if self._last is not None and now > self._last[0]:
            dt = now - self._last[0]
            in_pps = (packets_in - self._last[1]) / dt
            out_pps = (packets_out - self._last[2]) / dt
        self._last = (now, packets_in, packets_out)
        return {
            "time": now,
            "pid": os.getpid(),
            "started": self.started,
            "assigned": assigned,
            "in_pps": round(in_pps, 1),
            "out_pps": round(out_pps, 1),
            "counters": dict(self.counters),
        }

    def write(self, assigned: list[int]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot(assigned)))
        tmp.replace(self.path)


def read_stats(datadir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((datadir / STATS_FILE).read_text())
    except (OSError, ValueError):
        return None
