"""The continuity part of bench/live_inline.py: a TCP connection through kills.

Two iperf3 TCP runs (0.5 s intervals) through the deployed fw -> nat while
`snf chaos` kills fw and nat in turn:

single  two kills 20 s apart (fw, then nat): what one kill costs a connection.
storm   --kills kills planned evenly over --continuity-seconds (20 in 120 s).

Between them, both workers run for a minute: the supervisor forgives earlier
crashes then (Timings.healthy_after), so the storm starts from no backoff.
From iperf3's intervals: stalls (runs of intervals with ~0 bytes), the one
after each kill, whether the connection lived on after the last kill; from
chaos' report, how soon each worker ran again; from the workers' logs, how
soon the function's output resumed.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from live_inline_parts import Bench, ensure_sink
from live_inline_tools import IPERF_LONG, Watch

from snf.kafka.settings import snf_home

__all__ = ["continuity", "first_outputs", "stalls", "tcp_state", "through_kills", "wait_resumed"]

CHAOS_LEAD_S = 5.0  # the first kill, after the connection has ramped up
TAIL_S = 15.0  # traffic after the last worker is back: the connection carries on
MAX_S = 1200  # iperf3's -t: it is interrupted once the kills are done
HEALTHY_S = 62.0  # > the supervisor's healthy_after (60 s): earlier kills forgiven
FIRST_OUTPUT = re.compile(r"\[(\d+)\] \[INFO\] (\S+): first output of partition \d+ at ([\d.]+)")
TCP_INFO = re.compile(r"\b(bytes_acked|rto|backoff):(\d+)")
RESUME_MAX_S = 150.0  # TCP's longest retransmission interval (120 s), and a takeover
RESUMED_BYTES = 64 << 10  # acknowledged after the kills: the connection moves again
INTERRUPTED = "interrupt - the client has terminated"  # iperf3's error after SIGINT


def continuity(bench: Bench, rig: Any, kills: int, seconds: int, seed: int) -> dict:
    """The single kills (not in quick mode), a minute of health, then the storm."""
    out: dict[str, Any] = {}
    if not bench.quick:
        out["single"] = through_kills(bench, rig, 2, 40, seed, "single")
        last = out["single"]["kills"][-1] if out["single"]["kills"] else {}
        since = out["single"]["seconds"] - last.get("fired_after", 0) - last.get("back_after", 0)
        bench.console.print(f"  both workers healthy for {HEALTHY_S:.0f} s")
        time.sleep(max(0.0, HEALTHY_S - since))
    out["storm"] = through_kills(bench, rig, kills, seconds, seed, "storm")
    return out


def through_kills(bench: Bench, rig: Any, kills: int, seconds: int, seed: int, tag: str) -> dict:
    """iperf3 TCP (0.5 s intervals) while `kills` kills alternate between fw and nat,
    planned evenly from CHAOS_LEAD_S to TAIL_S before `seconds`. The supervisor backs
    off the restart of a worker killed again within a minute (0.5 s, doubling to 30 s),
    so the kills may outlast `seconds`: iperf3 runs until TAIL_S after the last worker
    is back (at least `seconds`), then is interrupted (SIGINT: it reports what it has)."""
    from snf.cli.main import main

    ensure_sink(rig)
    spacing = (seconds - TAIL_S - CHAOS_LEAD_S) / max(kills - 1, 1)
    argv = ["chaos", rig.name, "--seed", str(seed)]
    for i in range(kills):
        argv += ["--kill", ("fw", "nat")[i % 2], "--at", f"{CHAOS_LEAD_S + i * spacing:.2f}s"]
    chaos_json = bench.workdir / f"chaos-{tag}.json"
    argv += ["--json", str(chaos_json)]
    bench.console.print(f"  iperf3 TCP >= {seconds} s, {kills} kills planned every {spacing:.1f} s")
    port = str(IPERF_LONG)
    # The lab's iperf3 server ends a test after 120 s without data: this one waits.
    server = bench.lab.exec(
        "server", ["iperf3", "-s", "-1", "-4", "-p", port, "--rcv-timeout", str(MAX_S * 1000)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)
    client = ["iperf3", "-c", bench.lab.server_ip, "-p", port, "-t", str(MAX_S), "-i", "0.5"]
    with Watch() as watch:
        iperf3 = bench.lab.exec("client", [*client, "-J"], stdout=subprocess.PIPE, text=True)
        launched, wall0 = time.monotonic(), time.time()
        # In this process, so that --at counts from a known moment (a `python -m snf`
        # would add its start-up); iperf3's clock starts once connected (~0.1 s later).
        chaos_exit = main(argv)
        chaos_s = time.monotonic() - launched
        tcp_at_end = tcp_state(bench.lab, port)
        resumed = wait_resumed(bench.lab, port, iperf3)
        time.sleep(max(0.0, max(launched + seconds, time.monotonic() + TAIL_S) - time.monotonic()))
        if iperf3.poll() is None:
            iperf3.send_signal(signal.SIGINT)
        stdout, _ = iperf3.communicate(timeout=60)
    if server.poll() is None:
        server.terminate()
        server.wait(timeout=10)
    report = json.loads(stdout or "{}")
    done = json.loads(chaos_json.read_text())["kills"] if chaos_json.exists() else []
    out = stalls(report, done)
    first_outputs(snf_home() / "deployments" / rig.name / "workers", done, wall0, out["per_kill"])
    out |= {
        "kills_planned": kills,
        "kill_spacing_planned_s": round(spacing, 2),
        "chaos_seconds": round(chaos_s, 1),
        "tcp_when_kills_done": tcp_at_end,
        "resumed_after_last_worker_back_s": resumed,
        "chaos_exit": chaos_exit,
        "iperf3_exit": iperf3.returncode,
        "iperf3_error": report.get("error"),
        "kills": done,
        "disturbance": watch.report(),
    }
    # Alive: iperf3 stopped by our interrupt only (a broken connection ends it
    # with another error, earlier), and bytes flowed once the kills were done.
    ended_by_us = report.get("error") in (None, INTERRUPTED)
    out["survived"] = bool(ended_by_us and resumed is not None and out["bytes_after_last_kill"])
    return out


def stalls(report: dict[str, Any], kills: list[dict[str, Any]]) -> dict:
    """Stalls (runs of intervals carrying under 1 % of the median interval's bytes)
    from iperf3's intervals; per kill, the longest stall that began after it and
    before the next kill (from one interval before: iperf3's clock starts when it
    is connected, the kills' at launch)."""
    intervals = [i["sum"] for i in report.get("intervals", [])]
    sizes = sorted(i["bytes"] for i in intervals) or [0]
    quiet = max(sizes[len(sizes) // 2] * 0.01, 1.0)
    runs: list[tuple[float, float]] = []  # (start, end) in seconds of the test
    for i in intervals:
        if i["bytes"] < quiet:
            if runs and abs(runs[-1][1] - i["start"]) < 1e-3:
                runs[-1] = (runs[-1][0], i["end"])
            else:
                runs.append((i["start"], i["end"]))
    fired = [k for k in kills if k.get("fired_after") is not None]
    per_kill = []
    for n, kill in enumerate(fired):
        at = kill["fired_after"]
        upto = fired[n + 1]["fired_after"] if n + 1 < len(fired) else float("inf")
        mine = sorted((r for r in runs if at - 0.5 <= r[0] < upto), key=lambda r: r[0] - r[1])
        per_kill.append({
            "function": kill["function"],
            "fired_at_s": at,
            "worker_back_after_s": kill.get("back_after"),
            "stall_s": round(mine[0][1] - mine[0][0], 2) if mine else 0.0,
        })  # fmt: skip
    last = fired[-1]["fired_after"] + (fired[-1].get("back_after") or 0.0) if fired else 0.0
    end = intervals[-1]["end"] if intervals else 0.0
    total = sum(i["bytes"] for i in intervals)
    return {
        "seconds": round(end, 1),
        "intervals": len(intervals),
        "longest_stall_s": round(max((e - s for s, e in runs), default=0.0), 2),
        "stalls": len(runs),
        "stalls_of_1s_or_more": sum(e - s >= 1.0 for s, e in runs),
        "stalled_s": round(sum(e - s for s, e in runs), 2),
        "mbps": round(total * 8 / end / 1e6, 2) if end else None,
        "bytes_after_last_kill": sum(i["bytes"] for i in intervals if i["start"] >= last),
        "tail_bytes": sum(i["bytes"] for i in intervals if i["start"] >= end - TAIL_S / 2),
        "per_kill": per_kill,
        "interval_bytes": [i["bytes"] for i in intervals],
    }


def tcp_state(lab: Any, port: str) -> dict[str, int]:
    """bytes_acked, rto (ms) and backoff of the client's busiest connection to `port`
    (`ss -ti`: the data connection; the control one carries a few hundred bytes)."""
    argv = ["ss", "-tinH", "state", "established", "dst", f"{lab.server_ip}:{port}"]
    text = lab.run("client", argv).stdout.decode()
    best: dict[str, int] = {"bytes_acked": 0}
    for line in text.splitlines():  # an address line, then an info line, per socket
        got = {k: int(v) for k, v in TCP_INFO.findall(line)}
        if got.get("bytes_acked", -1) >= best["bytes_acked"]:
            best = got
    return best


def wait_resumed(lab: Any, port: str, iperf3: Any) -> float | None:
    """Seconds until the connection's acknowledged bytes grew by RESUMED_BYTES (TCP
    in retransmission backoff waits up to 120 s between tries), None: not within
    RESUME_MAX_S or iperf3 ended (the connection broke)."""
    start, base = time.monotonic(), tcp_state(lab, port)["bytes_acked"]
    while time.monotonic() - start < RESUME_MAX_S and iperf3.poll() is None:
        if tcp_state(lab, port)["bytes_acked"] - base >= RESUMED_BYTES:
            return round(time.monotonic() - start, 1)
        time.sleep(0.5)
    return None


def first_outputs(
    logs: Path, kills: list[dict[str, Any]], wall0: float, per_kill: list[dict[str, Any]]
) -> None:
    """Per kill, seconds until the function's output resumed: the first "first output"
    a worker of it other than the victim logged after the kill (snf.runtime.worker
    logs one per partition and process). None: none before the next kill of it."""
    seen: dict[str, list[tuple[int, float]]] = {}
    for log in logs.glob("*.log"):
        for m in FIRST_OUTPUT.finditer(log.read_text(errors="replace")):
            seen.setdefault(m[2], []).append((int(m[1]), float(m[3])))
    for kill, row in zip(kills, per_kill, strict=False):
        at = wall0 + kill["fired_after"]
        later = [t for pid, t in seen.get(kill["function"], []) if pid != kill["pid"] and t > at]
        row["output_back_after_s"] = round(min(later) - at, 2) if later else None
