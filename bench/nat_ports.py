"""Benchmark: what one new NAT binding costs as the public port range fills up.

    python bench/nat_ports.py --label after [--code DIR] [--out bench/results/nat_ports.json]

One Nat core (one public IP, ports 1024-65535, UDP) on partition 0 of
`--partitions`, in-memory state. The `bind` and `rev` tables are filled with
live bindings holding a seeded random share of partition 0's ports (written
directly, not allocated), then `--flows` new internal endpoints each send one
packet, each in its own batch: core.process plus write_back, timed one by one
(headers parsed beforehand). Levels: 0, 32,000, 60,000 and 64,000 bindings
(scaled by 1/partitions) and "exhausted" (every port of the partition held).
The first new flow of a level is reported apart (`first_ms`): it pays what a
cold worker pays once (e.g. deriving per-partition port sets from the tables).

`--code DIR` measures another checkout of the repository (e.g. a
`git worktree` of an older commit), so that before and after come from one
script. Each run merges `runs[label]` into the JSON file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from loadwatch import LoadWatch, wait_quiet  # noqa: E402

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
PUB = bytes((192, 0, 2, 1))
REMOTE = bytes((8, 8, 8, 8))
LEVELS = (0, 32_000, 60_000, 64_000)
LO, HI = 1024, 65535


def use_code(root: Path) -> None:
    """Import snf and snf.functions from `root` instead of the installed tree."""
    sys.path.insert(0, str(root))
    for name in [m for m in sys.modules if m == "snf" or m.startswith("snf.")]:
        del sys.modules[name]
    import snf  # noqa: F401  (now from root)

    init = root / "functions" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "snf.functions", init, submodule_search_locations=[str(root / "functions")]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["snf.functions"] = module
    spec.loader.exec_module(module)


def udp_frame(src: bytes, sport: int) -> bytes:
    """Ethernet + IPv4 + UDP to 8.8.8.8:53, checksums left zero (the NAT adjusts them)."""
    ip = bytes((0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0)) + src + REMOTE
    udp = sport.to_bytes(2, "big") + (53).to_bytes(2, "big") + (8).to_bytes(2, "big") + b"\0\0"
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


def internal(i: int, net: int) -> bytes:
    return bytes((10, net, (i >> 8) & 0xFF, i & 0xFF))


class Level:
    """One fill level: a core, its filled state and the packets of new flows."""

    def __init__(self, partitions: int, filled: int | None, flows: int, seed: int) -> None:
        from snf.core.tables import BatchState
        from snf.functions.nat import Nat, NatConfig
        from snf.packet.flowkey import endpoint_hash

        config = {"inside": ["10.0.0.0/8"], "public_ips": ["192.0.2.1"], "ports": f"{LO}-{HI}"}
        self.nat = Nat(NatConfig.model_validate(config))
        self.nat.partitions = partitions
        self.stores = BatchState.memory(Nat.tables)
        self.BatchState = BatchState
        mine = [p for p in range(LO, HI + 1) if endpoint_hash(17, PUB, p) % partitions == 0]
        rng = random.Random(seed)
        taken = mine if filled is None else rng.sample(mine, min(filled, len(mine)))
        self.filled = len(taken)
        self.ports = len(mine)

        def ours(net: int) -> list[tuple[bytes, int]]:  # internal endpoints of partition 0
            out, i = [], 0
            while len(out) < max(self.filled if net == 0 else flows, 1):
                ep = (internal(i, net), 5000)
                if endpoint_hash(17, *ep) % partitions == 0:
                    out.append(ep)
                i += 1
            return out

        bind, rev = self.stores["bind"].data, self.stores["rev"].data
        for (ip, sport), port in zip(ours(0), taken, strict=False):
            key = bytes((17,)) + ip + sport.to_bytes(2, "big")
            bind[key] = [PUB.hex(), port, T0, 0, [REMOTE.hex() + "0035"]]
            rev[bytes((17,)) + PUB + port.to_bytes(2, "big")] = [ip.hex(), sport]
        self.packets = [udp_frame(ip, sport) for ip, sport in ours(1)[:flows]]

    def run(self) -> dict[str, Any]:
        from snf.packet.batch import PacketBatch
        from snf.packet.parse import parse_packet_batch

        rows = []
        for i, frame in enumerate(self.packets):
            b = PacketBatch.from_rows(1, [(T0 + NS + i * 1000, len(frame), frame, 1, i, "")])
            rows.append((b, parse_packet_batch(b)))
        times: list[int] = []
        reasons: dict[str, int] = {}
        clock = time.perf_counter_ns
        for batch, headers in rows:
            state = self.BatchState(self.stores)
            t = clock()
            d = self.nat.process(batch, headers, state)
            state.write_back()
            times.append(clock() - t)
            reasons[d.reasons[0] or "pass"] = reasons.get(d.reasons[0] or "pass", 0) + 1
        rest = sorted(times[1:]) or times
        return {
            "bindings": self.filled,
            "partition_ports": self.ports,
            "flows": len(times),
            "outcomes": reasons,
            "first_ms": round(times[0] / 1e6, 3),
            "median_us": round(statistics.median(rest) / 1e3, 1),
            "p99_us": round(rest[min(len(rest) - 1, int(len(rest) * 0.99))] / 1e3, 1),
            "max_us": round(rest[-1] / 1e3, 1),
        }


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    return done.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--label", required=True, help="e.g. before, after")
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout to measure")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--flows", type=int, default=1000, help="new flows per level")
    ap.add_argument("--slow-flows", type=int, help="flows at 64k and exhausted (default: --flows)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "nat_ports.json")
    args = ap.parse_args()
    if args.code.resolve() != ROOT:
        use_code(args.code.resolve())
    levels: list[dict[str, Any]] = []
    slow = args.slow_flows or args.flows
    waited = wait_quiet(0.1, 120)  # the machine is shared: start in a quiet second
    with LoadWatch() as watch:
        for filled in (*LEVELS, None):
            scaled = None if filled is None else filled // args.partitions
            flows = args.flows if scaled is not None and filled < 64_000 else slow
            if filled == 64_000:  # only ~512 ports are left there: stay below exhaustion
                flows = min(flows, 400 // args.partitions)
            result = Level(args.partitions, scaled, flows, args.seed).run()
            result["level"] = "exhausted" if filled is None else filled
            levels.append(result)
            print(json.dumps(result), flush=True)
    run = {
        "code": {
            "commit": _git(args.code, "rev-parse", "--short", "HEAD"),
            "uncommitted": _git(args.code, "status", "--porcelain", "--", "functions/nat"),
        },
        "partitions": args.partitions,
        "levels": levels,
        "disturbance": {**watch.report(), "waited_for_quiet_s": waited},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "loadavg": list(os.getloadavg()),
    }
    report: dict[str, Any] = {}
    if args.out.exists():
        report = json.loads(args.out.read_text())
    report["benchmark"] = "NAT: one new binding (one packet, one batch) by fill level"
    report.setdefault("runs", {})[args.label] = run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
