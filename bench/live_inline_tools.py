"""Tools of bench/live_inline.py: traffic, the chains, worker metrics, CPU.

- SENDER and RECEIVER are small scripts written to the work directory and run
  inside the lab's namespaces (`ip netns exec`): the sender paces UDP
  datagrams by absolute due times (a late wake-up sends what is due at once,
  never drifts), the receiver counts what arrives on one port and rewrites
  a status file every 0.1 s.
- `chain_text(n, ...)` is the pipeline of 1, 2 or 4 functions, inline in a lab.
- `Workers` scrapes the deployed workers' /metrics (URLs from
  `snf status NAME --json`) and turns two scrapes into per-function deltas:
  messages, packets, mean stage times, hop-latency quantiles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from loadwatch import LoadWatch
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "IPERF_LONG",
    "PARTITIONS",
    "PAYLOAD",
    "UDP_PORT",
    "Receiver",
    "Watch",
    "Workers",
    "bucket_quantile",
    "chain_text",
    "cpu_cores",
    "cpu_seconds",
    "deployed",
    "send_udp",
    "wait_quiet",
    "worker_delta",
    "write_scripts",
]

UDP_PORT = 9999  # the receiver's port in the server namespace
IPERF_LONG = 5202  # an iperf3 server of our own: no 120 s idle limit (continuity)
PAYLOAD = 200  # bytes of UDP payload per datagram of the latency test

SENDER = """\
import json, socket, sys, time
host, port, rate, seconds, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \\
    float(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, port))
payload = bytearray(size)
total, sent, worst, errors = int(rate * seconds), 0, 0.0, 0
t0 = time.perf_counter()
while sent < total:
    now = time.perf_counter()
    due = min(total, int((now - t0) * rate) + 1)  # absolute due times: no drift
    if sent < due:
        worst = max(worst, now - (t0 + sent / rate))
    while sent < due:
        payload[:8] = sent.to_bytes(8, "big")
        try:
            s.send(payload)
        except OSError:
            errors += 1
        sent += 1
    delay = t0 + sent / rate - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
print(json.dumps({"sent": sent, "seconds": round(time.perf_counter() - t0, 3),
                  "worst_late_ms": round(worst * 1e3, 3), "errors": errors,
                  "cpu_seconds": round(time.process_time(), 3)}))
"""

RECEIVER = """\
import json, os, signal, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE (root): past rmem_max
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(0.05)
out, count, first, last, stop = sys.argv[2], 0, None, None, []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
next_write = 0.0
while not stop:
    try:
        s.recv(65536)
        count += 1
        last = time.time()
        first = first or last
    except (socket.timeout, InterruptedError):
        pass
    if time.monotonic() >= next_write or stop:
        next_write = time.monotonic() + 0.1
        with open(out + ".tmp", "w") as f:
            json.dump({"count": count, "first": first, "last": last}, f)
        os.replace(out + ".tmp", out)
"""


def write_scripts(workdir: Path) -> tuple[Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    sender, receiver = workdir / "udp_sender.py", workdir / "udp_receiver.py"
    sender.write_text(SENDER)
    receiver.write_text(RECEIVER)
    return sender, receiver


def send_udp(lab: Any, script: Path, rate: float, seconds: float) -> subprocess.Popen[str]:
    """The paced sender in the client namespace (its JSON summary on stdout)."""
    argv = [sys.executable, str(script), lab.server_ip, str(UDP_PORT), f"{rate:.1f}"]
    return lab.exec(
        "client", [*argv, str(seconds), str(PAYLOAD)], stdout=subprocess.PIPE, text=True
    )


@dataclass
class Receiver:
    """The UDP receiver in the server namespace, read through its status file."""

    lab: Any
    script: Path
    status: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, str(self.script), str(UDP_PORT), str(self.status)]
        self.proc = self.lab.exec("server", argv)
        deadline = time.monotonic() + 10
        while not self.status.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the UDP receiver did not start (no status within 10 s)")
            time.sleep(0.05)

    def read(self) -> dict[str, Any]:
        return json.loads(self.status.read_text())

    def count(self) -> int:
        return int(self.read()["count"])

    def wait_drained(self, target: int, idle: float = 3.0, cap: float = 120.0) -> dict[str, Any]:
        """Wait until `target` datagrams arrived in all, or none came for `idle` s."""
        start = last_change = time.monotonic()
        seen = self.count()
        while seen < target and time.monotonic() - start < cap:
            time.sleep(0.1)
            now = self.count()
            if now != seen:
                seen, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > idle:
                break
        return self.read()

    def buffer_drops(self) -> int:
        """Datagrams the server namespace's kernel dropped for a full socket buffer."""
        snmp = self.lab.run("server", ["cat", "/proc/net/snmp"]).stdout.decode().splitlines()
        names, values = [line.split() for line in snmp if line.startswith("Udp:")][:2]
        return int(values[names.index("RcvbufErrors")])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


# -- the chains ------------------------------------------------------------------------

FIREWALL = """\
  - name: {name}
    function: firewall
    config:
      default: drop
      non_ip: allow
      rules:
        - {{action: allow, proto: udp, src: 10.10.1.0/24, dport: [{udp}, 5201]}}
        - {{action: allow, proto: tcp, src: 10.10.1.0/24, dport: [5201, {iperf_long}]}}
        - {{action: allow, proto: icmp, src: 10.10.1.0/24}}
        - {{action: allow, dst: {public}}}
"""
NAT = """\
  - name: nat
    function: nat
    config:
      inside: [10.10.1.0/24]
      public_ips: [{public}]
"""
FLOWMON = """\
  - name: flows
    function: flowmon
    config: {idle_timeout: 15, active_timeout: 300}
"""
ALLOW_ALL = """\
  - name: fw2
    function: firewall
    config: {default: allow}
"""
PARTITIONS = 1  # one worker per function: more partitions would not add any parallelism


