"""Benchmark: peak memory of the sink and the run collector, 1M and 10M packets.

    python bench/sink_memory.py --out bench/results/sink_memory.json

Pushing 10M packets through a broker on this 2-core machine takes too long,
so the packets are synthesized in-process (batches of 512 TCP packets of 74
bytes, ids spread over 4 partitions read round robin, 1 batch in 50 sent
again as a new message, a quarter of the partitions going to a drop port):

- `follow`: `snf sink --follow`'s path after the broker: each batch is
  encoded to the wire format, read back by KafkaSink.poll (lineage, decode,
  foreign checks) from an in-process reader, deduplicated by the Stream and
  written to a pcapng and a JSON Lines file as it comes.
- `collector`: `snf run`'s collector with heads after ingress, as a Kafka run
  has it: every ingress batch kept whole (add_payloads), heads at egress and
  drop, then the sorted pcapng and events written (a merge of spilled runs).

Each measurement runs in a process of its own; RSS is sampled at every tenth
of the input and the peak (ru_maxrss) reported. Flat means the 10M peak is
close to the 1M one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snf import wire  # noqa: E402
from snf.egress.collector import Collector  # noqa: E402
from snf.egress.sink import KafkaSink  # noqa: E402
from snf.egress.stream import Stream  # noqa: E402
from snf.guarantee.lineage import Lineage  # noqa: E402
from snf.packet.batch import PacketBatch  # noqa: E402
from snf.packet.heads import cut_heads  # noqa: E402
from snf.packet.linktypes import LINKTYPE_ETHERNET  # noqa: E402
from tests.packets import tcp4  # noqa: E402

BATCH = 512
PARTITIONS = 4
SOURCE = 0x51_0C_0000_0001
TOPICS = {"b.egress": ("", "egress"), "b.drop": ("fw", "drop")}


def _template() -> PacketBatch:
    rows = [
        (10**18 + i, 74, tcp4(sport=1024 + i, dport=80, payload=b"x" * 20), SOURCE, i, "")
        for i in range(BATCH)
    ]
    return PacketBatch.from_rows(LINKTYPE_ETHERNET, rows)


def batches(packets: int) -> Iterator[tuple[int, PacketBatch, bool]]:
    """(partition, batch, repeat): partition p holds seqs = p mod PARTITIONS."""
    base = _template()
    step = np.arange(BATCH, dtype=np.uint64) * PARTITIONS
    per_part = packets // PARTITIONS // BATCH
    for n in range(per_part):
        for p in range(PARTITIONS):
            rec = base.records.copy()
            rec["seq"] = step + np.uint64(n * BATCH * PARTITIONS + p)
            rec["ts_ns"] = 10**18 + rec["seq"].astype(np.int64) * 1000
            batch = PacketBatch(base.linktype, rec, base.payload, base.sources, base.reasons)
            yield p, batch, False
            if n % 50 == 7:
                yield p, batch, True  # the same ids again, in a message of its own


class _Message(NamedTuple):
    value: Any
    headers: list[tuple[str, bytes]]


class _Reader:
    """TopicReader's poll, over synthesized batches: 8 messages a poll."""

    partitions: dict[str, int] = {}

    def __init__(self, packets: int) -> None:
        self.source = batches(packets)
        self.offsets = [0] * PARTITIONS
        self.done = 0

    def poll(self, timeout_ms: int) -> list[tuple[str, int, list[_Message]]]:
        out = []
        for p, batch, _ in self.source:
            topic = "b.drop" if p == PARTITIONS - 1 else "b.egress"
            self.offsets[p] += 1
            header = Lineage(f"fw/{p}", self.offsets[p], 0).header()
            out.append((topic, p, [_Message(wire.encode(batch), [header])]))
            self.done += len(batch)
            if len(out) == 8:
                break
        return out

    def close(self) -> None:
        pass


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_follow(packets: int, tmp: Path) -> dict:
    reader = _Reader(packets)
    sink = KafkaSink("", TOPICS, reader=reader)  # type: ignore[arg-type]
    stream = Stream(tmp / "out.pcapng", tmp / "events")
    samples, mark = [], packets // 10
    while sink.poll(stream):
        stream.flush()
        if reader.done >= mark:
            samples.append(round(_rss_mb(), 1))
            mark += packets // 10
    stream.close()
    return {"samples_rss_mb": samples} | stream.summary()


def run_collector(packets: int, tmp: Path) -> dict:
    col = Collector()
    samples, mark, done = [], packets // 10, 0
    heads = cut_heads(_template())
    for p, batch, repeat in batches(packets):
        if not repeat:
            col.add_payloads(batch)
        cut = PacketBatch(heads.linktype, heads.records.copy(), heads.payload, heads.sources)
        cut.records["seq"], cut.records["ts_ns"] = batch.records["seq"], batch.records["ts_ns"]
        col.add(("fw", "drop") if p == PARTITIONS - 1 else ("", "egress"), cut)
        done += len(batch)
        if done >= mark:
            samples.append(round(_rss_mb(), 1))
            mark += packets // 10
    col.write_pcapng(tmp / "out.pcapng")
    col.write_events(tmp / "events")
    spilled = sum(t.spool.spilled for t in col._terminals.values()) + col.wholes.spool.spilled
    return {
        "samples_rss_mb": samples,
        "distinct": col.total,
        "duplicates": col.duplicates,
        "heads_unjoined": col.wholes.missing,
        "runs_spilled": spilled,
    }


def one(mode: str, packets: int) -> dict:
    """One measurement, in this process."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="snf-sinkmem-") as tmp:
        fn = run_follow if mode == "follow" else run_collector
        out = fn(packets, Path(tmp))
        written = (Path(tmp) / "out.pcapng").stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - t0
    head = {"mode": mode, "packets": packets, "peak_rss_mb": round(peak, 1)}
    return head | {"seconds": round(seconds, 1), "pcapng_mb": round(written / 2**20, 1)} | out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--modes", default="follow,collector")
    ap.add_argument("--one", nargs=2, metavar=("MODE", "PACKETS"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sink_memory.json")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return
    results = []
    for mode in args.modes.split(","):
        for size in args.sizes.split(","):
            cmd = [sys.executable, __file__, "--one", mode, size]
            got = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
            print(json.dumps(got), flush=True)
            results.append(got)
    report = {
        "benchmark": "sink_memory",
        "input": "synthesized in-process (no broker): see the module docstring",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
