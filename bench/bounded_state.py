"""Benchmark: memory of the firewall, flowmon and NAT cores under a SYN flood, sweeps on and off.

    python bench/bounded_state.py --packets 1000000 10000000 --out bench/results/bounded_state.json

Each SYN comes from a distinct source (numpy-built Ethernet/IPv4/TCP frames),
evenly over `--seconds` of packet time (2 hours by default). Each run is a
child process (its peak RSS is its own) that pushes the flood through a
FunctionEngine with in-memory tables, the --local path, on one partition, and
samples the live entries and the RSS twenty times. "off" is `sweep_interval:
0` (expiry only when a later packet of the same key finds its entry, as
before); "burst" packs the flood into 60 s against `max_entries: 100000`, so
the cap and not the timeouts bounds the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.provenance import changed_since, code_state  # noqa: E402
from snf.core.engine import FunctionEngine  # noqa: E402
from snf.core.registry import get_function  # noqa: E402
from snf.core.tables import CONTROL_TABLE, BatchState  # noqa: E402
from snf.packet.batch import RECORD_DTYPE, PacketBatch  # noqa: E402

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
FRAME = 54  # Ethernet + IPv4 + TCP, no payload
MAIN_TABLE = {"firewall": "conn", "flowmon": "flows", "nat": "bind"}
CONFIGS: dict[str, dict[str, Any]] = {
    "firewall": {"rules": [{"action": "allow", "proto": "tcp", "dport": 80}]},
    "flowmon": {},
    # The flood's sources are inside; eight public IPs hold 516k ports, more than a
    # 10M flood keeps half-open for tcp_transitory (240 s) at 1,389 SYNs/s.
    "nat": {"inside": ["100.64.0.0/10"], "public_ips": [f"203.0.113.{i}" for i in range(1, 9)]},
}


def _template() -> np.ndarray:
    eth = bytes.fromhex("0200000000020200000000010800")
    ip = bytes.fromhex("450000280001000040060000000000000a000002")
    tcp = bytes.fromhex("0000005000000001000000005002ffff00000000")
    return np.frombuffer(eth + ip + tcp, dtype=np.uint8)


def flood(n: int, seconds: float, batch: int = 512) -> Iterator[PacketBatch]:
    """n SYNs from distinct sources (100.64.0.0/10 upwards), evenly over `seconds`."""
    template = _template()
    step = seconds * NS / n
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n), dtype=np.int64)
        frames = np.tile(template, (len(idx), 1))
        src = (0x64400000 + idx).astype(">u4").view(np.uint8).reshape(-1, 4)
        frames[:, 26:30] = src
        sport = (1024 + idx % 60000).astype(">u2").view(np.uint8).reshape(-1, 2)
        frames[:, 34:36] = sport
        rec = np.zeros(len(idx), dtype=RECORD_DTYPE)
        rec["ts_ns"] = T0 + (idx * step).astype(np.int64)
        rec["seq"] = idx
        rec["orig_len"] = rec["cap_len"] = FRAME
        yield PacketBatch(1, rec, frames.tobytes(), sources=(1,), batch_id=start // batch)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def run_one(kind: str, packets: int, seconds: float, mode: str) -> dict[str, Any]:
    """One core, one flood, in this process."""
    config = dict(CONFIGS[kind])
    if mode == "off":
        config["sweep_interval"] = 0
    if mode == "burst":
        config["max_entries"] = 100_000
    cls = get_function(kind)
    core = cls(cls.Config.model_validate(config))
    engine = FunctionEngine(core)
    stores = BatchState.memory((*core.tables, CONTROL_TABLE))
    main = stores[MAIN_TABLE[kind]]
    baseline = _rss_mb()
    every = max(1, packets // 512 // 20)
    samples = []
    t0 = time.perf_counter()
    for b in flood(packets, seconds):
        engine.handle(b, BatchState(stores, partition=0))
        if (b.batch_id + 1) % every == 0:
            samples.append(
                {
                    "packets": (b.batch_id + 1) * 512,
                    "live": len(main.data),
                    "rss_mb": round(_rss_mb(), 1),
                }
            )
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "function": kind,
        "mode": mode,
        "packets": packets,
        "packet_seconds": seconds,
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "final_live": len(main.data),
        "max_live": max(s["live"] for s in samples),
        "wall_seconds": round(wall, 1),
        "pps": round(packets / wall),
        "counters": {k: v for k, v in engine.counters.items() if k not in ("in", "pass")},
        "samples": samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--packets", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--seconds", type=float, default=7200)
    ap.add_argument("--functions", nargs="+", default=["firewall", "flowmon", "nat"])
    ap.add_argument(
        "--off-up-to",
        type=int,
        default=1_000_000,
        help="run sweep-off only up to this many packets (it grows linearly)",
    )
    ap.add_argument(
        "--one", nargs=3, metavar=("FUNCTION", "PACKETS", "MODE"), help=argparse.SUPPRESS
    )
    ap.add_argument(
        "--burst",
        type=int,
        nargs="*",
        default=[1_000_000],
        help="sizes also run as a 60 s burst against max_entries 100000",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bounded_state.json")
    args = ap.parse_args()
    if args.one:
        kind, n, mode = args.one
        seconds = 60.0 if mode == "burst" else args.seconds
        print(json.dumps(run_one(kind, int(n), seconds, mode)))
        return
    state = code_state()
    runs = []
    for n in args.packets:
        for kind in args.functions:
            modes = ["on", "off"] if n <= args.off_up_to else ["on"]
            if n in args.burst:
                modes.append("burst")
            for mode in modes:
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    kind,
                    str(n),
                    mode,
                    "--seconds",
                    str(args.seconds),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                result = json.loads(out)
                print(
                    kind,
                    n,
                    mode,
                    {k: result[k] for k in ("peak_rss_mb", "max_live", "final_live", "pps")},
                    file=sys.stderr,
                )
                runs.append(result)
    report = {
        "benchmark": "bounded_state",
        "machine": {"python": platform.python_version(), "cpus": 2},
        "code": state,
        "code_changed_during_run": changed_since(state),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
