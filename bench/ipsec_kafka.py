"""The Kafka half of bench/ipsec.py: encrypt and decrypt over Kafka beside the ceiling.

The matrix: every cipher x IP packet size x function (encrypt, decrypt), on one
broker (started once, or the running one). For each combination, a capture
and a pipeline of one ipsec function (one SA of that cipher) are written to a
temporary directory: encrypt (outbound) gets `--packets` IP packets of that
size (8 UDP flows from 10.1.0.0/16 to 10.2.0.0/16), decrypt (inbound) the
same packets sealed into ESP by the peer's side of that SA (snf's
EspTransform). The pipeline runs as `snf run` does (snf.harness.oneshot),
over Kafka and `--local`, then the pass-through ceiling
(kafka_ceiling.measure_ceiling, one hop, snf's clients) moves the same
capture's messages on the same broker; ratio_to_ceiling = Kafka pps / ceiling
pps. While the Kafka run lasts, the worker's /metrics are scraped every 0.2 s
(its port from stats.json, or before that from /proc); the last scrape is
kept, and `complete` says whether it had seen every packet. A failed
combination records its error; the others still run.

    {"packets": N, "flows": 8,
     "runs": {cipher: {"64": {"encrypt": {local, kafka, ceiling, ratio_to_ceiling},
                              "decrypt": {...}}, ...}}}
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
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
Keys = Callable[[str], bytes]  # cipher -> the SA's key material


def sealed(frames: list[bytes], cipher: str, key: bytes) -> list[bytes]:
    """`frames` as gateway A sends them: ESP from A to B, numbers from 1."""
    esp = EspTransform(cipher, key, SPI)
    a, b = socket.inet_aton(GATEWAY_A), socket.inet_aton(GATEWAY_B)
    out = []
    for seq, frame in enumerate(frames, 1):
        payload = esp.seal(seq, 4, frame[14:])
        out.append(frame[:14] + outer_header(4, a, b, len(payload), 0, seq) + payload)
    return out


def write_inputs(
    folder: Path, function: str, cipher: str, clear: list[bytes], key: bytes
) -> tuple[Path, Path]:
    """(pipeline, capture) of the Kafka run of `function` (encrypt, decrypt) with one
    SA of `cipher`, in `folder`: `clear` as they are (encrypt) or sealed (decrypt)."""
    key_file = folder / "sa.hex"
    key_file.write_text(key.hex() + "\n")
    pipeline = folder / f"{function}.yaml"
    direction, sa, local, peer, mine, theirs = SIDES[function]
    pipeline.write_text(
        PIPELINE.format(
            function=function, direction=direction, sa=sa, spi=SPI, local=local, peer=peer,
            cipher=cipher, key=key_file, mine=mine, theirs=theirs,
        )
    )  # fmt: skip
    capture = folder / f"{function}.pcap"
    with capture.open("wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB, nano=True)
        packets = clear if function == "encrypt" else sealed(clear, cipher, key)
        for n, frame in enumerate(packets):
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
    args: argparse.Namespace,
    console: Console,
    frames: Frames,
    keys: Keys,
    ciphers: Sequence[str],
    sizes: Sequence[int],
) -> dict[str, Any]:
    """Per cipher, size and function (encrypt, decrypt): --local, Kafka and the
    ceiling on one broker, or the error that stopped that combination. `frames`
    builds the clear Ethernet frames, `keys(cipher)` is an SA's key material."""
    out: dict[str, Any] = {"packets": args.packets, "flows": FLOWS, "runs": {}}
    total, n = len(ciphers) * len(sizes) * len(SIDES), 0
    try:
        with broker(args.brokers) as bootstrap:
            for size in sizes:
                clear = frames(size, args.packets, FLOWS)  # once a size, for every cipher
                for cipher, function in itertools.product(ciphers, SIDES):
                    n += 1
                    name = f"kafka {n}/{total}: {cipher} {size} B {function}"
                    console.print(f"{name}, {args.packets:,} packets", highlight=False)
                    t0 = time.monotonic()
                    try:
                        key = keys(cipher)
                        run = _measure(function, cipher, clear, key, args, bootstrap, n == 1)
                        took = f"{time.monotonic() - t0:.0f} s"
                        console.print(f"{name}: {_summary(run)} ({took})", highlight=False)
                    except Exception as exc:  # RunError, DeployError, CeilingError...
                        console.print(f"[red]{name} failed:[/] {exc}", highlight=False)
                        run = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                    out["runs"].setdefault(cipher, {}).setdefault(str(size), {})[function] = run
    except Exception as exc:  # no broker answers, or none could be started
        console.print(f"[red]kafka failed:[/] {exc}", highlight=False)
        out["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    return out


def _summary(run: dict[str, Any]) -> str:
    return (
        f"{run['kafka']['pps']:,} pps, ceiling {run['ceiling']['pps']:,} "
        f"(ratio {run['ratio_to_ceiling']}), --local {run['local']['pps']:,}"
    )


def _measure(
    function: str,
    cipher: str,
    clear: list[bytes],
    key: bytes,
    args: argparse.Namespace,
    bootstrap: str,
    warm_up: bool,
) -> dict[str, Any]:
    """One combination; `warm_up` first (the matrix's first run on the broker)."""
    quiet = {"repeats": 1, "tries": args.tries, "max_share": args.max_disturbance, "patience": 10}
    with tempfile.TemporaryDirectory(prefix="snf-bench-ipsec-") as tmp:
        folder = Path(tmp)
        pipeline, capture = write_inputs(folder, function, cipher, clear, key)
        keyers = plan_pipeline(load_pipeline(pipeline)).ingress_hop.keyers
        shape = ([capture], 1, 512, 1, "snf", 1)
        ceiling = partial(measure_ceiling, *shape, brokers=bootstrap, keyers=keyers)
        if warm_up:  # a fresh broker's JVM is slower until its code is compiled
            ceiling()
        run = partial(run_once, pipeline, capture, brokers=bootstrap, folder=folder)
        out = {"local": median_run(partial(run, True), **quiet)}
        out["kafka"] = median_run(partial(run, False), **quiet)
        out["ceiling"] = median_run(ceiling, **quiet)
    out["ratio_to_ceiling"] = round(out["kafka"]["pps"] / out["ceiling"]["pps"], 3)
    return out
