"""Benchmark: how long a firewall's state takes to come back after a worker dies.

For each table size N (default 10k, 100k, 1M connections) a one-function
pipeline (a firewall, 4 partitions, that admits TCP from 10/8 to port 443)
is filled with N distinct TCP SYNs (batches of 512 per Kafka message); each
creates one entry of the `conn` table, so its changelog holds N records.
Then, on the same changelog, these takeovers are timed:

single_kill9          1 instance; kill -9, a successor with an EMPTY datadir
                      started at once (a pod with an emptyDir): from the kill
single_cold           1 instance; a successor with an empty datadir started
                      after the group is empty (no session to wait out):
                      the pure changelog restore, from the successor's start
single_warm           same, but in the predecessor's datadir (the local
                      RocksDB already holds the state): from its start
pair_kill9            2 instances, standby_replicas 0: kill -9 one; the
                      survivor restores the victim's partitions from the
                      changelog: from the kill
pair_sigterm          same with a graceful SIGTERM (drain, leave the group):
                      no session timeout, so the restore cost shows
standby_kill9         2 instances, standby_replicas 1 (each keeps a warm copy
                      of the other's partitions), caught up: kill -9 one
standby_sigterm       same with SIGTERM

Each takeover reports, in seconds from its reference time (the kill, the
SIGTERM or the successor's start):

restored      the new owner's assignment.json (written by the worker's
              on_rebalance_complete hook, which Faust sends once the active
              tables are restored) names all partitions
first/last    the output, on the egress topic, of probe packets published
              right after the reference time, one new flow per partition
              (moved: the partitions that changed owner; kept: the others)
log           from the new owner's log: rebalance seen ("generation id"),
              changelog reading started/done, "Restore complete!", and the
              changelog records it replayed (highwater - start offset)
cpu           cores used by the new owner and the broker (from /proc), over
              the takeover and while the changelog was being read

Per size it also records the fill time, the changelog's records and bytes,
and how long a second instance takes to join (`*_join_ready_s`: owning its
partitions; `*_join_idle_s`: idle, i.e. with standbys, its standby copies
caught up). All three sizes take ~26 min on 2 cores, the 1M fill ~160 s.
The workers import snf like this script does: to pin the code while others
edit the tree, run it with PYTHONPATH pointing at an exported copy.

Usage: python bench/restore_time.py [--brokers B] [--sizes 10000,100000,1000000]
                                    [--repeat 2] [--keep-logs DIR]
                                    [--out bench/results/restore.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from snf import wire
from snf.harness.oneshot import create_topics
from snf.ingress.accumulator import Batcher
from snf.ingress.publisher import BatchPublisher
from snf.kafka import admin, cluster
from snf.kafka.kraft_config import ClusterInfo
from snf.ops.worker_process import WorkerProcess, start_worker
from snf.packet.capture_file import CapturedPacket
from snf.pipeline import names
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import Pipeline
from snf.pipeline.routing import plan_pipeline
from snf.runtime.worker.files import WorkerFiles

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
# Takeover kinds (--kinds): pair_* and standby_* run as a pair of scenarios each.
KINDS = frozenset({"single_kill9", "single_cold", "single_warm", "pair", "standby"})
T0_NS = 1_700_000_000 * 10**9
FILL_SOURCE = 0x5E57_0000_0000_0001
PROBE_SOURCE = 0x5E57_0000_0001_0000  # + round: probes of each takeover are told apart
SERVER = bytes([198, 51, 100, 7])
PIPELINE = """\
name: {name}
partitions: {partitions}
functions:
  - name: fw
    function: firewall
    standby_replicas: {standby}
    config:
      default: drop
      rules: [{{action: allow, proto: tcp, src: 10.0.0.0/8, dport: 443}}]
{extra}"""


# -- packets ---------------------------------------------------------------------------


def _ones_sum(words: np.ndarray) -> np.ndarray:
    """Internet checksum of rows of big-endian 16-bit words."""
    s = words.astype(np.uint64).sum(axis=1)
    while (s >> 16).any():
        s = (s & 0xFFFF) + (s >> 16)
    return (~s & 0xFFFF).astype(np.uint16)


def syn_frames(first: int, count: int, src_base: int = 0x0A000001) -> np.ndarray:
    """`count` Ethernet/IPv4/TCP SYNs to SERVER:443, flow i from 10.0.0.1 + i (distinct
    sources; valid checksums), as a (count, 54) uint8 array. Built with numpy: 1M in ~1 s."""
    idx = np.arange(first, first + count, dtype=np.uint64)
    f = np.zeros((count, 54), dtype=np.uint8)
    f[:, 0:6] = [2, 0, 0, 0, 0, 2]
    f[:, 6:12] = [2, 0, 0, 0, 0, 1]
    f[:, 12:14] = [0x08, 0x00]
    ip = f[:, 14:34]
    ip[:, 0], ip[:, 3], ip[:, 8], ip[:, 9] = 0x45, 40, 64, 6
    src = (src_base + idx).astype(np.uint32)
    ip[:, 12:16] = src.astype(">u4").view(np.uint8).reshape(count, 4)
    ip[:, 16:20] = list(SERVER)
    ip[:, 4:6] = (idx & 0xFFFF).astype(">u2").view(np.uint8).reshape(count, 2)
    ip[:, 10:12] = _ones_sum(ip.view(">u2")).astype(">u2").view(np.uint8).reshape(count, 2)
    tcp = f[:, 34:54]
    sport = (20000 + idx % 40000).astype(">u2")
    tcp[:, 0:2] = sport.view(np.uint8).reshape(count, 2)
    tcp[:, 2:4] = [1, 187]  # 443
    tcp[:, 4:8] = (idx & 0xFFFFFFFF).astype(">u4").view(np.uint8).reshape(count, 4)
    tcp[:, 12], tcp[:, 13], tcp[:, 14:16] = 0x50, 0x02, [0xFF, 0xFF]
    pseudo = np.zeros((count, 12 + 20), dtype=np.uint8)
    pseudo[:, 0:8] = ip[:, 12:20]
    pseudo[:, 9], pseudo[:, 11] = 6, 20
    pseudo[:, 12:] = tcp
    tcp[:, 16:18] = _ones_sum(pseudo.view(">u2")).astype(">u2").view(np.uint8).reshape(count, 2)
    return f


def _captured(
    frames: np.ndarray, first: int, step_ns: int = 1000, base_ns: int = T0_NS
) -> list[CapturedPacket]:
    """Packet i (from `first`) at packet time base_ns + i * step_ns."""
    data = frames.tobytes()
    n = frames.shape[1]
    return [
        CapturedPacket(base_ns + (first + i) * step_ns, n, data[i * n : (i + 1) * n], 1)
        for i in range(len(frames))
    ]


def fill(brokers: str, pipeline: Pipeline, n: int, step_ns: int = 1000) -> dict[str, Any]:
    """Publish n distinct SYNs, 512 per message, partitioned as the firewall needs,
    `step_ns` of packet time apart (1 µs: all within a second; see --flood-seconds)."""
    keyers = plan_pipeline(pipeline).ingress_hop.keyers
    batcher = Batcher(pipeline.partitions, FILL_SOURCE, max_packets=512, keyers=keyers)
    publisher = BatchPublisher(brokers, pipeline.ingress_topic)
    t0 = time.perf_counter()
    chunk = 65536
    for first in range(0, n, chunk):
        packets = _captured(syn_frames(first, min(chunk, n - first)), first, step_ns)
        for part, batch in batcher.add(packets):
            publisher(part, batch)
    for part, batch in batcher.cut_all():
        publisher(part, batch)
    publisher.close()
    return {"published_s": round(time.perf_counter() - t0, 2), "messages": batcher.stats.batches}


class Probes:
    """One new, admitted flow per partition, published right after a kill or a start."""

    def __init__(self, brokers: str, pipeline: Pipeline) -> None:
        self.brokers, self.pipeline = brokers, pipeline
        self.keyers = plan_pipeline(pipeline).ingress_hop.keyers
        self.round = 0
        self.base_ns = T0_NS  # packet time of the probes: set past the end of the fill

    def publish(self) -> tuple[int, dict[int, float]]:
        """Returns (source id, {partition: publish time})."""
        self.round += 1
        source = PROBE_SOURCE + self.round
        batcher = Batcher(self.pipeline.partitions, source, max_packets=1, keyers=self.keyers)
        chosen: dict[int, Any] = {}
        k = 0
        while len(chosen) < self.pipeline.partitions:
            base = 0x0AC80000 + self.round * 4096  # 10.200.0.0/16 and up, never in a fill
            packets = _captured(syn_frames(k, 1, base), k, base_ns=self.base_ns)
            for part, batch in batcher.add(packets):
                chosen.setdefault(part, batch)
            k += 1
        publisher = BatchPublisher(self.brokers, self.pipeline.ingress_topic)
        sent = {}
        for part, batch in sorted(chosen.items()):
            publisher(part, batch)
            sent[part] = time.time()
        publisher.close()
        return source, sent


class Egress:
    """Watches the egress topic for probe outputs; times them by their record timestamp
    (the worker's send time: CreateTime), or by arrival when there is none."""

    def __init__(self, brokers: str, topic: str, partitions: int) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=brokers,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=8 << 20,
        )
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer.assign(self.tps)
        self.mark()

    def mark(self) -> None:
        """Skip what is there now (the fill's outputs): only later probes matter."""
        self.consumer.seek_to_end(*self.tps)
        for tp in self.tps:
            self.consumer.position(tp)

    def wait(self, source: int, partitions: int, timeout: float) -> dict[int, float]:
        """{partition: output time} of the probes from `source`."""
        seen: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < partitions and time.monotonic() < deadline:
            for tp, records in self.consumer.poll(timeout_ms=100).items():
                now = time.time()
                for r in records:
                    msg = wire.decode_any(r.value)
                    if isinstance(msg, wire.PacketBatch) and source in msg.sources:
                        ts = r.timestamp / 1000 if r.timestamp and r.timestamp > 0 else now
                        seen.setdefault(tp.partition, ts)
        return seen

    def close(self) -> None:
        self.consumer.close()


