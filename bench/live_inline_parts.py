"""The measurements of bench/live_inline.py, each on a deployed chain in a lab's path.

latency      capacity (a flood, then the delivered rate), then UDP at shares of
             it; per level the sink's capture-to-transmit histogram, the
             workers' /metrics deltas and every process's CPU.
throughput   iperf3 TCP and UDP through the chain, and the same chain replaying
             a capture of the same traffic (`snf run`, snf.harness).
(continuity: bench/live_inline_continuity.py)
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
from live_inline_tools import (
    PAYLOAD,
    Receiver,
    Watch,
    Workers,
    chain_text,
    cpu_cores,
    cpu_seconds,
    send_udp,
    wait_quiet,
    worker_delta,
)
from rich.console import Console

from snf.kafka import cluster

__all__ = [
    "Bench",
    "capacity",
    "ensure_sink",
    "latency_levels",
    "replay_rates",
    "restart_capture",
    "throughput",
]

CAPTURE_LINGER_MS = 20  # snf capture's default --linger-ms


@dataclass
class Bench:
    lab: Any
    receiver: Receiver
    sender: Path  # the sender script
    workdir: Path
    brokers: str
    console: Console
    quick: bool
    tries: int = 2  # runs of a disturbed level at most
    max_share: float = 0.1  # others' share of the CPUs that makes a level disturbed


# -- the sink and the processes ----------------------------------------------------------


def fresh_sink(rig: Any) -> None:
    """A new sink: it reads from the topics' end, so its histogram is this level's alone."""
    if "sink" in rig.procs:
        rig.stop_sink()
    rig.start_sink(tap=False)


def ensure_sink(rig: Any) -> None:
    if "sink" not in rig.procs:
        rig.start_sink(tap=False)


def restart_capture(rig: Any, linger_ms: int) -> dict[str, Any]:
    """The capture agent again, with another --linger-ms; its summary until now."""
    summary = rig.stop_capture()
    # InlineRig.start_capture takes no options: the same command, one flag more.
    rig._start("capture", "--no-progress", "--linger-ms", str(linger_ms),
               "--json", str(rig.workdir / "capture.json"))  # fmt: skip
    time.sleep(1.0)  # its rings are open before traffic counts
    return summary


def processes(rig: Any, workers: Workers) -> dict[str, int]:
    pids = {f"{f}:{i}": pid for f, ps in workers.pids.items() for i, pid in enumerate(ps)}
    pids |= {"capture": rig.procs["capture"].pid, "sink": rig.procs["sink"].pid}
    info = cluster.recorded()
    for n in info.nodes if info else ():
        if n.pid:
            pids[f"broker:{n.node_id}" if len(info.nodes) > 1 else "broker"] = n.pid
    return pids


# -- latency -----------------------------------------------------------------------------


def load(bench: Bench, rig: Any, workers: Workers, rate: float, seconds: float) -> dict:
    """UDP at `rate` for `seconds` through a fresh sink; everything it cost and took."""
    fresh_sink(rig)
    pids = processes(rig, workers)
    before, cpu0 = workers.scrape(), {n: cpu_seconds(p) for n, p in pids.items()}
    r0, drops0 = bench.receiver.count(), bench.receiver.buffer_drops()
    t0, first = time.monotonic(), None
    with Watch() as watch:
        sender = send_udp(bench.lab, bench.sender, rate, seconds)
        while sender.poll() is None:
            time.sleep(0.05)
            if first is None and bench.receiver.count() > r0:
                first = time.time()  # the receiver's clock: wall time, one host
        sent = json.loads(sender.communicate(timeout=30)[0])
        got = bench.receiver.wait_drained(r0 + sent["sent"])
    wall = time.monotonic() - t0
    after = workers.scrape()
    cpu = cpu_cores(cpu0, pids, wall)
    sink = rig.stop_sink()
    received = got["count"] - r0
    span = (got["last"] - first) if first and got["last"] else None
    return {
        "target_pps": round(rate, 1),
        "sender": sent,
        "received": received,
        "lost": sent["sent"] - received,  # never at the receiver (or not yet, after 3 s idle)
        "receiver_buffer_drops": bench.receiver.buffer_drops() - drops0,
        "delivered_pps": round(received / span, 1) if span else None,
        "latency_ms": sink["transmit"]["latency"],
        "sink_egress": sink.get("egress"),
        "workers": {f: worker_delta(before[f], after[f], wall) for f in after},
        "cpu_cores": cpu,
        "seconds": round(wall, 2),
        "disturbance": watch.report(),
    }


def quiet_load(bench: Bench, rig: Any, workers: Workers, rate: float, seconds: float) -> dict:
    """`load` after a quiet second, again (up to bench.tries) when others took more than
    bench.max_share of the CPUs while it ran; the least disturbed run."""
    runs: list[dict[str, Any]] = []
    for _ in range(max(bench.tries, 1)):
        waited = wait_quiet(bench.max_share, patience=30)
        runs.append(load(bench, rig, workers, rate, seconds))
        runs[-1]["disturbance"]["waited_for_quiet_s"] = waited
        if runs[-1]["disturbance"]["others_share"] <= bench.max_share:
            break
        bench.console.print(f"    disturbed: {runs[-1]['disturbance']}", highlight=False)
    best = min(runs, key=lambda r: r["disturbance"]["others_share"])
    if len(runs) > 1:
        best["attempts_others_share"] = [r["disturbance"]["others_share"] for r in runs]
    return best


def capacity(bench: Bench, rig: Any, workers: Workers, rate: float, seconds: float) -> dict:
    """A flood at `rate` for `seconds`: the chain's delivered rate while it drains is its
    capacity (a backlog from the first packet on: never idle until the end)."""
    bench.console.print(f"  capacity: {rate:,.0f} pkt/s for {seconds:.0f} s")
    out = quiet_load(bench, rig, workers, rate, seconds)
    out["capacity_pps"] = out["delivered_pps"]
    # Only a chain that fell behind the flood shows its capacity.
    out["saturated"] = bool(out["delivered_pps"] and out["delivered_pps"] < 0.9 * rate)
    bench.console.print(f"    delivered {out['delivered_pps']} pkt/s, lost {out['lost']}")
    return out


def per_hop(latency: dict[str, Any], hops: int) -> dict[str, float | None]:
    return {
        k: None if latency.get(k) is None else round(latency[k] / hops, 2)
        for k in ("p50_ms", "p99_ms", "max_ms")
    }


def breakdown(level: dict[str, Any], hops: int) -> dict[str, Any]:
    """Where a level's median went: the workers' own stage time per message, their hop
    latency (Kafka timestamp to outputs sent: linger, broker, fetch, queue, stages),
    and the rest of the chain's median (ring wait, last hop to the sink, transmit)."""
    workers = level["workers"].values()
    stages = round(sum(w["stage_total_ms"] for w in workers), 2)
    hop_p50 = [w["hop_latency_ms"]["p50_ms"] for w in workers]
    hop_sum = round(sum(h for h in hop_p50 if h is not None), 2)
    chain = level["latency_ms"].get("p50_ms")
    return {
        "kafka_hops": hops,
        "stage_ms_per_message_all_functions": stages,
        "worker_hop_p50_ms_sum": hop_sum,
        "queue_and_transit_ms": round(hop_sum - stages, 2),
        "outside_workers_ms": None if chain is None else round(chain - hop_sum, 2),
        "capture_messages_per_s": max((w["messages_per_s"] or 0) for w in workers),
    }


