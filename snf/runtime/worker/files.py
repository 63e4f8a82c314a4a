"""The files a worker keeps in its datadir, with one typed reader and writer each.

    assignment.json   {"partitions", "time", "group", "member_id"}: written after
                      every rebalance. Readiness for the supervisor, deploy and
                      probes; the member id lets the supervisor evict a dead
                      worker from its group at once.
    stats.json        {"time", "pid", "started", "assigned", "in_pps", "out_pps",
                      "counters", "health_port"}: counters and rates every few
                      seconds, for `snf status`; health_port (null without a
                      health server) is where /metrics answers.
    clean-stop        empty: a drain finished, so the local tables match the
                      changelog. Without it a starting worker discards its local
                      RocksDB and restores from the changelog.

JSON files are written to a temporary file renamed over the old one: a reader
sees the old file or the new one, never half of one. Readers answer None for a
file that is missing or unreadable: a worker may be starting or gone.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ASSIGNMENT_FILE",
    "CLEAN_STOP_FILE",
    "STATS_FILE",
    "Assignment",
    "StatsWriter",
    "WorkerFiles",
]

ASSIGNMENT_FILE = "assignment.json"
STATS_FILE = "stats.json"
CLEAN_STOP_FILE = "clean-stop"


@dataclass(frozen=True)
class Assignment:
    """The input partitions a worker owns since its last rebalance."""

    partitions: list[int]
    time: float  # when the rebalance completed (wall clock)
    group: str = ""
    member_id: str = ""


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class WorkerFiles:
    """One worker's datadir (also the supervisor's view of an instance)."""

    datadir: Path

    @property
    def assignment_path(self) -> Path:
        return self.datadir / ASSIGNMENT_FILE

    def write_assignment(self, assignment: Assignment) -> None:
        _write_json(self.assignment_path, asdict(assignment))

    def assignment(self) -> Assignment | None:
        data = _read_json(self.assignment_path)
        if not isinstance(data, dict) or not isinstance(data.get("partitions"), list):
            return None
        return Assignment(
            partitions=[int(p) for p in data["partitions"]],
            time=float(data.get("time") or 0.0),
            group=str(data.get("group") or ""),
            member_id=str(data.get("member_id") or ""),
        )

    def clear_assignment(self) -> None:
        """A (re)starting worker is not ready until its first rebalance completes."""
        self.assignment_path.unlink(missing_ok=True)

    def stats(self) -> dict[str, Any] | None:
        data = _read_json(self.datadir / STATS_FILE)
        return data if isinstance(data, dict) else None

    def mark_clean_stop(self) -> None:
        (self.datadir / CLEAN_STOP_FILE).touch()

    def take_clean_stop(self) -> bool:
        """Whether the last stop was a clean drain; the mark is used up."""
        path = self.datadir / CLEAN_STOP_FILE
        clean = path.exists()
        path.unlink(missing_ok=True)
        return clean


class StatsWriter:
    """Writes stats.json; rates are over the last interval, so one snapshot says it all."""

    def __init__(self, files: WorkerFiles, counters: Counter[str]) -> None:
        self.path = files.datadir / STATS_FILE
        self.counters = counters
        self.started = time.time()
        self.health_port: int | None = None  # set once the health server listens
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
            "health_port": self.health_port,
        }

    def write(self, assigned: list[int]) -> None:
        _write_json(self.path, self.snapshot(assigned))
