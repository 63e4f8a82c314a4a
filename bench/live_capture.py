"""Benchmark: live capture mechanisms (AF_PACKET TPACKET_V3 ring vs libpcap) and transmit.

    python bench/live_capture.py --out bench/results/live_capture.json [--seconds 2]
        [--pcapy-path /tmp/pcapvenv/lib] [--senders 1] [--repeats 3]

Needs root. A fresh network namespace (snfcap<pid>) holds one veth pair with
IPv6 and tx offload off; it is deleted at the end, even on failure. Every
process runs inside it (`ip netns exec`).

capture   sender processes (snf.live.transmit.Transmitter, pinned to CPU 0)
          blast UDP frames of SIZE bytes (64, 1400) into one end for
          --seconds; one capturing process (pinned to CPU 1) reads the other
          end and turns what it reads into CaptureChunks, as the capture agent
          needs them. Contenders: `ring` (snf.live.afpacket.RingCapture),
          `pcapy-ng next` (libpcap through pcapy-ng, one next() per packet) and
          `pcapy-ng batch` (its next_batch(): many packets per call). Figures:
          packets captured per CPU second of the capturing process (per core),
          captured per wall second, kernel drops, what was sent.
transmit  one sender process alone (no capture open): Transmitter.send
          packets/s per CPU second and per wall second. On a veth the
          receiving side's stack runs in the sender's system call, so this
          CPU includes the peer's receive path.

pcapy-ng is not a dependency: install its wheel somewhere else
(`pip install --target /tmp/pcapvenv/lib pcapy-ng`) and pass --pcapy-path;
without it the libpcap contenders are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

SIZES = (64, 1400)  # bytes of Ethernet frame, no FCS
SENDER_CPU, CAPTURE_CPU = 0, 1
MECHANISMS = ("ring", "pcapy-ng next", "pcapy-ng batch")
RING = {"block_size": 1 << 20, "blocks": 64, "block_timeout_ms": 2}
CHUNK = 4096  # packets per CaptureChunk for the per-packet libpcap contender
A, B = "snfcapa", "snfcapb"  # the veth pair, inside the namespace


def frames(size: int, count: int = 1024) -> list[bytes]:
    """UDP to port 9 (discard) from `count` source ports, `size` bytes each."""
    import dpkt

    out = []
    for n in range(count):
        udp = dpkt.udp.UDP(sport=10000 + n, dport=9, data=bytes(size - 42))
        ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02", p=17, data=udp)
        eth = dpkt.ethernet.Ethernet(dst=b"\x02\x00\x00\x00\x00\x02", src=b"\x02" + bytes(5))
        eth.data = ip
        out.append(bytes(eth))
        assert len(out[-1]) == size
    return out


# ---- children (inside the namespace) -------------------------------------


def child_send(size: int, seconds: float) -> dict[str, Any]:
    from snf.live.transmit import Transmitter

    batch = frames(size)
    with Transmitter(A) as tx:
        cpu0, t0 = time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            tx.send(batch)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        return {"sent": tx.sent, "failed": tx.failed, "cpu_s": cpu, "wall_s": wall}


class Stop:
    """SIGTERM from the parent: the senders are done, drain and report."""

    def __init__(self) -> None:
        self.now = False
        signal.signal(signal.SIGTERM, self.set)

    def set(self, *_: object) -> None:
        self.now = True


def _ring_reader() -> tuple[Any, Any, Any]:
    from snf.live.afpacket import RingCapture

    ring = RingCapture(B, **RING)

    def stats() -> tuple[int, int]:
        s = ring.stats()
        return s.received, s.dropped

    return lambda timeout: ring.read(timeout), stats, ring.close


def _pcapy_reader(batch: bool) -> tuple[Any, Any, Any]:
    import numpy as np
    import pcapy

    from snf.packet.capture_chunk import CaptureChunk
    from snf.packet.linktypes import LINKTYPE_ETHERNET

    p = pcapy.create(B)
    p.set_snaplen(65535)
    p.set_buffer_size(RING["block_size"] * RING["blocks"])
    p.set_timeout(RING["block_timeout_ms"])
    p.activate()
    p.setnonblock(1)  # blocking next() never returns on an idle link: we poll, as the ring does
    fd = p.getfd()

    def read_batch(timeout: float) -> CaptureChunk | None:
        data, meta = p.next_batch(CHUNK)
        if not len(meta) and select.select([fd], [], [], timeout)[0]:
            data, meta = p.next_batch(CHUNK)
        if not len(meta):
            return None
        m = np.frombuffer(meta, dtype=np.uint32).reshape(-1, 4).astype(np.int64)
        ts = m[:, 0] * 1_000_000_000 + m[:, 1] * 1000  # next_batch has no orig_len
        kinds = np.full(len(m), LINKTYPE_ETHERNET, dtype=np.int64)
        return CaptureChunk(data, m[:, 2], m[:, 3], m[:, 3].copy(), ts, kinds)

    def read_next(timeout: float) -> CaptureChunk | None:
        ts, lens, datas = [], [], []
        for n in range(CHUNK):
            hdr, data = p.next()
            if hdr is None and n == 0 and select.select([fd], [], [], timeout)[0]:
                hdr, data = p.next()
            if hdr is None:
                break
            sec, usec = hdr.getts()
            ts.append(sec * 1_000_000_000 + usec * 1000)
            lens.append(hdr.getlen())
            datas.append(data)
        return CaptureChunk.from_packets(ts, lens, datas, LINKTYPE_ETHERNET) if ts else None

    def stats() -> tuple[int, int]:
        received, dropped, _ = p.stats()
        return received, dropped

    return (read_batch if batch else read_next), stats, p.close


def child_capture(mechanism: str) -> dict[str, Any]:
    read, stats, close = (
        _ring_reader() if mechanism == "ring" else _pcapy_reader(mechanism.endswith("batch"))
    )
    stop = Stop()
    captured = nbytes = chunks = 0
    first = last = 0.0
    print("ready", flush=True)
    cpu0 = time.process_time()
    while True:
        chunk = read(0.05)
        if chunk is None:
            if stop.now:
                break
            continue
        last = time.perf_counter()
        first = first or last
        captured, chunks = captured + len(chunk), chunks + 1
        nbytes += int(chunk.cap_len.sum())
    cpu = time.process_time() - cpu0
    received, dropped = stats()
    close()
    return {
        "captured": captured,
        "bytes": nbytes,
        "chunks": chunks,
        "cpu_s": cpu,
        "wall_s": last - first,
        "kernel_received": received,
        "kernel_dropped": dropped,
    }


# ---- the parent --------------------------------------------------------------


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def make_namespace(ns: str) -> None:
    sh("ip", "netns", "add", ns)
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
    sh("ip", "-n", ns, "link", "add", A, "type", "veth", "peer", "name", B)
    for end in (A, B):
        sh("ip", "-n", ns, "link", "set", end, "up")
        sh("ip", "netns", "exec", ns, "ethtool", "-K", end, "tx", "off")


def spawn(args: argparse.Namespace, cpu: int, *child: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *args.pcapy_path]))
    cmd = ["ip", "netns", "exec", args.ns, "taskset", "-c", str(cpu % (os.cpu_count() or 1))]
    cmd += [sys.executable, __file__, "--child", *child]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=60)
    if proc.returncode:
        raise RuntimeError(f"{proc.args}: exit {proc.returncode}")
    return json.loads(out.splitlines()[-1])


def senders(args: argparse.Namespace, size: int) -> list[dict[str, Any]]:
    procs = [
        spawn(args, SENDER_CPU, "send", str(size), str(args.seconds)) for _ in range(args.senders)
    ]
    return [result(p) for p in procs]


def measure_capture(args: argparse.Namespace, mechanism: str, size: int) -> dict[str, Any]:
    from loadwatch import LoadWatch

    with LoadWatch() as watch:
        cap = spawn(args, CAPTURE_CPU, "capture", mechanism)
        assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
        sent = senders(args, size)
        time.sleep(0.2)  # the last blocks retire (block timeout) before the stop
        cap.send_signal(signal.SIGTERM)
        got = result(cap)
    offered = sum(s["sent"] for s in sent)
    send_wall = max(s["wall_s"] for s in sent)
    return {
        "pps": round(got["captured"] / max(got["cpu_s"], 1e-9)),  # per core
        "wall_pps": round(got["captured"] / max(got["wall_s"], 1e-9)),
        "sent_pps": round(offered / send_wall),
        "sent": offered,
        "send_failed": sum(s["failed"] for s in sent),
        "missed": offered - got["captured"],
        **got,
        "disturbance": watch.report(),
    }


def measure_transmit(args: argparse.Namespace, size: int) -> dict[str, Any]:
    from loadwatch import LoadWatch

    with LoadWatch() as watch:
        (got,) = [result(spawn(args, SENDER_CPU, "send", str(size), str(args.seconds)))]
    return {
        "pps": round(got["sent"] / max(got["cpu_s"], 1e-9)),  # per core
        "wall_pps": round(got["sent"] / got["wall_s"]),
        **got,
        "disturbance": watch.report(),
    }


def measure_all(args: argparse.Namespace, mechanisms: list[str]) -> dict[str, Any]:
    from loadwatch import median_run
    from rich.progress import Progress

    kw = {"repeats": args.repeats, "tries": args.tries, "max_share": args.max_disturbance}
    capture: dict[str, Any] = {m: {} for m in mechanisms}
    transmit: dict[str, Any] = {}
    with Progress(transient=True) as progress:
        task = progress.add_task("live capture", total=(len(mechanisms) + 1) * len(SIZES))
        for size in SIZES:
            for mechanism in mechanisms:
                run = median_run(partial(measure_capture, args, mechanism, size), **kw)
                capture[mechanism][str(size)] = run
                progress.advance(task)
            transmit[str(size)] = median_run(partial(measure_transmit, args, size), **kw)
            progress.advance(task)
    return {"capture": capture, "transmit": transmit}


def machine(args: argparse.Namespace) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if "model name" in ln), ""
    )
    from provenance import machine as machine_info

    info = machine_info(cpu=model)
    probe = "import pcapy, importlib.metadata as m; print(m.version('pcapy-ng'))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(args.pcapy_path))
    got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    info["pcapy_ng"] = got.stdout.strip() or None
    return info


def show(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="live capture on a veth pair (per core = per CPU second of the reader)")
    for col in ("mechanism", "bytes", "per core pps", "wall pps", "sent pps", "dropped", "missed"):
        table.add_column(col, justify="left" if col == "mechanism" else "right")
    for mechanism, by_size in report["capture"].items():
        for size, r in by_size.items():
            cells = (r["pps"], r["wall_pps"], r["sent_pps"], r["kernel_dropped"], r["missed"])
            table.add_row(mechanism, size, *(f"{c:,}" for c in cells))
    for size, r in report["transmit"].items():
        table.add_row("transmit (send)", size, f"{r['pps']:,}", f"{r['wall_pps']:,}", "", "", "")
    Console().print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/live_capture.json")
    ap.add_argument("--seconds", type=float, default=2.0, help="sending time per run")
    ap.add_argument("--senders", type=int, default=1, help="sending processes (all on CPU 0)")
    ap.add_argument("--pcapy-path", action="append", default=[], help="where pcapy-ng is")
    from loadwatch import add_disturbance_args

    add_disturbance_args(ap, repeats=3)
    args = ap.parse_args()
    if args.child:
        role, *rest = args.child
        if role == "send":
            print(json.dumps(child_send(int(rest[0]), float(rest[1]))))
        else:
            print(json.dumps(child_capture(rest[0])))
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    from provenance import code_state, write_report

    if os.geteuid() != 0:
        sys.exit("live_capture needs root (network namespaces, AF_PACKET)")
    started, code = time.perf_counter(), code_state()
    report: dict[str, Any] = {"benchmark": "live_capture", "machine": machine(args), "code": code}
    mechanisms = list(MECHANISMS if report["machine"]["pcapy_ng"] else MECHANISMS[:1])
    report["settings"] = {
        "seconds": args.seconds,
        "senders": args.senders,
        "repeats": args.repeats,
        "ring": RING,
        "pinned": {"senders": SENDER_CPU, "capture": CAPTURE_CPU},
        "frames": "Ethernet/IPv4/UDP to port 9, 1,024 source ports",
    }
    args.ns = f"snfcap{os.getpid()}"
    try:
        make_namespace(args.ns)
        report |= measure_all(args, mechanisms)
    finally:
        subprocess.run(["ip", "netns", "del", args.ns], check=False, capture_output=True)
    write_report(report, code, started, args.out)
    show(report)


if __name__ == "__main__":
    main()
