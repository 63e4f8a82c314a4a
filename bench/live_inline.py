"""Benchmark: snf inline in a lab's path, on live traffic: latency, throughput, continuity.

    python bench/live_inline.py --out bench/results/live_inline.json
        [--parts latency,throughput,continuity] [--chains 1,2,4] [--kills 20] [--quick]

Needs root, iproute2, ethtool and iperf3, and a broker (SNF_BROKERS, `snf kafka
up`, or one started here). A lab of its own (`--lab`, default bench: torn down
and built afresh) and, per chain, a deployment (snf.harness.inline_rig: `snf
deploy`, `snf capture` on both arms, `snf sink` sending out of the other arm);
ship: whole, partitions 1, one worker per function.

latency     chains of 1 (fw), 2 (fw -> nat) and 4 functions (fw -> nat ->
            flowmon -> fw2 allowing everything). UDP datagrams of 200 bytes
            from the client namespace to a receiver in the server namespace,
            paced by absolute due times. Capacity: a flood (--flood-pps for
            --flood-seconds, 100,000 for 3 s); the rate the receiver got them
            at while the chain drained its backlog (a lower bound when the
            chain kept up: `saturated` false). Then a quiet link (20
            packets/s: each goes at once) and 1 %, 10 % and 50 % of it
            for 10 s each, each through a fresh sink: its capture-to-transmit
            histogram (kernel timestamp at the capturing ring to the sink's
            send), divided by the Kafka hops (functions + 1); the workers'
            /metrics deltas (messages, packets per message, mean stage times,
            snf_hop_latency_seconds quantiles) and every process's CPU. Then
            with the capture agent's --linger-ms 50 (fewer, bigger messages):
            every level for fw -> nat, 50 % for the others. Target: p99 <=
            20 ms per function hop at 50 %.
throughput  iperf3 through fw -> nat: TCP 10 s (and again with --linger-ms 50),
            UDP at --udp-mbps rates 5 s each
            (Mbit/s, packets/s, loss from iperf3's JSON; the chain's packets/s
            from fw's /metrics), beside `snf run` of the same chain (no egress)
            replaying captures of the same traffic at top speed.
continuity  iperf3 TCP connections through fw -> nat (a server of our own on
            5202: no 120 s idle limit) while `snf chaos` kills fw and nat in
            turn: first two kills 20 s apart (what one kill costs), then,
            after a minute of health, --kills kills planned evenly over
            --continuity-seconds. Each kill waits until its victim runs; the
            supervisor's restart backoff (0.5 s doubling to 30 s for a worker
            killed again within a minute) stretches the schedule, so iperf3
            runs until 15 s after the last worker is back, then is
            interrupted. From its 0.5 s intervals: the longest stall, the
            stall after each kill, whether the connection lived on; per kill,
            when the worker ran again (chaos) and when the function's output
            resumed (worker logs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kafka_ceiling import broker
from live_inline_continuity import continuity
from live_inline_parts import (
    CAPTURE_LINGER_MS,
    Bench,
    capacity,
    ensure_sink,
    latency_levels,
    replay_rates,
    restart_capture,
    throughput,
)
from live_inline_tools import PARTITIONS, Receiver, Workers, chain_text, write_scripts
from loadwatch import add_disturbance_args
from provenance import code_state, machine, write_report
from rich.console import Console
from rich.table import Table

from snf.ingress.live import RING_TIMEOUT_MS

ROOT = Path(__file__).resolve().parents[1]
SHARES = (0.01, 0.1, 0.5)
QUIET_PPS = 20.0  # a packet every 50 ms, more than --linger-ms apart: each goes at once
FUNCTIONS = {1: ["fw"], 2: ["fw", "nat"], 4: ["fw", "nat", "flows", "fw2"]}
TARGET_HOP_P99_MS = 20.0  # the issue's: p99 per function hop at half load
LONG_LINGER_MS = 50


def fresh_lab(name: str, console: Console) -> Any:
    """The lab `name`, built afresh (a leftover of an earlier run is removed first)."""
    from snf.live import lab as labs

    if labs.record_path(name).exists():
        console.print(f"lab {name}: left over, removing it first")
        labs.down(name)
    return labs.up(name, blob_mib=1)


def undeploy_leftover(name: str) -> None:
    from snf.cli.main import main
    from snf.kafka.settings import snf_home

    if (snf_home() / "deployments" / name).exists():
        main(["undeploy", name, "--delete-topics"])


def run_chain(bench: Bench, args: argparse.Namespace, functions: int) -> dict[str, Any]:
    from snf.harness.inline_rig import inline_rig

    parts, quick = args.parts, args.quick
    name = f"lbench{functions}"
    undeploy_leftover(name)
    out: dict[str, Any] = {"functions": FUNCTIONS[functions], "kafka_hops": functions + 1}
    text = chain_text(functions, name, bench.lab)
    seconds = 3.0 if quick else args.seconds
    bench.console.print(f"[bold]chain of {functions}[/]: {' -> '.join(FUNCTIONS[functions])}")
    with inline_rig(bench.lab, text, bench.workdir / name) as rig:
        out["reachable_after_s"] = round(rig.wait_reachable(120), 2)
        workers = Workers(rig.name)
        workers.refresh()
        if "latency" in parts:
            flood = 2.0 if quick else args.flood_seconds
            cap = capacity(bench, rig, workers, args.flood_pps, flood)
            if not cap["capacity_pps"]:
                raise RuntimeError(f"nothing came through {name}: {cap}")
            shares = [(0.0, QUIET_PPS)] + [(s, s * cap["capacity_pps"]) for s in SHARES]
            out["capacity"] = cap
            out["levels"] = latency_levels(bench, rig, workers, functions, shares, seconds)
            if not args.no_linger_run:  # every level for fw -> nat, half load for the others
                again = shares if functions == 2 else shares[-1:]
                out["capture_before_linger_run"] = restart_capture(rig, LONG_LINGER_MS)
                longer = latency_levels(bench, rig, workers, functions, again, seconds)
                out[f"levels_linger_{LONG_LINGER_MS}ms"] = longer
                restart_capture(rig, CAPTURE_LINGER_MS)
        if functions == 2 and "throughput" in parts:
            linger = 0 if args.no_linger_run else LONG_LINGER_MS
            out["iperf3"] = throughput(bench, rig, workers, args.udp_mbps, linger)
        if functions == 2 and "continuity" in parts:
            kills = 2 if quick else args.kills
            secs = 30 if quick else args.continuity_seconds
            out["continuity"] = continuity(bench, rig, kills, secs, args.seed)
        ensure_sink(rig)  # the rig stops a sink on the way out
    out["capture"] = rig.capture_summary
    return out


def _level_name(share: float) -> str:
    return f"{share:.0%}" if share else f"quiet, {QUIET_PPS:.0f}/s"


def verdicts(chains: dict[str, Any]) -> dict[str, Any]:
    """Per chain, the 50 % level's p99 per function hop against the target."""
    out = {}
    for n, chain in chains.items():
        half = next((lv for lv in chain.get("levels", []) if lv["share"] == 0.5), None)
        if half is None:
            continue
        p99 = half["per_hop_ms"]["p99_ms"]
        out[n] = {"per_hop_p99_ms": p99, "met": p99 is not None and p99 <= TARGET_HOP_P99_MS}
    return out


