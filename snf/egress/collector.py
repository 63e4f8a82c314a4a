"""Collector: what came out of a pipeline, deduplicated by packet id.

The Kafka sink and the --local runner both fill a Collector, and both write
results through it, so their files can be compared byte for byte. Output is
ordered by packet id (source, seq), i.e. capture order, which keeps every
flow in order whatever the interleaving of partitions was.

Records (JSON objects from record ports such as ids.alerts or flowmon.flows)
are deduplicated by their canonical JSON text, which is why cores must emit
deterministic records, and written ordered by (ts_ns, text).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snf.packet.batch import PacketBatch, format_packet_id
from snf.packet.pcapng_writer import PcapngWriter
from snf.pipeline.model import EGRESS, PortKey

__all__ = ["Collector"]


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
    duplicates: int = 0  # an id delivered again in a message of new lineage: a real repeat
    redelivered: int = 0  # messages skipped by lineage: a redo's copies (snf.guarantee.journal)
    conflicts: int = 0  # same id on two terminals: fan-out, else a correctness bug
    # record port -> canonical JSON text -> (ts_ns, record)
    records: dict[PortKey, dict[str, tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    duplicate_records: int = 0

    def add_records(self, where: PortKey, records: list[dict[str, Any]]) -> int:
        """Add records from a record port; return how many were new."""
        bucket = self.records.setdefault(where, {})
        new = 0
        for record in records:
            text = json.dumps(record, sort_keys=True, separators=(",", ":"))
            if text in bucket:
                self.duplicate_records += 1
                continue
            bucket[text] = (int(record.get("ts_ns", 0)), record)
            new += 1
        return new

    def record_list(self, where: PortKey) -> list[dict[str, Any]]:
        """The records of one port in output order."""
        bucket = self.records.get(where, {})
        return [bucket[t][1] for t in sorted(bucket, key=lambda t: (bucket[t][0], t))]

    def add(self, where: PortKey, batch: PacketBatch) -> int:
        """Add a batch from a terminal; return how many packets were new anywhere.

        Deduplicated per terminal: with fan-out one id may reach several
        terminals (`conflicts` counts those; without fan-out each is a bug).
        """
        bucket = self.packets.setdefault(where, {})
        seen = self.seen
        new = 0
        lt = batch.linktype
        for ts, orig, data, sid, seq, reason in batch.rows():
            pid = (sid, seq)
            if pid in bucket:
                self.duplicates += 1
                continue
            bucket[pid] = _Packet(lt, ts, orig, bytes(data), reason)
            prev = seen.get(pid)
            if prev is None:
                seen[pid] = where
                new += 1
            else:
                self.conflicts += 1
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
        """One JSON Lines file per terminal but egress: <function>.<port>.jsonl
        (topic.<name>.jsonl for an external topic)."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for function, port in sorted(self.records):
            path = directory / f"{function}.{port}.jsonl"
            with path.open("w") as f:
                for record in self.record_list((function, port)):
                    f.write(json.dumps(record) + "\n")
            written.append(path)
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
