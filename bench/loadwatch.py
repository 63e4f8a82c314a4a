"""LoadWatch: how much CPU other people's processes took while a measurement ran.

The machine is shared: a figure is only worth keeping if nothing else ran
beside it. The load average lags by a minute, so this samples /proc instead:
every process that is neither this one, nor one of its descendants, nor a
node of the local broker (its CPU is ours, even when others use it too)
counts as a disturbance. Processes that start and end between two samples
(0.25 s) are missed.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snf.kafka import cluster

__all__ = ["LoadWatch", "least_disturbed", "median_run", "wait_quiet"]

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class _Proc:
    ppid: int
    name: str
    first: float  # CPU seconds when first seen (0 if it started after the watch did)
    last: float


def add_disturbance_args(
    ap: argparse.ArgumentParser, repeats: int | None, tries: int | None = 3
) -> None:
    """--repeats, --tries and --max-disturbance, as every benchmark here takes them
    (None: a benchmark without that option)."""
    if repeats is not None:
        ap.add_argument(
            "--repeats", type=int, default=repeats, help="runs per figure; the median is kept"
        )
    if tries is not None:
        ap.add_argument(
            "--tries", type=int, default=tries, help="runs of a disturbed figure at most"
        )
    ap.add_argument(
        "--max-disturbance",
        type=float,
        default=0.1,
        help="re-run a figure when others used more than this share of the CPUs",
    )


def _read(pid: str) -> tuple[int, str, float, float] | None:
    """(ppid, name, start time in s since boot, CPU seconds) of one process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    f = raw.rsplit(")", 1)[1].split()
    return int(f[1]), name, int(f[19]) / TICK, (int(f[11]) + int(f[12])) / TICK


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


@dataclass
class LoadWatch:
    interval: float = 0.25
    procs: dict[int, _Proc] = field(default_factory=dict)
    wall: float = 0.0

    def __enter__(self) -> LoadWatch:
        self._stop = threading.Event()
        self._since = _uptime()
        self._t0 = time.monotonic()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall = time.monotonic() - self._t0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or (got := _read(pid)) is None:
                continue
            ppid, name, started, cpu = got
            known = self.procs.get(int(pid))
            if known is None:
                base = 0.0 if started >= self._since else cpu
                self.procs[int(pid)] = _Proc(ppid, name, base, cpu)
            else:
                known.last = cpu

    def _ours(self) -> set[int]:
        ours = {os.getpid()}
        info = cluster.recorded()
        ours |= {n.pid for n in info.nodes if n.pid} if info else set()
        grew = True
        while grew:  # descendants, through the parents recorded while they lived
            new = {pid for pid, p in self.procs.items() if p.ppid in ours} - ours
            ours |= new
            grew = bool(new)
        return ours

    def report(self) -> dict[str, Any]:
        """Others' CPU seconds, their share of the machine, and the busiest of them."""
        ours = self._ours()
        others: dict[str, float] = {}
        for pid, p in self.procs.items():
            if pid not in ours and p.last > p.first:
                others[p.name] = others.get(p.name, 0.0) + p.last - p.first
        total = sum(others.values())
        top = sorted(others.items(), key=lambda kv: -kv[1])[:3]
        return {
            "others_cpu_seconds": round(total, 2),
            "others_share": round(total / ((os.cpu_count() or 1) * max(self.wall, 1e-9)), 3),
            "others_top": {name: round(s, 2) for name, s in top},
        }


def wait_quiet(max_share: float, patience: float) -> float:
    """Wait (up to `patience` seconds) for a second in which others took at most
    `max_share` of the CPUs; return the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < patience:
        with LoadWatch() as watch:
            time.sleep(1.0)
        if watch.report()["others_share"] <= max_share:
            break
    return round(time.monotonic() - started, 1)


def least_disturbed(
    measure: Callable[[], dict[str, Any]],
    tries: int = 3,
    max_share: float = 0.1,
    patience: float = 60.0,
) -> dict[str, Any]:
    """Run `measure` (whose result has a `disturbance` from LoadWatch.report), each
    time after a quiet second (wait_quiet), until others took at most `max_share`
    of the machine during it, `tries` times at most; return the least disturbed
    run, with every attempt's pps and disturbance when there was more than one."""
    runs: list[dict[str, Any]] = []
    for _ in range(max(tries, 1)):
        waited = wait_quiet(max_share, patience)
        runs.append(measure())
        runs[-1]["disturbance"]["waited_for_quiet_s"] = waited
        if runs[-1]["disturbance"]["others_share"] <= max_share:
            break
    best = min(runs, key=lambda r: r["disturbance"]["others_share"])
    if len(runs) > 1:
        best["attempts"] = [
            {"pps": r.get("pps"), "others_share": r["disturbance"]["others_share"]} for r in runs
        ]
    return best


def median_run(
    measure: Callable[[], dict[str, Any]], repeats: int = 1, **kw: Any
) -> dict[str, Any]:
    """`repeats` least disturbed runs (least_disturbed, `kw` its settings); the run of
    median pps, with every run's pps when there was more than one."""
    runs = sorted((least_disturbed(measure, **kw) for _ in range(max(repeats, 1))), key=_pps)
    middle = runs[(len(runs) - 1) // 2]
    if len(runs) > 1:
        middle["repeats_pps"] = [r.get("pps") for r in runs]
    return middle


def _pps(run: dict[str, Any]) -> float:
    return run.get("pps") or 0.0