# -- the broker side -------------------------------------------------------------------


def offsets(brokers: str, topic: str) -> tuple[int, int]:
    """(records between log start and end, end) summed over the topic's partitions."""
    consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    finally:
        consumer.close()
    return sum(end[tp] - begin[tp] for tp in tps), sum(end.values())


def topic_bytes(brokers: str, topics: list[str]) -> dict[str, int]:
    """On-disk size of each topic (sum of its partitions' logs, every broker)."""
    client = KafkaAdminClient(bootstrap_servers=brokers)
    try:
        answers = client.describe_log_dirs(list(topics))
    finally:
        client.close()
    sizes = dict.fromkeys(topics, 0)
    answers = answers if isinstance(answers, list) else [answers]
    for answer in answers:
        data = answer if isinstance(answer, dict) else answer.to_object()
        for log_dir in data.get("log_dirs") or data.get("results") or []:
            for t in log_dir.get("topics", []):
                name = t.get("name") or t.get("topic")
                if name in sizes:
                    sizes[name] += sum(
                        p.get("partition_size", p.get("size", 0)) for p in t["partitions"]
                    )
    return sizes


def committed_all(brokers: str, group: str, topic: str) -> bool:
    """Has the group committed every offset of `topic`? (A successor then redoes nothing.)"""
    consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        end = consumer.end_offsets(tps)
    finally:
        consumer.close()
    with admin.admin_client(brokers) as client:
        done = client.list_group_offsets({group: None})[group]
    return all(end[tp] == 0 or (tp in done and done[tp].offset >= end[tp]) for tp in tps)