def latency_levels(
    bench: Bench, rig: Any, workers: Workers, functions: int, shares: list[float], seconds: float
) -> list[dict[str, Any]]:
    levels = []
    for share, rate in shares:
        name = f"{share:.0%} load" if share else "quiet"
        bench.console.print(f"  {name}: {rate:,.0f} pkt/s for {seconds:.0f} s")
        level = {"share": share, **quiet_load(bench, rig, workers, rate, seconds)}
        lat = level["latency_ms"]
        bench.console.print(
            f"    p50 {lat['p50_ms']} p99 {lat['p99_ms']} max {lat['max_ms']} ms, "
            f"lost {level['lost']}, cpu {level['cpu_cores']}",
            highlight=False,
        )
        level["per_hop_ms"] = per_hop(level["latency_ms"], functions + 1)
        level["breakdown"] = breakdown(level, functions + 1)
        levels.append(level)
    return levels


# -- throughput --------------------------------------------------------------------------


def iperf(bench: Bench, workers: Workers, args: list[str], seconds: float) -> dict[str, Any]:
    """One iperf3 client run through the chain: its figures and the chain's packets/s
    (the first function's packets in, both directions)."""
    before = workers.scrape()
    t0 = time.monotonic()
    with Watch() as watch:
        argv = ["iperf3", "-c", bench.lab.server_ip, "-t", str(seconds), "-J", *args]
        done = bench.lab.run("client", argv, timeout=seconds + 90)
    wall = time.monotonic() - t0
    after = workers.scrape()
    report = json.loads(done.stdout or "{}")
    end = report.get("end", {})
    first = next(iter(after))
    out: dict[str, Any] = {
        "args": args,
        "exit": done.returncode,
        "error": report.get("error"),
        "chain_pps": round((after[first]["packets"] - before[first].get("packets", 0)) / wall),
        "disturbance": watch.report(),
    }
    if "-u" in args:
        s = end.get("sum", {})
        secs = s.get("seconds") or seconds
        out |= {
            "mbps": round(s.get("bits_per_second", 0) / 1e6, 2),
            "datagrams": s.get("packets"),
            "datagrams_per_s": round((s.get("packets") or 0) / secs),
            "lost": s.get("lost_packets"),
            "loss_percent": round(s.get("lost_percent") or 0.0, 2),
            "jitter_ms": round(s.get("jitter_ms") or 0.0, 3),
        }
    else:
        sent, got = end.get("sum_sent", {}), end.get("sum_received", {})
        mss = report.get("start", {}).get("tcp_mss_default") or 1448
        secs = got.get("seconds") or seconds
        out |= {
            "mbps": round(got.get("bits_per_second", 0) / 1e6, 2),
            "bytes": got.get("bytes"),
            "segments_per_s": round((got.get("bytes") or 0) / mss / secs),
            "retransmits": sent.get("retransmits"),
            "mss": mss,
        }
    return out