def show(console: Console, report: dict[str, Any]) -> None:
    chains = report["chains"]
    table = Table(title="capture-to-transmit latency through the chain (ms), UDP 200 B")
    for col in ("chain", "load", "pkt/s", "lost", "p50", "p99", "max", "hop p50", "hop p99",
                "msg/s", "pkt/msg"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("chain", "load") else "right")
    for n, chain in chains.items():
        rows = [("", lv) for lv in chain.get("levels", [])]
        rows += [
            (f" linger {LONG_LINGER_MS}", lv)
            for lv in chain.get(f"levels_linger_{LONG_LINGER_MS}ms", [])
        ]
        for tag, lv in rows:
            lat, hop, w = lv["latency_ms"], lv["per_hop_ms"], lv["workers"]["fw"]
            table.add_row(
                f"{n} fn", f"{_level_name(lv['share'])}{tag}", f"{lv['target_pps']:,.0f}",
                str(lv["lost"]),
                *(str(lat.get(k)) for k in ("p50_ms", "p99_ms", "max_ms")),
                str(hop["p50_ms"]), str(hop["p99_ms"]), str(w["messages_per_s"]),
                str(w["packets_per_message"]),
            )  # fmt: skip
    if table.row_count:
        console.print(table)
    for n, chain in chains.items():
        if "capacity" in chain:
            console.print(f"capacity, {n} fn: {chain['capacity']['capacity_pps']:,} pkt/s")
    two = chains.get("2", {})
    if "iperf3" in two:
        tcp = two["iperf3"]["tcp"]
        console.print(f"iperf3 TCP: {tcp['mbps']} Mbit/s, {tcp['chain_pps']} pkt/s in the chain")
        if tcp20 := two["iperf3"].get(f"tcp_linger_{LONG_LINGER_MS}ms"):
            console.print(f"  with linger {LONG_LINGER_MS} ms: {tcp20['mbps']} Mbit/s")
        for u in two["iperf3"]["udp"]:
            console.print(
                f"iperf3 UDP {u['args'][-1]}: {u['mbps']} Mbit/s, {u['datagrams_per_s']} "
                f"datagrams/s, loss {u['loss_percent']} %"
            )
    for kind, r in (report.get("replay") or {}).items():
        if isinstance(r, dict):
            console.print(f"snf run {kind}: {r['pps']:,} pkt/s, {r['mbps']} Mbit/s")
    for tag, c in two.get("continuity", {}).items():
        console.print(
            f"continuity, {tag}: {len(c['kills'])} kills, longest stall {c['longest_stall_s']} s, "
            f"stalled {c['stalled_s']} s of {c['seconds']}, survived {c['survived']}; output "
            f"back after {[k['output_back_after_s'] for k in c['per_kill']]} s"
        )
    console.print(f"target p99 <= {TARGET_HOP_P99_MS} ms per hop at 50 %: {report['target']}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="latency,throughput,continuity")
    ap.add_argument("--chains", default="1,2,4", help="chain lengths for the latency part")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--continuity-seconds", type=int, default=120)
    ap.add_argument("--seconds", type=float, default=10.0, help="per load level")
    ap.add_argument("--flood-pps", type=float, default=100_000.0, help="of the capacity run")
    ap.add_argument("--flood-seconds", type=float, default=3.0)
    ap.add_argument("--udp-mbps", default="5,10,20,40", help="iperf3 UDP rates")
    ap.add_argument("--replay-packets", type=int, default=50_000)
    ap.add_argument("--no-linger-run", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    add_disturbance_args(ap, repeats=None, tries=2)
    ap.add_argument("--lab", default="bench")
    ap.add_argument("--brokers", default=None)
    ap.add_argument("--quick", action="store_true", help="short runs, 2 kills: for debugging")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "live_inline.json")
    args = ap.parse_args()
    args.parts = set(args.parts.split(","))
    args.udp_mbps = [float(m) for m in args.udp_mbps.split(",")]
    if args.quick:
        args.udp_mbps, args.replay_packets = args.udp_mbps[1::2], 5_000
    chains = [int(c) for c in args.chains.split(",")] if "latency" in args.parts else []
    args.chain_list = sorted(set(chains) | ({2} if args.parts - {"latency"} else set()))
    return args


def main() -> int:
    args = parse_args()
    console = Console(stderr=True, width=130)
    if os.geteuid() != 0 or shutil.which("iperf3") is None:
        console.print("needs root and iperf3 (the lab: network namespaces)")
        return 2
    started, code = time.perf_counter(), code_state()
    report: dict[str, Any] = {
        "benchmark": "live inline: latency, throughput and continuity through a deployed "
        "chain in a lab's path",
        "machine": machine(iperf3=_version(["iperf3", "--version"])),
        "code": code,
        "settings": {
            "ship": "whole",
            "partitions": PARTITIONS,
            "instances_per_function": 1,
            "udp_payload_bytes": 200,
            "capture_linger_ms": CAPTURE_LINGER_MS,
            "quick": args.quick,
            "parts": sorted(args.parts),
            "seconds_per_level": args.seconds,
            "flood_pps": args.flood_pps,
            "flood_seconds": args.flood_seconds,
            "hop_quantiles": "linear within snf_hop_latency_seconds buckets (1, 2.5, 5, 10, 15, "
            "20, 25, 35, 50, 100, 250 ms...), as Prometheus' histogram_quantile",
            "sink_quantiles": "upper edge of a 4 %-wide bin (snf.egress.latency): p99 may "
            "exceed max",
        },
        "delays_by_design_ms": {
            "capture_ring_block_timeout": RING_TIMEOUT_MS,
            "capture_partial_batch_pacing": CAPTURE_LINGER_MS,  # under load only
            "capture_producer_linger": 0,  # snf capture: BatchPublisher(linger_ms=0)
            "worker_producer_linger": 0,  # Faust's producer_linger default
            "worker_fetch_max_wait": 200,  # an empty fetch's wait; data ends it at once
        },
        "chains": {},
    }
    with broker(args.brokers) as bootstrap, tempfile.TemporaryDirectory(prefix="snf-li-") as tmp:
        os.environ["SNF_BROKERS"] = bootstrap  # the rig's deploy, capture and sink
        lab = fresh_lab(args.lab, console)
        sender, receiver_script = write_scripts(Path(tmp))
        receiver = Receiver(lab, receiver_script, Path(tmp) / "receiver.json")
        bench = Bench(lab, receiver, sender, Path(tmp), bootstrap, console, args.quick)
        bench.tries, bench.max_share = (1 if args.quick else args.tries), args.max_disturbance
        try:
            receiver.start()
            for n in args.chain_list:
                report["chains"][str(n)] = run_chain(bench, args, n)
            if "throughput" in args.parts:
                report["replay"] = replay_rates(bench, args.replay_packets)
        finally:
            receiver.stop()
            lab.down()
    report["target"] = verdicts(report["chains"])
    write_report(report, code, started, args.out)
    show(console, report)
    console.print(f"wrote {args.out} ({report['seconds']} s)")
    return 0


def _version(argv: list[str]) -> str:
    import subprocess

    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout.splitlines() or [""])[0]


if __name__ == "__main__":
    sys.exit(main())