def chain_text(functions: int, name: str, lab: Any, inline: bool = True) -> str:
    """The pipeline of 1 (fw), 2 (fw -> nat) or 4 (fw -> nat -> flows -> fw2) functions;
    `inline` adds the lab's arms as `egress: inline` (without: for `snf run`)."""
    parts = [FIREWALL.format(name="fw", udp=UDP_PORT, public=lab.public_ip, iperf_long=IPERF_LONG)]
    if functions >= 2:
        parts.append(NAT.format(public=lab.public_ip))
    if functions >= 4:
        parts += [FLOWMON, ALLOW_ALL]
    head = f"name: {name}\npartitions: {PARTITIONS}\nship: whole\nfunctions:\n"
    egress = f"egress:\n  inline: [{lab.client_arm}, {lab.server_arm}]\n" if inline else ""
    return head + "".join(parts) + egress


# -- the workers' /metrics --------------------------------------------------------------


def deployed(name: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "snf", "status", name, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def _scrape(url: str) -> dict[str, float]:
    """Counters, stage sums and counts, hop-latency buckets of one worker."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(url, timeout=3) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "snf_packets_in_total":
                out["packets"] = out.get("packets", 0.0) + s.value
            elif s.name in ("snf_stage_seconds_sum", "snf_stage_seconds_count"):
                out[f"stage:{s.labels['stage']}:{s.name.rsplit('_', 1)[1]}"] = s.value
            elif s.name == "snf_hop_latency_seconds_bucket":
                out[f"hop:{s.labels['le']}"] = s.value
    return out


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket holding `q` (seconds)."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if upper == float("inf"):
                return lower  # beyond the last finite bound: its bound is all we know
            inside = cumulative - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, cumulative
    return lower


@dataclass
class Workers:
    """The deployed pipeline's workers: /metrics URLs and pids, by function."""

    name: str
    urls: dict[str, list[str]] = field(default_factory=dict)
    pids: dict[str, list[int]] = field(default_factory=dict)

    def refresh(self) -> None:
        status = deployed(self.name)
        Watch.extra.add(status["supervisor"]["pid"])
        functions = status["functions"]
        self.urls = {f: [i["metrics_url"] for i in v["instances"]] for f, v in functions.items()}
        self.pids = {f: [i["pid"] for i in v["instances"]] for f, v in functions.items()}

    def scrape(self) -> dict[str, dict[str, float]]:
        """Per function, the sum over its instances."""
        out: dict[str, dict[str, float]] = {}
        for function, urls in self.urls.items():
            total: dict[str, float] = {}
            for url in urls:
                for key, value in _scrape(url).items():
                    total[key] = total.get(key, 0.0) + value
            out[function] = total
        return out


def worker_delta(before: dict[str, float], after: dict[str, float], seconds: float) -> dict:
    """What one function did between two scrapes."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    messages = d.get("stage:decode:count", 0.0)
    stages = {}
    for key in [k for k in d if k.startswith("stage:") and k.endswith(":sum")]:
        stage = key.split(":")[1]
        count = d.get(f"stage:{stage}:count", 0.0)
        stages[stage] = round(1e3 * d[key] / count, 3) if count else None
    buckets = sorted((float(k[4:]), v) for k, v in d.items() if k.startswith("hop:"))
    hop = {f"p{round(q * 100)}_ms": bucket_quantile(buckets, q) for q in (0.5, 0.99)}
    return {
        "messages": int(messages),
        "messages_per_s": round(messages / seconds, 1) if seconds else None,
        "packets_per_message": round(d.get("packets", 0.0) / messages, 1) if messages else None,
        "stage_mean_ms": stages,
        "stage_total_ms": round(sum(v for v in stages.values() if v), 3),
        "hop_latency_ms": {k: None if v is None else round(v * 1e3, 2) for k, v in hop.items()},
    }


# -- CPU -------------------------------------------------------------------------------


class Watch(LoadWatch):
    """LoadWatch that also counts the deployments' supervisors (and so their workers)
    as ours: `snf deploy` detaches them, so they are no descendants of this process."""

    extra: ClassVar[set[int]] = set()

    def _ours(self) -> set[int]:
        ours = super()._ours() | self.extra
        grew = True
        while grew:
            new = {pid for pid, p in self.procs.items() if p.ppid in ours} - ours
            ours |= new
            grew = bool(new)
        return ours


def wait_quiet(max_share: float, patience: float) -> float:
    """loadwatch.wait_quiet, by Watch: seconds waited for a second others left quiet."""
    started = time.monotonic()
    while time.monotonic() - started < patience:
        with Watch() as watch:
            time.sleep(1.0)
        if watch.report()["others_share"] <= max_share:
            break
    return round(time.monotonic() - started, 1)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_cores(before: dict[str, float | None], pids: dict[str, int], seconds: float) -> dict:
    """CPU cores each process used since `before` (cpu_seconds of the same pids)."""
    out = {}
    for name, pid in pids.items():
        now, then = cpu_seconds(pid), before.get(name)
        if now is not None and then is not None and seconds > 0:
            out[name] = round((now - then) / seconds, 2)
    return out