def throughput(
    bench: Bench, rig: Any, workers: Workers, udp_mbps: list[float], long_linger_ms: int
) -> dict:
    """iperf3 TCP, UDP at each rate, then TCP again with the capture's --linger-ms
    `long_linger_ms` (both directions' messages: the worker's message rate halves)."""
    ensure_sink(rig)
    seconds = 3 if bench.quick else 10
    bench.console.print(f"  iperf3 TCP {seconds} s")
    out: dict[str, Any] = {"tcp": iperf(bench, workers, [], seconds), "udp": []}
    for mbps in udp_mbps:
        bench.console.print(f"  iperf3 UDP {mbps:g} Mbit/s, {seconds // 2} s")
        out["udp"].append(iperf(bench, workers, ["-u", "-b", f"{mbps:g}M"], seconds // 2))
        time.sleep(2.0)  # what the chain still held has left before the next rate
    if long_linger_ms:
        bench.console.print(f"  iperf3 TCP {seconds} s, capture --linger-ms {long_linger_ms}")
        restart_capture(rig, long_linger_ms)
        out[f"tcp_linger_{long_linger_ms}ms"] = iperf(bench, workers, [], seconds)
        restart_capture(rig, CAPTURE_LINGER_MS)
    return out


def frames(lab: Any, kind: str, count: int) -> list[bytes]:
    """Client -> server frames as the client sends them: UDP to the receiver (the
    latency test's datagrams) or one TCP stream of MSS-sized segments to 5201."""
    mac = {
        s: bytes.fromhex(getattr(lab, f"{s}_mac").replace(":", "")) for s in ("client", "server")
    }
    src, dst = socket.inet_aton(lab.client_ip), socket.inet_aton(lab.server_ip)
    out = []
    for n in range(count):
        if kind == "udp":
            l4: Any = dpkt.udp.UDP(sport=40000, dport=9999, data=bytes(PAYLOAD))
            l4.ulen = 8 + PAYLOAD
        else:
            flags = dpkt.tcp.TH_SYN if n == 0 else dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH
            body = b"" if n == 0 else bytes(1448)
            l4 = dpkt.tcp.TCP(sport=40001, dport=5201, seq=1 + 1448 * n, flags=flags, data=body)
        ip = dpkt.ip.IP(src=src, dst=dst, p=17 if kind == "udp" else 6, data=l4, id=n & 0xFFFF)
        ip.len = 20 + len(bytes(l4))
        eth = dpkt.ethernet.Ethernet(dst=mac["server"], src=mac["client"], data=ip)
        out.append(bytes(eth))
    return out


def replay_rates(bench: Bench, count: int) -> dict[str, Any]:
    """The 2-function chain (no egress section) replaying each capture, as `snf run` does."""
    from snf.harness.oneshot import RunOptions, run_pipeline
    from snf.ingress.replay import ReplayOptions

    pipeline = bench.workdir / "replay.yaml"
    pipeline.write_text(chain_text(2, "lbench-replay", bench.lab, inline=False))
    out: dict[str, Any] = {"pipeline": "fw -> nat, partitions 1, top speed, batches of 512"}
    for kind in ("udp", "tcp"):
        capture = bench.workdir / f"replay-{kind}.pcap"
        with capture.open("wb") as f:
            writer = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB, nano=True)
            for n, frame in enumerate(frames(bench.lab, kind, count)):
                writer.writepkt(frame, ts=1_700_000_000 + n * 1e-5)
        bench.console.print(f"  snf run: {count:,} {kind.upper()} frames")
        opts = RunOptions(brokers=bench.brokers, timeout=120, replay=ReplayOptions(progress=False))
        with Watch() as watch:
            result = run_pipeline(pipeline, [capture], opts, Console(quiet=True))
        size = len(frames(bench.lab, kind, 2)[1])
        out[kind] = {
            "packets": result.replay.packets,
            "frame_bytes": size,
            "messages": result.replay.batches,
            "processing_seconds": round(result.processing_seconds, 3),
            "pps": round(result.processing_pps),
            "mbps": round(result.processing_pps * size * 8 / 1e6, 2),
            "disturbance": watch.report(),
        }
    return out
