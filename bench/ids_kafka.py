"""Benchmark: the ids function over Kafka with 10, 1,000 and 10,000 rules, beside the
Kafka ceiling, and the memory of its flow state at its bounds.

    python bench/ids_kafka.py [--sizes 10 1000 10000] [--packets 50000] [--partitions 2]
        [--windows 2048 65536 0] [--flows 20000] [--carry-budget-mb 200] [--seed 1]
        [--tries 3] [--max-disturbance 0.1] [--brokers B] [--quick]
        [--out bench/results/ids_kafka.json]

kafka    the plain captures of ../shared/traffic (never the sealed file), looped
         to at least --packets into one pcap, packet times rewritten to one every
         20 us (as bench/ids_rules.py does: the files come from different years and
         flows expire by packet time). Per rule set (bench/ids_rules.py's seeded
         generator: a smaller set is the first rules of a larger one), a rules
         file and a pipeline of one `ids` function (`rules_file`, ids_rules' `vars`,
         --partitions) are written to a temporary directory; the pipeline runs as
         `snf run` does (snf.harness.oneshot), --local then over Kafka, then at once
         the pass-through ceiling (kafka_ceiling.measure_ceiling: one hop, snf's
         clients) on the same capture, batches of 512 and partitioning. A broker
         that answers is used, else one is started and stopped here.
         processing_pps counts from the first packet published to the last one
         accounted for; run_kafka publishes only after wait_assigned, and a worker
         builds its core (compiles the rules) before it joins its group, so
         start-up (`startup_seconds`: the rest of the wall time) is not in it.
         same_output: --local and Kafka gave the same packets on every terminal
         (id, time, length, bytes, reason) and the same alert records.
core     Ids.process alone on the same packets (bench/ids_rules.py's batches), per
         size: `joins` (the set has a rule whose payload keywords are all
         relative, so TCP segments are joined and carries kept), and the best
         pps at the default stream_window and at 0: how much of a size's cost is
         stream state rather than rules.
memory   Ids(IdsConfig(rules=[one joinable content rule], stream_window=W)) for
         each W, fed by Ids.process (in-memory tables, as ids_rules' Core) N
         distinct TCP flows, each a handshake then ceil(W / 1460) segments of 1460
         random bytes each way, in order, so both carries are full. Flows go in
         groups of 512, one packet of each per batch (many concurrent flows: every
         batch rewrites each flow's entry). N is --flows, or fewer where the
         carries of N flows would pass --carry-budget-mb (W = 65536). core_pps: one
         untraced pass of the same feed on plain in-memory tables. Per flow:
           changelog   bytes of one changelog record as the worker writes it: the
                       key raw (b"flow\\0" + the flow key), the value by Faust's
                       json codec (faust.serializers.codecs); `written_bytes_per_packet`:
                       every changelog write over the feed, per packet
           heap        tracemalloc (from before the packets were built): retained
                       over the feed, split into the table (the entries, as
                       --local's MemoryStore and the worker's read cache hold
                       them) and the core's expiry index (with the flow keys)
           rocksdb     the entries written with Faust's RocksDB options
                       (faust.stores.rocksdb.RocksDBOptions, rocksdict), flushed and
                       compacted: the live SST files' bytes
         and the bound per partition: max_flows x each figure (the worker's read
         cache keeps at most snf.runtime.worker.faust_table.CACHED_KEYS entries).

JSON: benchmark, machine, code (bench/provenance), settings, captures, kafka (per
size: rules, compiled, skipped, local, kafka, ceiling, ratio_to_ceiling,
ratio_to_smallest, normalised_ratio_to_smallest, same_output; or error), core
(per size: joins, pps_window_<default>, pps_window_0), memory
(per window: flows, packets, core_pps, per_flow, changelog, heap, rocksdb, bound).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import random
import shutil
import struct
import tempfile
import time
import tracemalloc
from functools import partial
from pathlib import Path
from typing import Any

import dpkt
from faust.serializers import codecs
from faust.stores.rocksdb import RocksDBOptions
from ids_rules import (
    BATCH,
    SPACING_NS,
    T0,
    TRAFFIC,
    VARS,
    Core,
    default_captures,
    load_batches,
    one_pass,
    ruleset,
)
from ipsec_kafka import timed_run
from kafka_ceiling import broker, measure_ceiling, warm_up
from loadwatch import add_disturbance_args, median_run
from provenance import code_state, machine, write_report
from rich.console import Console
from rich.table import Table

from snf.core.tables import BatchState, MemoryStore
from snf.egress.collector import Collector
from snf.functions.ids import Ids, IdsConfig
from snf.guarantee.journal import table_key
from snf.packet import flowkey
from snf.packet.batch import PacketBatch
from snf.packet.capture_file import read_capture
from snf.packet.parse import parse_packet_batch
from snf.pipeline.loader import load_pipeline
from snf.pipeline.routing import plan_pipeline
from snf.runtime.worker.faust_table import CACHED_KEYS

ROOT = Path(__file__).resolve().parents[1]
WARM_CAPTURE = TRAFFIC / "zeek-http-bro.org.pcap"  # a fresh broker's JVM warms on it
LINKTYPE_ETHERNET = 1
PIPELINE = """\
name: idsbench
partitions: {partitions}
functions:
  - name: ids
    function: ids
    config:
      rules_file: {rules}
      vars: {vars}