def group_members(brokers: str, group: str) -> int:
    with admin.admin_client(brokers) as client:
        desc = client.describe_groups([group])[group]
    return len(desc.get("members") or [])


def wait_for(predicate, timeout: float, what: str, step: float = 0.2) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - t0


# -- workers ---------------------------------------------------------------------------


def assignment(w: WorkerProcess) -> tuple[list[int], float] | None:
    found = WorkerFiles(w.datadir).assignment()
    return None if found is None else (found.partitions, found.time)


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(workers: list[WorkerProcess], timeout: float, quiet: float = 3.0) -> float:
    """Until every worker used < 5% of a core for `quiet` seconds in a row: with
    standbys, the sign that they have read their changelogs to the end."""
    t0 = time.monotonic()
    last = [cpu_seconds(w.pid) for w in workers]
    calm = 0.0
    while calm < quiet:
        time.sleep(1.0)
        for w in workers:
            w.check()
        now = [cpu_seconds(w.pid) for w in workers]
        busy = max(b - a for a, b in zip(last, now, strict=True))
        last = now
        calm = calm + 1.0 if busy < 0.05 else 0.0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"workers still busy after {timeout:.0f}s")
    return time.monotonic() - t0 - quiet


def broker_pids(brokers: str) -> list[int]:
    """Pids of the local `snf kafka up` nodes serving `brokers` (none when remote)."""
    ports = {int(b.rsplit(":", 1)[1]) for b in brokers.split(",")}
    pids = []
    for record in (cluster.snf_home() / "clusters").glob("*/cluster.json"):
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            info = ClusterInfo.from_json(record.read_text())
            if ports & {n.port for n in info.nodes}:
                pids += [n.pid for n in info.nodes if Path(f"/proc/{n.pid}").exists()]
    return pids


