"""Collector: what came out of a pipeline, deduplicated by packet id.

The Kafka sink and the --local runner both fill a Collector, and both write
results through it, so their files can be compared byte for byte. Output is
ordered by packet id (source, seq), i.e. capture order, which keeps every
flow in order whatever the interleaving of partitions was.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from snf.batch import PacketBatch, format_packet_id
from snf.pcapng import PcapngWriter

__all__ = ["Collector", "PortKey"]

# (function, port); egress is ("", "egress")
PortKey = tuple[str, str]
EGRESS: PortKey = ("", "egress")


@dataclass(slots=True)
class _Packet:
    linktype: int
    ts_ns: int
    orig_len: int
    data: bytes
    reason: str


@dataclass
class Collector:
    seen: dict[tuple[int, int], PortKey] = field(default_factory=dict)
    packets: dict[PortKey, dict[tuple[int, int], _Packet]] = field(default_factory=dict)
    duplicates: int = 0
    conflicts: int = 0  # same id seen on two different ports: a correctness bug

    def add(self, where: PortKey, batch: PacketBatch) -> int:
        """Add a batch from a terminal port; return how many packets were new."""
        bucket = self.packets.setdefault(where, {})
        seen = self.seen
        new = 0
        lt = batch.linktype
        for ts, orig, data, sid, seq, reason in batch.rows():
            pid = (sid, seq)
            prev = seen.get(pid)
            if prev is not None:
                self.duplicates += 1
                if prev != where:
                    self.conflicts += 1
                continue
            seen[pid] = where
            bucket[pid] = _Packet(lt, ts, orig, bytes(data), reason)
            new += 1
        return new

    @property
    def total(self) -> int:
        return len(self.seen)

    def count(self, where: PortKey) -> int:
        return len(self.packets.get(where, {}))

    def reasons(self, where: PortKey) -> Counter[str]:
        return Counter(p.reason for p in self.packets.get(where, {}).values())

    def write_pcapng(self, path: Path, where: PortKey = EGRESS) -> int:
        bucket = self.packets.get(where, {})
        with PcapngWriter(path) as w:
            for pid in sorted(bucket):
                p = bucket[pid]
                w.write(
                    p.linktype,
                    p.ts_ns,
                    p.data,
                    p.orig_len,
                    comment=f"snf id={format_packet_id(*pid)}",
                )
        return len(bucket)

    def write_events(self, directory: Path) -> list[Path]:
        """One JSON Lines file per side port: <function>.<port>.jsonl."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for (function, port), bucket in sorted(self.packets.items()):
            if (function, port) == EGRESS:
                continue
            path = directory / f"{function}.{port}.jsonl"
            with path.open("w") as f:
                for pid in sorted(bucket):
                    p = bucket[pid]
                    f.write(
                        json.dumps(
                            {
                                "ts": p.ts_ns / 1e9,
                                "ts_ns": p.ts_ns,
                                "packet_id": format_packet_id(*pid),
                                "function": function,
                                "port": port,
                                "reason": p.reason,
                                "len": p.orig_len,
                            }
                        )
                        + "\n"
                    )
            written.append(path)
        return written