"""
# memory: a rule whose payload keywords are all relative joins segments (stream.py)
JOINABLE = 'alert tcp any any -> any 80 (msg:"admin login"; content:"/admin/login"; sid:1;)'
MSS = 1460
SERVER = bytes([192, 168, 0, 1])
ISN_C, ISN_S = 1_000, 5_000_000
MIB = 1 << 20


# -- kafka ------------------------------------------------------------------------------


def write_capture(path: Path, captures: list[Path], packets: int) -> dict[str, int]:
    """The captures looped to at least `packets` into one pcap (ns), a packet every
    SPACING_NS from T0; return the packets of each file."""
    frames: list[tuple[int, bytes]] = []
    per_file = {}
    for capture in captures:
        got = list(read_capture(capture))
        if any(p.linktype != LINKTYPE_ETHERNET for p in got):
            raise SystemExit(f"{capture.name}: not Ethernet; one pcap holds one link type")
        per_file[capture.name] = len(got)
        frames += [(p.orig_len, p.data) for p in got]
    looped = frames * -(-packets // len(frames))
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262_144, LINKTYPE_ETHERNET))
        for n, (orig, data) in enumerate(looped):
            sec, ns = divmod(T0 + n * SPACING_NS, 10**9)
            f.write(struct.pack("<IIII", sec, ns, len(data), orig) + data)
    return per_file | {"packets": len(looped)}


def output_of(collector: Collector) -> dict[str, Any]:
    """What a run put out: per terminal the packets (count, digest of id, time,
    length, bytes and reason in id order), per record port the records (count,
    digest of their canonical JSON, sorted)."""
    out: dict[str, Any] = {}
    for (function, port), packets in sorted(collector.packets.items(), key=str):
        h = hashlib.blake2b(digest_size=16)
        for pid in sorted(packets):
            p = packets[pid]
            h.update(struct.pack("<QQqII", pid[0], pid[1], p.ts_ns, p.orig_len, len(p.data)))
            h.update(p.data + p.reason.encode() + b"\0")
        out[f"{function or '-'}.{port}"] = {"packets": len(packets), "digest": h.hexdigest()}
    for (function, port), bucket in sorted(collector.records.items()):
        h = hashlib.blake2b(digest_size=16)
        for text in sorted(bucket):
            h.update(text.encode() + b"\n")
        out[f"{function}.{port}"] = {"records": len(bucket), "digest": h.hexdigest()}
    return out


def stages(last: dict[str, float]) -> dict[str, Any]:
    """The worker's time per Processor stage, from its last /metrics scrape."""
    out: dict[str, Any] = {"packets_in": int(last.get("packets_in", 0))}
    for key in [k for k in last if k.startswith("stage_") and k.endswith("_count")]:
        stage, count = key[6:-6], last[key]
        total = last.get(f"stage_{stage}_sum", 0.0)
        out[stage] = {"seconds": round(total, 3), "messages": int(count)}
    return out