class CpuSampler(threading.Thread):
    """CPU seconds of some processes, sampled every 0.1 s, to tell what a phase waited on."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            now = time.time()
            cpu = {k: sum(cpu_seconds(p) for p in ps) for k, ps in self.pids.items()}
            self.samples.append((now, cpu))
            self.halt.wait(0.1)

    def stop(self) -> None:
        self.halt.set()
        self.join(2)

    def share(self, t_a: float, t_b: float) -> dict[str, float]:
        """Cores used by each process between t_a and t_b (1.0 = one core busy)."""
        inside = [s for s in self.samples if t_a - 0.05 <= s[0] <= t_b + 0.05]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 0.05:
            return {}
        (ta, a), (tb, b) = inside[0], inside[-1]
        return {k: round((b[k] - a[k]) / (tb - ta), 2) for k in a}


_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[(\d+)\] \[(\w+)\] (.*)$")
_EVENTS = {
    "generation id": "rebalance",
    "Restoring state from changelog topics": "reading",
    "Done reading from changelog topics": "read",
    "Restore complete!": "restored",
    "Worker ready": "ready",
}


def log_events(w: WorkerProcess, since: float) -> dict[str, Any]:
    """Times (epoch s) of the recovery steps the worker logged after `since`, and the
    changelog records its active recovery replayed (highwater - start offset)."""
    events: dict[str, float] = {}
    starts: dict[tuple[str, int], int] = {}
    highs: dict[tuple[str, int], int] = {}
    table: dict | None = None
    topic = ""
    try:
        lines = w.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        m = _LINE.match(line)
        if m:
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            table = None
            if t < since:
                continue
            msg = m.group(4)
            for needle, key in _EVENTS.items():
                if needle in msg:
                    if key == "rebalance":
                        events.pop("restored", None)  # only the last round counts
                        starts.clear()
                        highs.clear()
                    events[key] = t
            if "Highwater for active" in msg:
                table = highs
            elif "active offsets at start of reading" in msg:
                table = starts
            continue
        if table is not None:
            cells = [c.strip() for c in re.split(r"[│|┃]", line) if c.strip()]
            if len(cells) == 3 and cells[1].isdigit():
                topic = topic if cells[0] == "〃" else cells[0]
                if topic.endswith("-state-changelog"):
                    table[(topic, int(cells[1]))] = int(cells[2])
    replayed = sum(max(0, v - starts.get(k, -1)) for k, v in highs.items())
    return {"events": events, "replayed_records": replayed if highs else None}


# -- a takeover ------------------------------------------------------------------------


class Bench:
    def __init__(
        self, brokers: str, tmp: Path, n: int, pid_tag: int, sweep: float | None = None
    ) -> None:
        """`sweep`: the firewall's sweep_interval (None: its default; 0: lazy expiry)."""
        self.brokers, self.tmp, self.n = brokers, tmp, n
        self.name = f"rst{n}x{pid_tag}"
        self.paths = {}
        extra = "" if sweep is None else f"      sweep_interval: {sweep}\n"
        for standby in (0, 1):
            p = tmp / f"fw-standby{standby}.yaml"
            text = PIPELINE.format(
                name=self.name, partitions=PARTITIONS, standby=standby, extra=extra
            )
            p.write_text(text)
            self.paths[standby] = p
        self.pipeline = load_pipeline(self.paths[0])
        self.fn = self.pipeline.function("fw")
        self.changelog = names.changelog_topic(self.name, "fw", "state")
        self.probes = Probes(brokers, self.pipeline)
        create_topics(brokers, self.pipeline)
        self.egress = Egress(brokers, names.egress_topic(self.name), PARTITIONS)
        self.workers: list[WorkerProcess] = []
        self.count = 0
        self.broker_pids = broker_pids(brokers)

    def start(self, standby: int, rundir: Path | None = None) -> WorkerProcess:
        """A worker with an empty datadir, or in `rundir` (its predecessor's RocksDB)."""
        self.count += 1
        rundir = rundir or self.tmp / f"w{self.count}"
        started = time.time()
        w = start_worker(self.paths[standby], "fw", 0, self.brokers, rundir)
        w.started = started  # type: ignore[attr-defined]
        self.workers.append(w)
        return w

    def ready(self, ws: list[WorkerProcess], timeout: float) -> None:
        def owned() -> bool:
            for w in ws:
                w.check()
            got = [assignment(w) for w in ws]
            if any(g is None for g in got):
                return False
            parts = [p for g in got for p in g[0]]
            return sorted(parts) == list(range(PARTITIONS))

        wait_for(owned, timeout, "the workers to own every partition")

    def settle(self) -> None:
        """Every input handled and committed: a successor has nothing to redo."""
        group, topic = self.fn.group_id, self.pipeline.ingress_topic
        wait_for(lambda: committed_all(self.brokers, group, topic), 600, "commits", 0.5)

    def stop(self, w: WorkerProcess, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if w.alive():
            os.kill(w.pid, sig)
        try:
            w.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(5)

    def takeover(
        self,
        survivor: WorkerProcess,
        t_ref: float,
        moved: list[int],
        timeout: float,
    ) -> dict[str, Any]:
        """Publish the probes now; time the survivor owning all partitions, the probes'
        outputs and its recovery steps, relative to t_ref."""
        sampler = CpuSampler({"worker": [survivor.pid], "broker": self.broker_pids})
        sampler.start()
        self.egress.mark()
        source, sent = self.probes.publish()
        try:
            out = self.egress.wait(source, PARTITIONS, timeout)
        finally:
            sampler.stop()

        def owns_all() -> bool:
            survivor.check()
            a = assignment(survivor)
            return a is not None and a[1] >= t_ref and len(a[0]) == PARTITIONS

        wait_for(owns_all, timeout, "the survivor to own every partition")
        a = assignment(survivor)
        assert a is not None
        if len(out) < PARTITIONS:
            raise TimeoutError(f"probe outputs missing: got partitions {sorted(out)}")
        logged = log_events(survivor, t_ref - 0.5)
        ev = logged.get("events", {})

        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - t_ref, 3)

        moved_out = [out[p] for p in moved]
        kept_out = [out[p] for p in range(PARTITIONS) if p not in moved]
        span = max(out.values()) - t_ref
        result = {
            "restored_s": rel(a[1]),
            "first_output_moved_s": rel(min(moved_out)),
            "last_output_moved_s": rel(max(moved_out)),
            "first_output_kept_s": rel(min(kept_out)) if kept_out else None,
            "probe_published_s": rel(min(sent.values())),
            "log": {k: rel(v) for k, v in sorted(ev.items(), key=lambda kv: kv[1])},
            "replayed_records": logged.get("replayed_records"),
            # cores used from the reference time to the last probe output
            "cpu": sampler.share(t_ref, t_ref + span),
        }
        if "rebalance" in ev and "restored" in ev:
            result["rebalance_to_restored_s"] = round(ev["restored"] - ev["rebalance"], 3)
        if "reading" in ev and "read" in ev:
            result["changelog_read_s"] = round(ev["read"] - ev["reading"], 3)
            result["cpu_while_reading"] = sampler.share(ev["reading"], ev["read"])
        if "rebalance" in ev:
            result["rebalance_to_first_output_s"] = round(min(moved_out) - ev["rebalance"], 3)
        return result

    # -- scenarios ---------------------------------------------------------------------

    def single(
        self, a: WorkerProcess, repeat: int, timeout: float, kinds: frozenset[str] = KINDS
    ) -> dict[str, Any]:
        """`a`: the worker that filled the table, sole owner, everything committed.
        single_kill9 always runs (it replaces `a`); single_cold and single_warm if asked."""
        out: dict[str, Any] = {}
        # kill -9, and a successor with an empty datadir at once.
        t_kill = time.time()
        os.kill(a.pid, signal.SIGKILL)
        a.proc.wait(10)
        b = self.start(0)
        out["single_kill9"] = self.takeover(b, t_kill, list(range(PARTITIONS)), timeout)
        out["single_kill9"]["successor_start_s"] = round(b.started - t_kill, 3)
        self.settle()
        cold = []
        prev = b
        for _ in range(repeat if "single_cold" in kinds else 0):
            self.stop(prev)
            wait_for(lambda: group_members(self.brokers, self.fn.group_id) == 0, 60, "empty")
            c = self.start(0)
            cold.append(self.takeover(c, c.started, list(range(PARTITIONS)), timeout))
            self.settle()
            prev = c
        if cold:
            out["single_cold"] = cold
        self.stop(prev)
        if "single_warm" not in kinds:
            return out
        wait_for(lambda: group_members(self.brokers, self.fn.group_id) == 0, 60, "empty")
        d = self.start(0, rundir=prev.datadir.parent)
        out["single_warm"] = self.takeover(d, d.started, list(range(PARTITIONS)), timeout)
        self.settle()
        self.stop(d)
        return out

    def pair(self, standby: int, timeout: float) -> dict[str, Any]:
        key = "standby" if standby else "pair"
        out: dict[str, Any] = {}
        wait_for(lambda: group_members(self.brokers, self.fn.group_id) == 0, 60, "empty")
        # x first, alone: it restores every partition. Then y joins with an empty
        # datadir and takes half; y never held x's partitions (nor, without
        # standbys, any copy of them), so when x dies y must fetch them.
        x = self.start(standby)
        self.ready([x], timeout)
        t0 = time.time()
        y = self.start(standby)
        self.ready([x, y], timeout)
        out[f"{key}_join_ready_s"] = round(time.time() - t0, 2)
        out[f"{key}_join_idle_s"] = round(wait_idle([x, y], timeout) + time.time() - t0, 2)
        self.settle()
        for sig, label in ((signal.SIGKILL, "kill9"), (signal.SIGTERM, "sigterm")):
            moved = (assignment(x) or ([], 0))[0]
            t_ref = time.time()
            os.kill(x.pid, sig)
            res = self.takeover(y, t_ref, moved, timeout)
            res["moved_partitions"] = moved
            out[f"{key}_{label}"] = res
            self.stop(x, signal.SIGCONT)  # already signalled: wait for the exit
            self.settle()
            if label == "kill9":
                # A fresh second instance (empty datadir); wait for it to be warm again.
                t0 = time.time()
                z = self.start(standby)
                self.ready([y, z], timeout)
                out[f"{key}_rejoin_idle_s"] = round(
                    wait_idle([y, z], timeout) + time.time() - t0, 2
                )
                self.settle()
                x, y = y, z  # the old survivor is the next victim
        self.stop(y)
        return out

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                self.stop(w, signal.SIGKILL, 5)
        self.egress.close()
        topics = [*self.pipeline.topics(), *self.pipeline.changelog_topics()]
        admin.delete_topics(self.brokers, [*topics, names.leader_topic(self.name, "fw")])


