"""Audit of the ESP packets on a topic: did any (SPI, sequence number) go out twice?

Reads every message of every partition of a topic as it is in Kafka (a
redo's copies included, which the next stage and the sink skip by lineage),
and for each ESP packet notes its SPI and the sequence number on the wire.
What a receiver relies on: no pair twice, ever (a repeat under AES-GCM gives
the key stream away), and per SA, in each partition's order, numbers that
only go up; a takeover shows as a gap (the rest of the old owner's reserved
block, snf.functions.ipsec.sequence), never as a step back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from snf import wire
from snf.kafka.admin import topic_partitions
from snf.kafka.side_reader import SideReader
from snf.packet.batch import PacketBatch
from snf.packet.parse import parse_packet_batch

__all__ = ["EspAudit", "audit_topic"]

ESP = 50


@dataclass
class EspAudit:
    topic: str
    messages: int = 0
    packets: int = 0  # ESP packets, copies included
    repeats: int = 0  # (SPI, seq) pairs seen more than once
    steps_back: int = 0  # a number lower than the one before it, per SA and partition
    gaps: list[int] = field(default_factory=list)  # numbers skipped at each jump forward
    per_spi: Counter[int] = field(default_factory=Counter)

    @property
    def clean(self) -> bool:
        return self.packets > 0 and not self.repeats and not self.steps_back

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "messages": self.messages,
            "packets": self.packets,
            "repeats": self.repeats,
            "steps_back": self.steps_back,
            "gaps": len(self.gaps),
            "largest_gap": max(self.gaps, default=0),
            "per_spi": {f"{spi:#x}": n for spi, n in sorted(self.per_spi.items())},
            "clean": self.clean,
        }


def _esp_numbers(batch: PacketBatch) -> list[tuple[int, int]]:
    """(SPI, 32-bit sequence number) of each ESP packet of a batch."""
    headers = parse_packet_batch(batch)
    out = []
    for i, proto in enumerate(headers.proto):
        l4 = headers.l4_off[i]
        if proto == ESP and l4 >= 0:
            packet = batch.packet(i)
            if len(packet) >= l4 + 8:
                out.append(
                    (
                        int.from_bytes(packet[l4 : l4 + 4], "big"),
                        int.from_bytes(packet[l4 + 4 : l4 + 8], "big"),
                    )
                )
    return out


def audit_topic(brokers: str, topic: str) -> EspAudit:
    """Read all of `topic` and audit its ESP packets."""
    partitions = topic_partitions(brokers).get(topic)
    if partitions is None:
        raise ValueError(f"no topic {topic!r} on {brokers}")
    audit, seen = EspAudit(topic), set()
    reader = SideReader(brokers)
    try:
        ends = reader.offsets(topic, list(range(partitions)), end=True)
        starts = reader.offsets(topic, list(range(partitions)), end=False)
        for p in range(partitions):
            last: dict[int, int] = {}
            for record in reader.read(topic, p, starts[p], ends[p]):
                audit.messages += 1
                try:
                    message = wire.decode(record.value)
                except wire.WireError:
                    continue
                if not isinstance(message, PacketBatch):
                    continue
                for spi, seq in _esp_numbers(message):
                    audit.packets += 1
                    audit.per_spi[spi] += 1
                    if (spi, seq) in seen:
                        audit.repeats += 1
                    seen.add((spi, seq))
                    before = last.get(spi)
                    if before is not None and seq <= before:
                        audit.steps_back += 1
                    elif before is not None and seq > before + 1:
                        audit.gaps.append(seq - before - 1)
                    last[spi] = seq
    finally:
        reader.close()
    return audit