def run_once(pipeline: Path, capture: Path, local: bool, brokers: str, folder: Path) -> dict:
    """One `snf run` (or --local) of the pipeline, watched for disturbance."""
    rundir = folder / f"run-{time.monotonic_ns()}"
    result, out, scraper = timed_run(pipeline, capture, local, brokers, rundir)
    out["startup_seconds"] = round(out["end_to_end_seconds"] - result.processing_seconds, 3)
    out["output"] = output_of(result.collector)
    if not local:
        out["worker"] = stages(scraper.last)
        out["worker"]["scrapes"] = scraper.scrapes
    shutil.rmtree(rundir, ignore_errors=True)  # the worker's RocksDB and logs
    return out


def measure_size(
    size: int, capture: Path, folder: Path, bootstrap: str, args: argparse.Namespace,
    console: Console, warm: bool,
) -> dict[str, Any]:  # fmt: skip
    """--local, Kafka, then at once the ceiling, for one rule set (`warm`: after an
    untimed Kafka run)."""
    rules, kinds = ruleset(size, args.seed, args.weak_anchors)
    rules_file = folder / f"ids-{size}.rules"
    rules_file.write_text("\n".join(rules) + "\n")
    pipeline = folder / f"ids-{size}.yaml"
    pipeline.write_text(
        PIPELINE.format(partitions=args.partitions, rules=rules_file, vars=json.dumps(VARS))
    )
    t0 = time.perf_counter()
    plan = plan_pipeline(load_pipeline(pipeline))  # validates (compiles) and builds the core
    config = plan.cores["ids"].config
    row: dict[str, Any] = {
        "rules": size,
        "mix": dict(kinds),
        "compiled": len(config.compiled),
        "skipped": len(config.skipped),
        "load_and_build_s": round(time.perf_counter() - t0, 2),
    }
    quiet = {"repeats": 1, "tries": args.tries, "max_share": args.max_disturbance, "patience": 10}
    run = partial(run_once, pipeline, capture, brokers=bootstrap, folder=folder)
    if warm:  # the first run on a fresh broker is slower (group coordinator, JIT)
        row["warm_up_pps"] = run(False)["pps"]
    row["local"] = median_run(partial(run, True), **quiet)
    row["kafka"] = median_run(partial(run, False), **quiet)
    shape = ([capture], 1, BATCH, 1, "snf", args.partitions)
    keyers = plan.ingress_hop.keyers  # partitioned as the capture agent does
    ceiling = partial(measure_ceiling, *shape, brokers=bootstrap, keyers=keyers)
    row["ceiling"] = median_run(ceiling, **quiet)
    row["ratio_to_ceiling"] = round(row["kafka"]["pps"] / row["ceiling"]["pps"], 3)
    row["same_output"] = row["local"]["output"] == row["kafka"]["output"]
    console.print(
        f"{size:,} rules: local {row['local']['pps']:,}  kafka {row['kafka']['pps']:,} "
        f"(start-up {row['kafka']['startup_seconds']:.1f}s)  ceiling {row['ceiling']['pps']:,}"
        f"  ratio {row['ratio_to_ceiling']:.3f}  same output: {row['same_output']}",
        highlight=False,
    )
    return row


