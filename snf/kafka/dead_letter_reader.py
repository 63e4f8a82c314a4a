"""Read a dead-letter topic whole, and put its messages back (`snf dlq`).

The worker's SideReader reads every partition up to the end offsets taken at
the start, so the listing ends even while a worker adds more.
"""

from __future__ import annotations

from dataclasses import dataclass

from snf.kafka.admin import topic_partitions
from snf.kafka.errors import BrokerError
from snf.kafka.producer import TopicProducer
from snf.kafka.side_reader import SideReader

__all__ = ["DeadLetterRecord", "read_dead_letters", "republish"]


@dataclass(frozen=True)
class DeadLetterRecord:
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None
    headers: list[tuple[str, bytes]]


def read_dead_letters(bootstrap: str, topic: str) -> list[DeadLetterRecord]:
    """Every partition of `topic` up to its end offsets taken now."""
    partitions = topic_partitions(bootstrap).get(topic)
    if not partitions:
        raise BrokerError(f"no topic {topic} on {bootstrap}: is the pipeline deployed?")
    side = SideReader(bootstrap)
    try:
        parts = list(range(partitions))
        begins = side.offsets(topic, parts, end=False)
        ends = side.offsets(topic, parts, end=True)
        return [
            DeadLetterRecord(p, r.offset, r.timestamp, r.value, list(r.headers or []))
            for p in parts
            for r in side.read(topic, p, begins[p], ends[p])
        ]
    finally:
        side.close()


def republish(bootstrap: str, topic: str, records: list[DeadLetterRecord]) -> int:
    """Send each record's value and headers to `topic`, same partition; the count.
    Tombstones are left out: a null value is never a message to process."""
    producer = TopicProducer(bootstrap, topic)
    sent = 0
    try:
        for r in records:
            if r.value is not None:
                producer.send(r.partition, r.value, r.headers or None)
                sent += 1
    finally:
        producer.close()
    return sent
