"""The Kafka half of bench/ipsec.py: encrypt and decrypt over Kafka beside the ceiling.

For each direction, a capture and a pipeline of one ipsec function (one SA,
aes-gcm-128) are written to a temporary directory: encrypt (outbound) gets
`--packets` 512-byte IP packets (8 UDP flows from 10.1.0.0/16 to
10.2.0.0/16), decrypt (inbound) the same packets sealed into ESP by the
peer's side of that SA (snf's EspTransform). The pipeline runs as
`snf run` does (snf.harness.oneshot), over Kafka and `--local`, then the
pass-through ceiling (kafka_ceiling.measure_ceiling, one hop, snf's clients)
moves the same capture's messages on the same broker. While the Kafka run
lasts, the worker's /metrics are scraped every 0.2 s (its port from stats.json,
or before that from /proc); the last scrape is kept, and `complete` says
whether it had seen every packet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import dpkt
from kafka_ceiling import broker, measure_ceiling
from loadwatch import LoadWatch, median_run
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from snf.functions.ipsec.esp import EspTransform
from snf.functions.ipsec.tunnel import outer_header
from snf.harness.oneshot import RunOptions, run_pipeline
from snf.ingress.replay import ReplayOptions
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import EGRESS
from snf.pipeline.routing import plan_pipeline
from snf.runtime.worker.files import STATS_FILE

__all__ = ["measure_kafka"]

CIPHER = "aes-gcm-128"
SIZE = 512
FLOWS = 8
SPI = 0x2001
GATEWAY_A, GATEWAY_B = "192.0.2.1", "198.51.100.2"
PIPELINE = """\
name: ipsecbench
partitions: 1
functions:
  - name: {function}
    function: ipsec
    config:
      direction: {direction}
      sas:
        - {{name: sa, direction: {sa}, spi: {spi}, local: {local}, peer: {peer},
           cipher: {cipher}, key_file: {key},
           selectors: [{{local: {mine}, remote: {theirs}}}]}}
"""
SIDES = {  # function: (direction, SA direction, local, peer, our LAN, theirs)
    "encrypt": ("outbound", "out", GATEWAY_A, GATEWAY_B, "10.1.0.0/16", "10.2.0.0/16"),
    "decrypt": ("inbound", "in", GATEWAY_B, GATEWAY_A, "10.2.0.0/16", "10.1.0.0/16"),
}


Frames = Callable[[int, int, int], list[bytes]]  # (IP packet size, count, flows) -> frames


def sealed(frames: list[bytes], key: bytes) -> list[bytes]:
    """`frames` as gateway A sends them: ESP from A to B, numbers from 1."""
    esp = EspTransform(CIPHER, key, SPI)
    a, b = socket.inet_aton(GATEWAY_A), socket.inet_aton(GATEWAY_B)
    out = []
    for seq, frame in enumerate(frames, 1):
        payload = esp.seal(seq, 4, frame[14:])
        out.append(frame[:14] + outer_header(4, a, b, len(payload), 0, seq) + payload)
    return out


def write_inputs(
    folder: Path, function: str, packets: int, frames: Frames, key: bytes
) -> tuple[Path, Path]:
    """(pipeline, capture) of the Kafka run of `function` (encrypt, decrypt), in `folder`."""
    key_file = folder / "sa.hex"
    key_file.write_text(key.hex() + "\n")
    pipeline = folder / f"{function}.yaml"
    direction, sa, local, peer, mine, theirs = SIDES[function]
    pipeline.write_text(
        PIPELINE.format(
            function=function, direction=direction, sa=sa, spi=SPI, local=local, peer=peer,
            cipher=CIPHER, key=key_file, mine=mine, theirs=theirs,
        )
    )  # fmt: skip
    capture = folder / f"{function}.pcap"
    clear = frames(SIZE, packets, FLOWS)
    with capture.open("wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB, nano=True)
        for n, frame in enumerate(clear if function == "encrypt" else sealed(clear, key)):
            writer.writepkt(frame, ts=1_700_000_000 + n * 20e-6)
    return pipeline, capture


class MetricsScraper:
    """Scrape the workers of a run directory until stopped; keep the last answer."""

    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        self.last: dict[str, float] = {}
        self.scrapes = 0
        self.ports: dict[Path, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MetricsScraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(OSError, ValueError):
                self._scrape()

    def _scrape(self) -> None:
        for datadir in [d for d in self.rundir.glob("workers/*") if d.is_dir()]:  # one function
            port = self.ports.get(datadir) or health_port(datadir)
            if port is None:
                continue
            self.ports[datadir] = port
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=0.5) as answer:
                self.last = samples(answer.read().decode())
            self.scrapes += 1


def health_port(datadir: Path) -> int | None:
    """Where the worker of `datadir` serves /metrics: its stats.json says so once
    written (every 2 s), before that its only listening TCP socket (Linux /proc)."""
    stats = datadir / STATS_FILE
    if stats.exists():
        return json.loads(stats.read_text()).get("health_port")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            if "worker" in args and f"{datadir}" in args and "--datadir" in args:
                fds = Path(f"/proc/{pid}/fd").iterdir()
                sockets = {
                    os.readlink(fd)[8:-1] for fd in fds if os.readlink(fd).startswith("socket:")
                }
                for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
                    f = line.split()
                    if f[3] == "0A" and f[9] in sockets:  # LISTEN
                        return int(f[1].rsplit(":", 1)[1], 16)
    return None


def samples(text: str) -> dict[str, float]:
    """The figures this benchmark reports, from one /metrics answer."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "snf_packets_in_total":
                out["packets_in"] = s.value
            elif s.name == "snf_function_metric_total":
                out[s.labels["metric"]] = s.value
            elif s.name in ("snf_stage_seconds_sum", "snf_stage_seconds_count"):
                out[f"stage_{s.labels['stage']}_{s.name.rsplit('_', 1)[1]}"] = s.value
    return out