def measure_kafka(
    captures: list[Path], args: argparse.Namespace, console: Console
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the capture written, per size the Kafka row or the error that stopped it)."""
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="snf-bench-ids-") as tmp:
        folder = Path(tmp)
        capture = folder / "traffic-looped.pcap"
        written = write_capture(capture, captures, args.packets)
        console.print(f"kafka: {written['packets']:,} packets from {len(captures)} captures")
        with broker(args.brokers) as bootstrap:
            warm_up(bootstrap, [WARM_CAPTURE], args.partitions)
            for size in args.sizes:
                try:
                    warm = size == args.sizes[0]
                    rows[str(size)] = measure_size(
                        size, capture, folder, bootstrap, args, console, warm
                    )
                except Exception as exc:  # a failed run (RunError, DeployError, CeilingError...)
                    console.print(f"[red]{size} rules failed:[/] {exc}")
                    error = f"{type(exc).__name__}: {exc}"[:2000]
                    rows[str(size)] = {"rules": size, "error": error}
    base = rows.get(str(args.sizes[0]), {})
    for row in rows.values():
        if "error" not in row and "error" not in base:
            row["ratio_to_smallest"] = round(row["kafka"]["pps"] / base["kafka"]["pps"], 3)
            # the ceilings drift between runs: the ratios to them, compared
            row["normalised_ratio_to_smallest"] = round(
                row["ratio_to_ceiling"] / base["ratio_to_ceiling"], 3
            )
    return written, rows


def measure_core(captures: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """Per size, Ids.process alone on the same packets (ids_rules' batches): whether
    the set has a joinable rule (then TCP segments are joined: stream state), and
    its best pps of 2 passes (after a warm one) at the default stream_window and 0."""
    batches, packets, _ = load_batches(captures, args.packets)
    default = IdsConfig.model_fields["stream_window"].default
    out: dict[str, Any] = {"packets": packets, "default_window": default}
    for size in args.sizes:
        rules = ruleset(size, args.seed, args.weak_anchors)[0]
        cell: dict[str, Any] = {}
        for window in (default, 0):
            config = {"rules": rules, "vars": VARS, "stream_window": window}
            core = Core(Ids(IdsConfig.model_validate(config)))
            cell["joins"] = core.ids.judge.joins
            one_pass(core, batches, packets)
            best = min(one_pass(core, batches, packets)[0] for _ in range(2))
            cell[f"pps_window_{window}"] = round(packets / best)
        out[str(size)] = cell
    return out


# -- memory of the flow state -----------------------------------------------------------


class ChangelogStore(MemoryStore):
    """MemoryStore that counts the changelog bytes the worker's writes would send:
    the key as the worker's single table has it, the value by Faust's json codec."""

    def __init__(self, table: str) -> None:
        super().__init__()
        self.prefix = table_key(table, b"")
        self.writes = 0
        self.bytes = 0

    def set(self, key: bytes, value: Any) -> None:
        self.writes += 1
        self.bytes += len(self.prefix) + len(key) + len(codecs.dumps("json", value))
        super().set(key, value)

    def delete(self, key: bytes) -> None:
        self.writes += 1
        self.bytes += len(self.prefix) + len(key)  # a tombstone
        super().delete(key)


def tcp_frame(
    src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int, ack: int,
    data: bytes = b"",
) -> bytes:  # fmt: skip
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=65535)
    tcp.data = data
    ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_TCP, ttl=64, data=tcp)
    ip.len = len(ip)
    eth = dpkt.ethernet.Ethernet(
        src=b"\x02\0\0\0\0\1", dst=b"\x02\0\0\0\0\2", type=dpkt.ethernet.ETH_TYPE_IP, data=ip
    )
    return bytes(eth)


def flow_frames(n: int, window: int, rnd: random.Random) -> list[bytes]:
    """Flow n: a handshake, then ceil(window / MSS) segments (at least one) of MSS
    random bytes from the client, then as many from the server, all in order."""
    client = (0x0A000000 + n + 1).to_bytes(4, "big")  # 10.0.0.1 on: one flow per address
    sport = 1024 + n % 60_000
    c = partial(tcp_frame, client, SERVER, sport, 80)
    s = partial(tcp_frame, SERVER, client, 80, sport)
    syn, ack, push = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    out = [c(syn, ISN_C, 0), s(syn | ack, ISN_S, ISN_C + 1), c(ack, ISN_C + 1, ISN_S + 1)]
    segments = max(1, math.ceil(window / MSS))
    out += [c(push, ISN_C + 1 + k * MSS, ISN_S + 1, rnd.randbytes(MSS)) for k in range(segments)]
    end_c = ISN_C + 1 + segments * MSS
    out += [s(push, ISN_S + 1 + k * MSS, end_c, rnd.randbytes(MSS)) for k in range(segments)]
    return out


def flow_batches(flows: int, window: int, seed: int) -> list[tuple[PacketBatch, Any]]:
    """Every flow's packets in parsed batches: flows in groups of BATCH, one packet of
    each flow of the group per batch, in order; a packet every microsecond."""
    rnd = random.Random(seed)
    batches = []
    seq = 0
    for first in range(0, flows, BATCH):
        group = [flow_frames(n, window, rnd) for n in range(first, min(first + BATCH, flows))]
        for k in range(max(map(len, group))):
            rows = []
            for frames in group:
                if k < len(frames):
                    rows.append((T0 + seq * 1_000, len(frames[k]), frames[k], 1, seq, ""))
                    seq += 1
            batch = PacketBatch.from_rows(LINKTYPE_ETHERNET, rows)
            batches.append((batch, parse_packet_batch(batch)))
    return batches


def traced_now() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def rocksdb_bytes(entries: list[tuple[bytes, bytes]], folder: Path) -> dict[str, int]:
    """The entries in a RocksDB opened with Faust's options, flushed and compacted."""
    path = folder / "db"
    db = RocksDBOptions().open(path)
    for key, value in entries:
        db[key] = value
    db.flush()
    db.compact_range(None, None)
    sst = sum(f["size"] for f in db.live_files())
    db.close()
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    shutil.rmtree(path, ignore_errors=True)
    return {"sst_bytes": sst, "directory_bytes": total}


def core_pps(ids: Ids, flows: int, window: int, seed: int) -> int:
    """Packets/s of Ids.process over the feed, untraced, on plain in-memory tables."""
    batches = flow_batches(flows, window, seed)
    stores = BatchState.memory(Ids.tables)
    t0 = time.perf_counter()
    for batch, headers in batches:
        state = BatchState(stores)  # type: ignore[arg-type]
        ids.process(batch, headers, state)
        state.write_back()
    return round(sum(len(b) for b, _ in batches) / (time.perf_counter() - t0))


def memory_at(window: int, flows: int, seed: int, console: Console) -> dict[str, Any]:
    """The flow state of `flows` TCP flows with full carries, at stream_window `window`."""
    config = IdsConfig(rules=[JOINABLE], stream_window=window)
    pps = core_pps(Ids(config), flows, window, seed)
    ids = Ids(config)
    stores = {name: ChangelogStore(name) for name in Ids.tables}
    flowkey._HASH_CACHE.clear()  # the parser's (private, bounded) cache: its keys traced too
    gc.collect()
    tracemalloc.start()  # before the packets: the flow keys the tables keep are theirs
    base = traced_now()
    batches = flow_batches(flows, window, seed)
    packets = sum(len(b) for b, _ in batches)
    t0 = time.perf_counter()
    for batch, headers in batches:
        state = BatchState(stores)  # type: ignore[arg-type]
        ids.process(batch, headers, state)
        state.write_back()
    seconds = time.perf_counter() - t0
    del batches, batch, headers, state
    retained = traced_now() - base
    table = stores["flow"]
    n = len(table.data)
    if n != flows or stores["thresh"].data:
        raise RuntimeError(f"{n} flow entries for {flows} flows")
    # the changelog record of each entry (key raw, value by Faust's json codec)
    entries = [(table.prefix + k, codecs.dumps("json", v)) for k, v in table.data.items()]
    carry_chars = sum(len(c[1]) for v in table.data.values() for c in v[5] if c is not None)
    with_cache = traced_now()
    flowkey._HASH_CACHE.clear()  # not flow state: bounded per process (_HASH_CACHE_MAX)
    held = traced_now()
    data, table.data = table.data, {}
    del data
    without_table = traced_now()
    ids.forget(0)  # the core's expiry index of partition 0
    without_index = traced_now()
    tracemalloc.stop()
    keys = sum(len(k) for k, _ in entries)
    values = sum(len(v) for _, v in entries)
    with tempfile.TemporaryDirectory(prefix="snf-bench-ids-db-") as tmp:
        disk = rocksdb_bytes(entries, Path(tmp))
    per_flow = {
        "changelog_bytes": round((keys + values) / n, 1),
        "changelog_key_bytes": round(keys / n, 1),
        "carry_base64_chars": round(carry_chars / n, 1),
        "heap_bytes": round((held - without_index) / n, 1),  # the table and the index
        "heap_table_bytes": round((held - without_table) / n, 1),
        "heap_index_bytes": round((without_table - without_index) / n, 1),  # and the keys
        "heap_other_bytes": round((retained - (with_cache - without_index)) / n, 1),
        "heap_parser_cache_bytes": round((with_cache - held) / n, 1),
        "rocksdb_sst_bytes": round(disk["sst_bytes"] / n, 1),
    }
    cell = {
        "window": window,
        "flows": n,
        "packets": packets,
        "segments_per_direction": max(1, math.ceil(window / MSS)),
        "core_pps": pps,  # untraced, one pass: what full carries cost the core
        "feed_seconds_traced": round(seconds, 2),
        "per_flow": per_flow,
        "changelog": {
            "writes": table.writes,
            "written_bytes": table.bytes,
            "written_bytes_per_packet": round(table.bytes / packets, 1),
            "written_bytes_per_flow": round(table.bytes / n, 1),
        },
        "heap": {
            "retained_mib": round(retained / MIB, 2),
            "table_mib": round((held - without_table) / MIB, 2),
            "index_mib": round((without_table - without_index) / MIB, 2),
            # snf.packet.flowkey's flow-hash cache: bounded per process, not flow state
            "parser_cache_mib": round((with_cache - held) / MIB, 2),
        },
        "rocksdb": disk,
        "bound": bound(ids.config.max_flows, window, per_flow),
    }
    console.print(
        f"stream_window {window}: {n:,} flows, {packets:,} packets, {pps:,} pkt/s untraced; "
        f"per flow: changelog {per_flow['changelog_bytes']:,.0f} B, heap "
        f"{per_flow['heap_bytes']:,.0f} B (table {per_flow['heap_table_bytes']:,.0f}, index "
        f"{per_flow['heap_index_bytes']:,.0f}), rocksdb {per_flow['rocksdb_sst_bytes']:,.0f} B",
        highlight=False,
    )
    return cell


def bound(max_flows: int, window: int, per_flow: dict[str, float]) -> dict[str, Any]:
    """max_flows x the per-flow figures: what one partition may hold at most."""
    cached = min(max_flows, CACHED_KEYS)
    heap_table, heap_index = per_flow["heap_table_bytes"], per_flow["heap_index_bytes"]
    return {
        "max_flows": max_flows,
        "changelog_bytes_per_partition": round(max_flows * per_flow["changelog_bytes"]),
        "rocksdb_bytes_per_partition": round(max_flows * per_flow["rocksdb_sst_bytes"]),
        # --local: every entry in a dict, and the index
        "local_heap_bytes_per_partition": round(max_flows * (heap_table + heap_index)),
        # a worker owning one partition: the index of every flow, and its read cache
        # (per worker, whatever it owns) at most CACHED_KEYS entries
        "worker_heap_bytes_one_partition": round(max_flows * heap_index + cached * heap_table),
        "worker_cache_keys": CACHED_KEYS,
        "docs_bound_bytes": max_flows * 2 * window,  # docs/functions/ids.md, TCP streams
    }


def flows_for(window: int, args: argparse.Namespace) -> int:
    """--flows, or fewer where both carries of that many flows pass the budget."""
    carry = 2 * 4 * math.ceil(window / 3)  # base64 text of both directions
    return max(200, min(args.flows, args.carry_budget_mb * MIB // carry)) if carry else args.flows


def measure_memory(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    out = {}
    for window in args.windows:
        try:
            out[str(window)] = memory_at(window, flows_for(window, args), args.seed, console)
        except Exception as exc:
            console.print(f"[red]stream_window {window} failed:[/] {exc}")
            out[str(window)] = {"window": window, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    return out


# -- report -----------------------------------------------------------------------------


def show(console: Console, report: dict[str, Any]) -> None:
    table = Table(title=f"ids over Kafka ({report['settings']['partitions']} partitions)")
    cols = ("rules", "compiled", "--local pkt/s", "Kafka pkt/s", "start-up s", "ceiling pkt/s",
            "ratio", "vs smallest", "normalised", "same output")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    for size, row in report["kafka"].items():
        if "error" in row:
            table.add_row(size, "[red]failed[/]", *[""] * (len(cols) - 2))
            continue
        table.add_row(
            f"{int(size):,}", f"{row['compiled']:,}", f"{row['local']['pps']:,}",
            f"{row['kafka']['pps']:,}", f"{row['kafka']['startup_seconds']:.1f}",
            f"{row['ceiling']['pps']:,}", f"{row['ratio_to_ceiling']:.3f}",
            f"{row.get('ratio_to_smallest', 0):.3f}",
            f"{row.get('normalised_ratio_to_smallest', 0):.3f}",
            "yes" if row["same_output"] else "[red]NO[/]",
        )  # fmt: skip
    console.print(table)
    core = report["core"]
    window = core["default_window"]
    for size in report["settings"]["sizes"]:
        c = core[str(size)]
        console.print(
            f"core alone, {size:,} rules (joins segments: {c['joins']}): "
            f"{c[f'pps_window_{window}']:,} pkt/s at stream_window {window}, "
            f"{c['pps_window_0']:,} at 0",
            highlight=False,
        )
    mem = Table(title="ids flow state per flow, full carries both ways (and x max_flows)")
    cols = ("stream_window", "flows", "core pkt/s", "changelog B", "written B/pkt", "heap B",
            "table B", "index B", "RocksDB B", "changelog bound", "RocksDB bound",
            "worker heap bound")  # fmt: skip
    for col in cols:
        mem.add_column(col, justify="right")
    gib = 1 << 30
    for window, cell in report["memory"].items():
        if "error" in cell:
            mem.add_row(window, "[red]failed[/]", *[""] * (len(cols) - 2))
            continue
        p, b = cell["per_flow"], cell["bound"]
        mem.add_row(
            window, f"{cell['flows']:,}", f"{cell['core_pps']:,}", f"{p['changelog_bytes']:,.0f}",
            f"{cell['changelog']['written_bytes_per_packet']:,.0f}", f"{p['heap_bytes']:,.0f}",
            f"{p['heap_table_bytes']:,.0f}", f"{p['heap_index_bytes']:,.0f}",
            f"{p['rocksdb_sst_bytes']:,.0f}",
            f"{b['changelog_bytes_per_partition'] / gib:,.1f} GiB",
            f"{b['rocksdb_bytes_per_partition'] / gib:,.1f} GiB",
            f"{b['worker_heap_bytes_one_partition'] / gib:,.1f} GiB",
        )  # fmt: skip
    console.print(mem)


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="rules per set")
    ap.add_argument("--packets", type=int, default=50_000, help="loop the captures to this")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--windows", type=int, nargs="+", default=[2048, 65536, 0])
    ap.add_argument("--flows", type=int, default=20_000, help="flows fed per window")
    ap.add_argument(
        "--carry-budget-mb", type=int, default=200,
        help="fewer flows where their carries would pass this (MiB of base64)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--weak-anchors", type=float, default=0.005, help="as bench/ids_rules.py")
    add_disturbance_args(ap, repeats=None)
    ap.add_argument("--skip-kafka", action="store_true", help="the memory part only")
    ap.add_argument("--brokers", default=None)
    ap.add_argument("--quick", action="store_true", help="smoke test: 10 and 1000 rules, small")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ids_kafka.json")
    args = ap.parse_args()
    if args.quick:
        args.packets, args.flows, args.carry_budget_mb, args.tries = 10_000, 2_000, 40, 1
    args.sizes = sorted(set(args.sizes or ((10, 1000) if args.quick else (10, 1000, 10_000))))
    return args


def main() -> None:
    args = _arguments()
    console = Console(stderr=True, width=160)
    started, code = time.perf_counter(), code_state()
    captures = default_captures()
    report: dict[str, Any] = {
        "benchmark": "ids over Kafka vs rules (beside the ceiling), and its flow state's memory",
        "machine": machine(),
        "code": code,
        "settings": {
            "sizes": args.sizes,
            "packets_min": args.packets,
            "partitions": args.partitions,
            "batch_packets": BATCH,
            "packet_spacing_ns": SPACING_NS,
            "seed": args.seed,
            "weak_anchors": args.weak_anchors,
            "vars": VARS,
            "windows": args.windows,
            "flows": args.flows,
            "carry_budget_mb": args.carry_budget_mb,
            "mss": MSS,
            "joinable_rule": JOINABLE,
            "max_disturbance": args.max_disturbance,
            "quick": args.quick,
        },
    }
    report["memory"] = measure_memory(args, console)
    if not args.skip_kafka:
        report["captures"], report["kafka"] = measure_kafka(captures, args, console)
    report["core"] = measure_core(captures, args)
    write_report(report, code, started, args.out)
    if args.skip_kafka:
        report["kafka"] = {}
    show(console, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
