"""Benchmark: the load balancer core with sweeps on and off (bounded state, issue 13).

    python bench/lb_sweeps.py [--loops 40] [--repeats 5] [--code DIR] [--label L]

One LoadBalancer (the `lb` step of pipelines/edge.yaml) in a FunctionEngine
with in-memory tables and a control table, one partition, batches of 512
(parse + process + state flush, as `snf run --local` runs it), over
pipelines/captures/edge.pcapng looped `--loops` times, two ways:

same     every loop at the capture's own times, as `snf run --loop` replays:
         packet time never passes the first loop's end, so a sweep runs only
         in the first loop; "on" pays the index upkeep alone
shifted  every loop 1,000 s after the previous one: every flow expires
         between loops, and "on" sweeps it (conn, back, frag) while "off"
         leaves it to be overwritten by the next loop's packet

"on" is the default `sweep_interval: 1`, "off" is `sweep_interval: 0`.
`--code DIR` measures another checkout (e.g. `git archive` of an older commit,
before the load balancer had either; its figure is printed as "before").
Prints packets/s, the fastest of `--repeats` runs (the least disturbed on a
shared machine), and the conn entries left.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from nat_ports import use_code  # noqa: E402

NS = 1_000_000_000


def batches(loops: int, shift_s: float, size: int = 512) -> list[Any]:
    from snf.packet.batch import PacketBatch
    from snf.packet.capture_file import read_capture

    packets = list(read_capture(ROOT / "pipelines" / "captures" / "edge.pcapng"))
    rows = [
        (p.ts_ns + round(k * shift_s * NS), len(p.data), p.data, 1, k * len(packets) + i, "")
        for k in range(loops)
        for i, p in enumerate(packets)
    ]
    linktype = packets[0].linktype
    return [PacketBatch.from_rows(linktype, rows[i : i + size]) for i in range(0, len(rows), size)]


def measure(config: dict[str, Any], work: list[Any]) -> tuple[float, int]:
    """(packets/s, conn entries left) of one run over fresh state."""
    from snf.core.engine import FunctionEngine
    from snf.core.tables import CONTROL_TABLE, BatchState
    from snf.functions.loadbalancer import LoadBalancer, LoadBalancerConfig

    core = LoadBalancer(LoadBalancerConfig.model_validate(config))
    engine = FunctionEngine(core)
    stores = BatchState.memory((*core.tables, CONTROL_TABLE))
    t0 = time.perf_counter()
    for batch in work:
        engine.handle(batch, BatchState(stores))
    seconds = time.perf_counter() - t0
    return sum(len(b) for b in work) / seconds, len(stores["conn"].data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loops", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--code", type=Path, help="measure this checkout instead")
    args = ap.parse_args()
    if args.code is not None:
        use_code(args.code.resolve())
    from snf.pipeline.loader import load_pipeline

    base = load_pipeline(ROOT / "pipelines" / "edge.yaml").function("lb").config.model_dump()
    kinds = {"on": {"sweep_interval": 1}, "off": {"sweep_interval": 0}}
    if "sweep_interval" not in base:
        kinds = {"before": {}}
    for name, shift in (("same", 0.0), ("shifted", 1000.0)):
        work = batches(args.loops, shift)
        runs: dict[str, list[tuple[float, int]]] = {kind: [] for kind in kinds}
        for _ in range(args.repeats):  # alternate, so a busy moment hurts both
            for kind, extra in kinds.items():
                runs[kind].append(measure({**base, **extra}, work))
        for kind, results in runs.items():
            pps = max(r[0] for r in results)
            print(f"{name:8} {kind:6} {pps:>10,.0f} packets/s  conn left {results[0][1]:,}")


if __name__ == "__main__":
    main()