def worker_metrics(last: dict[str, float], packets: int, scrapes: int) -> dict[str, Any]:
    stages = {}
    for key in [k for k in last if k.startswith("stage_") and k.endswith("_count")]:
        stage, count = key[6:-6], last[key]
        total = last.get(f"stage_{stage}_sum", 0.0)
        stages[stage] = {
            "messages": int(count),
            "seconds": round(total, 4),
            "mean_ms": round(1000 * total / count, 3) if count else None,
        }
    return {
        "scrapes": scrapes,
        "complete": last.get("packets_in") == packets,
        "packets_in": int(last.get("packets_in", 0)),
        "encrypted": int(last.get("encrypted", 0)),
        "decrypted": int(last.get("decrypted", 0)),
        "seq_reserved": int(last.get("seq_reserved", 0)),
        "stages": stages,
    }


def timed_run(
    pipeline: Path, capture: Path, local: bool, brokers: str, rundir: Path
) -> tuple[Any, dict[str, Any], MetricsScraper]:
    """One `snf run` (or --local) of the pipeline in batches of 512, watched for
    disturbance: its result, the common figures, and the worker's last /metrics."""
    replay = ReplayOptions(max_packets=512, progress=False)
    opts = RunOptions(local=local, brokers=brokers, timeout=120, replay=replay, rundir=rundir)
    scraper = MetricsScraper(rundir)
    with LoadWatch() as watch, scraper if not local else contextlib.nullcontext():
        t0 = time.perf_counter()
        result = run_pipeline(pipeline, [capture], opts, Console(quiet=True))
        wall = time.perf_counter() - t0
    out = {
        "mode": result.mode,
        "packets": result.replay.packets,
        "messages": result.replay.batches,
        "processing_seconds": round(result.processing_seconds, 3),
        "pps": round(result.processing_pps),
        "end_to_end_seconds": round(wall, 3),
        "disturbance": watch.report(),
    }
    return result, out, scraper


def run_once(pipeline: Path, capture: Path, local: bool, brokers: str, folder: Path) -> dict:
    """One `snf run` (or --local) of the pipeline, watched for disturbance."""
    rundir = folder / f"run-{time.monotonic_ns()}"
    result, out, scraper = timed_run(pipeline, capture, local, brokers, rundir)
    out["egress"] = len(result.collector.packets.get(EGRESS, {}))
    if not local:
        out["worker_metrics"] = worker_metrics(scraper.last, out["packets"], scraper.scrapes)
    return out


def measure_kafka(
    args: argparse.Namespace, console: Console, frames: Frames, key: bytes
) -> dict[str, Any]:
    """Per direction (encrypt, decrypt): --local, Kafka and the ceiling, or the error
    that stopped them. `frames` builds the clear Ethernet frames, `key` is the SA's
    key material."""
    out: dict[str, Any] = {"cipher": CIPHER, "packet_bytes": SIZE, "flows": FLOWS}
    out["packets"] = args.packets
    for function in SIDES:
        try:
            out[function] = _measure(function, args, console, frames, key)
        except Exception as exc:  # a failed run (RunError, DeployError, CeilingError...)
            console.print(f"[red]kafka {function} failed:[/] {exc}")
            out[function] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    return out


def _measure(
    function: str, args: argparse.Namespace, console: Console, frames: Frames, key: bytes
) -> dict[str, Any]:
    quiet = {"repeats": 1, "tries": args.tries, "max_share": args.max_disturbance, "patience": 10}
    with tempfile.TemporaryDirectory(prefix="snf-bench-ipsec-") as tmp:
        folder = Path(tmp)
        pipeline, capture = write_inputs(folder, function, args.packets, frames, key)
        keyers = plan_pipeline(load_pipeline(pipeline)).ingress_hop.keyers
        with broker(args.brokers) as bootstrap:
            console.print(f"kafka {function}: {args.packets:,} packets of {SIZE} bytes")
            shape = ([capture], 1, 512, 1, "snf", 1)
            ceiling = partial(measure_ceiling, *shape, brokers=bootstrap, keyers=keyers)
            ceiling()  # warm-up: a fresh broker's JVM is slower until its code is compiled
            run = partial(run_once, pipeline, capture, brokers=bootstrap, folder=folder)
            out = {"local": median_run(partial(run, True), **quiet)}
            out["kafka"] = median_run(partial(run, False), **quiet)
            out["ceiling"] = median_run(ceiling, **quiet)
    out["ratio_to_ceiling"] = round(out["kafka"]["pps"] / out["ceiling"]["pps"], 3)
    return out