def flood_step_ns(n: int, flood_seconds: float | None) -> int:
    """Packet time between two SYNs of the fill: 1 µs, or n spread over flood_seconds."""
    return 1000 if not flood_seconds else max(1, round(flood_seconds * 1e9 / n))


def measure(
    brokers: str,
    n: int,
    repeat: int,
    timeout: float,
    keep_logs: Path | None,
    kinds: frozenset[str] = KINDS,
    flood_seconds: float | None = None,
    sweep: float | None = None,
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"snf-bench-restore-{n}-"))
    bench = Bench(brokers, tmp, n, os.getpid() % 10000, sweep)
    step_ns = flood_step_ns(n, flood_seconds)
    bench.probes.base_ns = T0_NS + n * step_ns + 10**9  # probes come after the flood
    try:
        first = bench.start(0)
        bench.ready([first], timeout)
        t0 = time.perf_counter()
        published = fill(brokers, bench.pipeline, n, step_ns)
        wait_for(lambda: offsets(brokers, bench.changelog)[1] >= n, 7200, "the fill", 0.5)
        fill_s = time.perf_counter() - t0
        bench.settle()
        records = {t: offsets(brokers, t)[0] for t in bench.pipeline.changelog_topics()}
        sizes = topic_bytes(brokers, [bench.changelog])
        print(f"[{n}] filled in {fill_s:.1f}s: {records}", file=sys.stderr)
        row: dict[str, Any] = {
            "entries": n,
            "changelog_records": records[bench.changelog],
            "changelog_records_all_tables": sum(records.values()),
            "changelog_bytes": sizes[bench.changelog],
            "fill_s": round(fill_s, 2),
            "fill_entries_per_s": round(n / fill_s),
            "fill_publish": published,
            "flood_seconds": n * step_ns / 1e9,
            "sweep_interval": sweep,
        }
        row.update(bench.single(first, repeat, timeout, kinds))
        print(f"[{n}] single done", file=sys.stderr)
        for standby, kind in ((0, "pair"), (1, "standby")):
            if kind in kinds:
                row.update(bench.pair(standby, timeout))
                print(f"[{n}] {kind} done", file=sys.stderr)
        row["summary"] = summary(row)
    except BaseException:
        print(f"[{n}] failed; worker logs kept in {tmp}", file=sys.stderr)
        bench.close()
        raise
    bench.close()
    if keep_logs is not None:
        for i, w in enumerate(bench.workers, 1):
            dest = keep_logs / f"{n}-{i}.log"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copyfile(w.log_path, dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return row


def summary(row: dict[str, Any]) -> dict[str, Any]:
    cold = row.get("single_cold")
    if not cold or "pair_kill9" not in row or "standby_kill9" not in row:  # --kinds
        return {
            "kill9_to_output_no_standby_s": row["single_kill9"]["first_output_moved_s"],
            "first_output_no_standby_s": [c["first_output_moved_s"] for c in cold or []],
            "kill9_to_output_pair_s": row.get("pair_kill9", {}).get("first_output_moved_s"),
        }
    rest = [c["restored_s"] for c in cold]
    return {
        "restore_no_standby_s": round(min(rest), 2),  # successor start -> tables restored
        "restore_no_standby_all_s": rest,
        "changelog_read_s": [c.get("changelog_read_s") for c in cold],
        "records_per_s": round(row["changelog_records"] / max(c["changelog_read_s"] for c in cold)),
        "first_output_no_standby_s": round(min(c["first_output_moved_s"] for c in cold), 2),
        "kill9_to_output_no_standby_s": row["single_kill9"]["first_output_moved_s"],
        "kill9_to_output_pair_s": row["pair_kill9"]["first_output_moved_s"],
        "sigterm_to_output_pair_s": row["pair_sigterm"]["first_output_moved_s"],
        "kill9_to_output_standby_s": row["standby_kill9"]["first_output_moved_s"],
        "sigterm_to_output_standby_s": row["standby_sigterm"]["first_output_moved_s"],
        "restart_same_datadir_s": row["single_warm"]["first_output_moved_s"],
    }


def settings(brokers: str) -> dict[str, Any]:
    """The Faust settings the workers run with (read from the app the runtime builds)."""
    from snf.runtime.worker.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="snf-bench-restore-conf-"))
    try:
        p = tmp / "p.yaml"
        p.write_text(PIPELINE.format(name="conf", partitions=PARTITIONS, standby=0, extra=""))
        conf = create_app(load_pipeline(p), "fw", brokers, tmp).conf
        return {
            "partitions": PARTITIONS,
            "session_timeout_s": conf.broker_session_timeout,
            "heartbeat_interval_s": conf.broker_heartbeat_interval,
            "commit_interval_s": conf.broker_commit_interval,
            "rebalance_timeout_s": conf.broker_rebalance_timeout,
            "max_poll_records": conf.broker_max_poll_records,
            "consumer_max_fetch_size": conf.consumer_max_fetch_size,
            "stream_recovery_delay_s": conf.stream_recovery_delay,
            "recovery_consistency_check": conf.recovery_consistency_check,
            "store": str(conf.store),
            "batch_packets": 512,
            "packet": "Ethernet/IPv4/TCP SYN, 54 bytes, one new flow each",
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def machine() -> dict[str, Any]:
    import snf

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(ROOT), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()

    code = Path(snf.__file__).resolve().parent
    local = code.is_relative_to(ROOT)
    return {
        "snf_code": str(code),  # not under the repo: a copy (PYTHONPATH) ran
        "repo_head": git("rev-parse", "--short", "HEAD"),
        "repo_dirty": git("status", "--porcelain", "--", "snf", "functions").splitlines()
        if local
        else None,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "faust-streaming": metadata.version("faust-streaming"),
        "aiokafka": metadata.version("aiokafka"),
        "rocksdict": metadata.version("rocksdict"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default=None)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--repeat", type=int, default=2, help="cold restores per size")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--keep-logs", type=Path, default=None, help="copy worker logs here")
    ap.add_argument(
        "--kinds",
        default=",".join(sorted(KINDS)),
        help=f"takeovers to time, of {sorted(KINDS)} (single_kill9 always runs)",
    )
    ap.add_argument(
        "--flood-seconds",
        type=float,
        default=None,
        help="spread the fill's SYNs over this much packet time (default: 1 µs apart)",
    )
    ap.add_argument(
        "--sweep-interval",
        type=float,
        default=None,
        help="the firewall's sweep_interval (default: its own; 0: lazy expiry, no sweeps)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "restore.json")
    args = ap.parse_args()
    brokers = cluster.resolve_brokers(args.brokers) or cluster.up().bootstrap
    report: dict[str, Any] = {
        "benchmark": "changelog restore time against table size, with and without standbys",
        "machine": machine(),
        "brokers": brokers,
        "settings": settings(brokers),
        "sizes": [],
    }
    started = time.perf_counter()
    for n in (int(s) for s in args.sizes.split(",")):
        kinds = frozenset(args.kinds.split(","))
        if kinds - KINDS:
            ap.error(f"unknown --kinds {sorted(kinds - KINDS)}")
        row = measure(
            brokers,
            n,
            args.repeat,
            args.timeout,
            args.keep_logs,
            kinds,
            args.flood_seconds,
            args.sweep_interval,
        )
        report["sizes"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round(time.perf_counter() - started)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps([r["summary"] | {"entries": r["entries"]} for r in report["sizes"]], indent=2))


if __name__ == "__main__":
    main()
