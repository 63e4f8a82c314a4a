"""Benchmark: takeover time after a 1M-SYN flood spread over hours, sweeps off and on,
before and after the log cleaner compacted the changelog.

    python bench/restore_flood.py [--brokers B] [--entries 1000000] [--flood-seconds 7200]
                                  [--modes lazy,sweep,compacted]
                                  [--out bench/results/restore_flood.json]

The firewall of bench/restore_time.py (4 partitions) is filled with N SYNs
from distinct sources, evenly over `--flood-seconds` of packet time; with
`timeouts.tcp_syn` 120 s only ~N * 120 / flood_seconds are live at the end.
Modes:

lazy        sweep_interval 0 (expiry only when a later packet of the same key
            finds its entry): every SYN stays in the table and the changelog
sweep       sweep_interval 1 s: sweeps delete the expired entries, but the
            changelog still holds every put and tombstone (nothing compacted)
compacted   sweep, then the changelog's segments are closed and compacted
            while the bench waits: its segment.ms (10 min) is shortened to
            15 s and max.compaction.lag.ms set to 15 s (so the cleaner cleans
            a closed segment within ~15 s whatever the dirty ratio), probe
            packets keep writing so the active segment rolls. First with
            snf's delete.retention.ms (1 h: the tombstones stay), then with
            10 s (what the changelog holds an hour after the flood).

Each mode times single_kill9 (kill -9, a successor with an empty datadir at
once: from the kill) and single_cold (a successor started after the group is
empty: from its start), as bench/restore_time.py does, and reads the
changelog from start to end to count the records present, the tombstones and
the live `conn` entries (offsets cannot tell: compaction leaves gaps).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadwatch import LoadWatch  # noqa: E402
from bench.provenance import changed_since, code_state  # noqa: E402
from bench.restore_time import (  # noqa: E402
    PARTITIONS,
    T0_NS,
    Bench,
    fill,
    flood_step_ns,
    group_members,
    offsets,
    settings,
    topic_bytes,
    wait_for,
)
from snf.guarantee.journal import table_key  # noqa: E402
from snf.kafka import admin, cluster  # noqa: E402
from snf.kafka.kraft_config import ClusterInfo  # noqa: E402
from snf.pipeline.model import topic_configs  # noqa: E402

SWEEP = {"lazy": 0.0, "sweep": 1.0}
FAST_ROLL = {"segment.ms": "15000", "max.compaction.lag.ms": "15000"}
RETENTION_S = 240  # the bench's delete.retention.ms: a cold restore must end within it


def census(brokers: str, topic: str) -> dict[str, Any]:
    """Records present in the changelog (start to end), its tombstones, and the keys
    whose last record is a value (live entries; `conn` ones apart)."""
    consumer = KafkaConsumer(
        bootstrap_servers=brokers,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=32 << 20,
        fetch_max_bytes=64 << 20,
    )
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    records = tombstones = 0
    live: dict[tuple[int, bytes], bool] = {}
    t0 = time.monotonic()
    try:
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for tp, batch in consumer.poll(timeout_ms=500, max_records=100_000).items():
                for r in batch:
                    records += 1
                    tombstones += r.value is None
                    live[(tp.partition, r.key)] = r.value is not None
    finally:
        consumer.close()
    conn = table_key("conn", b"")
    return {
        "records": records,
        "tombstones": tombstones,
        "end_offsets": sum(end.values()),
        "live_keys": sum(live.values()),
        "live_conn_entries": sum(v for (_, k), v in live.items() if k.startswith(conn)),
        "read_s": round(time.monotonic() - t0, 1),
    }


def alter(brokers: str, topic: str, overrides: dict[str, str]) -> dict[str, str]:
    """Set the changelog's configs to snf's plus `overrides` (AlterConfigs replaces all)."""
    configs = topic_configs(1, compact=True) | overrides
    with admin.admin_client(brokers) as client:
        client.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)])
    return configs


def cleaned_offsets(brokers: str, topic: str) -> dict[int, int]:
    """Per partition, the offset up to which the log cleaner has cleaned `topic`: the
    cleaner-offset-checkpoint of the local broker serving `brokers` ({} if remote)."""
    ports = {int(b.rsplit(":", 1)[1]) for b in brokers.split(",")}
    found: dict[int, int] = {}
    for record in (cluster.snf_home() / "clusters").glob("*/cluster.json"):
        info = ClusterInfo.from_json(record.read_text())
        for node in info.nodes:
            if node.port not in ports:
                continue
            path = Path(node.log_dir) / "cleaner-offset-checkpoint"
            for line in path.read_text().splitlines()[2:] if path.exists() else []:
                name, part, offset = line.split()
                if name == topic:
                    found[int(part)] = max(found.get(int(part), 0), int(offset))
    return found


def wait_compacted(bench: Bench, timeout: float) -> list[tuple[float, int, int]]:
    """Publish a probe round every 5 s (a write rolls the active segment once its
    segment.ms passed) until the cleaner has cleaned every partition past where its
    log ended when this began; returns (seconds, bytes, least cleaned offset)."""
    consumer = KafkaConsumer(bootstrap_servers=bench.brokers, group_id=None)
    tps = [TopicPartition(bench.changelog, p) for p in range(PARTITIONS)]
    try:
        end = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()
    t0 = time.monotonic()
    timeline: list[tuple[float, int, int]] = []
    while time.monotonic() - t0 < timeout:
        bench.probes.publish()
        time.sleep(5)
        size = topic_bytes(bench.brokers, [bench.changelog])[bench.changelog]
        cleaned = cleaned_offsets(bench.brokers, bench.changelog)
        timeline.append((round(time.monotonic() - t0, 1), size, min(cleaned.values(), default=0)))
        print(f"  changelog {size / 1e6:.1f} MB, cleaned {cleaned}", file=sys.stderr)
        if all(cleaned.get(p, -1) >= o for p, o in end.items()):
            return timeline
    raise TimeoutError(f"the cleaner did not clean {bench.changelog} in {timeout:.0f} s")


def kill9(bench: Bench, victim: Any, timeout: float) -> tuple[dict[str, Any], Any]:
    """kill -9 the sole owner, a successor with an empty datadir at once: from the kill."""
    t_kill = time.time()
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(10)
    b = bench.start(0)
    res = bench.takeover(b, t_kill, list(range(PARTITIONS)), timeout)
    res["successor_start_s"] = round(b.started - t_kill, 3)
    bench.settle()
    return res, b


def cold(bench: Bench, prev: Any, timeout: float) -> tuple[dict[str, Any], Any]:
    """Stop the owner; once the group is empty, a successor (empty datadir): from its start."""
    bench.stop(prev)
    wait_for(lambda: group_members(bench.brokers, bench.fn.group_id) == 0, 60, "empty")
    c = bench.start(0)
    res = bench.takeover(c, c.started, list(range(PARTITIONS)), timeout)
    bench.settle()
    return res, c


def counted(bench: Bench) -> dict[str, Any]:
    found = census(bench.brokers, bench.changelog)
    found["bytes"] = topic_bytes(bench.brokers, [bench.changelog])[bench.changelog]
    print(f"  changelog: {found}", file=sys.stderr)
    return found


def compacted(bench: Bench, owner: Any, timeout: float) -> dict[str, Any]:
    """Compact (FAST_ROLL, tombstones kept RETENTION_S after the first cleaning) and
    restore cold; then, once the tombstones' horizon passed and the cleaner ran again,
    kill -9 and restore cold on what is left."""
    retention = {"delete.retention.ms": str(RETENTION_S * 1000)}
    out: dict[str, Any] = {"configs": alter(bench.brokers, bench.changelog, FAST_ROLL | retention)}
    kept: dict[str, Any] = {"cleaning_timeline": wait_compacted(bench, timeout)}
    horizon = time.monotonic() + RETENTION_S
    kept["changelog"] = counted(bench)
    kept["single_cold"], owner = cold(bench, owner, timeout)
    out["tombstones_kept"] = kept
    while time.monotonic() < horizon:
        bench.probes.publish()
        time.sleep(5)
    gone: dict[str, Any] = {"cleaning_timeline": wait_compacted(bench, timeout)}
    gone["changelog"] = counted(bench)
    gone["single_kill9"], owner = kill9(bench, owner, timeout)
    gone["single_cold"], owner = cold(bench, owner, timeout)
    out["tombstones_gone"] = gone
    bench.stop(owner)
    return out


def run_mode(brokers: str, mode: str, n: int, flood_seconds: float, timeout: float) -> dict:
    """Fill, count, kill -9 (nothing compacted yet); then `lazy`: a cold restore,
    `sweep`: compacted() as well."""
    tmp = Path(tempfile.mkdtemp(prefix=f"snf-bench-flood-{mode}-"))
    bench = Bench(brokers, tmp, n, os.getpid() % 10000, SWEEP[mode])
    step_ns = flood_step_ns(n, flood_seconds)
    bench.probes.base_ns = T0_NS + n * step_ns + 10**9  # probes come after the flood
    row: dict[str, Any] = {"mode": mode, "entries": n, "sweep_interval": SWEEP[mode]}
    try:
        with LoadWatch() as watch:
            first = bench.start(0)
            bench.ready([first], timeout)
            t0 = time.perf_counter()
            row["fill_publish"] = fill(brokers, bench.pipeline, n, step_ns)
            wait_for(lambda: offsets(brokers, bench.changelog)[1] >= n, 7200, "the fill", 0.5)
            bench.settle()
            row["fill_s"] = round(time.perf_counter() - t0, 1)
            print(f"[{mode}] filled in {row['fill_s']} s", file=sys.stderr)
            row["changelog"] = counted(bench)
            row["single_kill9"], owner = kill9(bench, first, timeout)
            print(f"[{mode}] kill9: {row['single_kill9']['restored_s']} s", file=sys.stderr)
            if mode == "lazy":
                row["single_cold"], owner = cold(bench, owner, timeout)
                bench.stop(owner)
            else:
                try:
                    row["compacted"] = compacted(bench, owner, timeout)
                except Exception as e:  # keep what was measured before
                    row["compacted_error"] = repr(e)
        row["disturbance"] = watch.report()
    finally:
        bench.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default=None)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--flood-seconds", type=float, default=7200.0)
    ap.add_argument("--modes", default="sweep,lazy")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "restore_flood.json")
    args = ap.parse_args()
    brokers = cluster.resolve_brokers(args.brokers) or cluster.up().bootstrap
    state = code_state()
    report: dict[str, Any] = {
        "benchmark": "takeover after a SYN flood spread over packet time, sweeps off/on, "
        "before/after changelog compaction",
        "code": state,
        "brokers": brokers,
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "flood_seconds": args.flood_seconds,
        "settings": settings(brokers),
        "changelog_configs": topic_configs(1, compact=True),
        "modes": [],
    }
    for mode in args.modes.split(","):
        report["modes"].append(
            run_mode(brokers, mode, args.entries, args.flood_seconds, args.timeout)
        )
        report["code_changed_during_run"] = changed_since(state)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
