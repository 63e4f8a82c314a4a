"""Read a dead-letter topic whole, and put its messages back (`snf dlq`).

A plain consumer without a group reads every partition up to the end offsets
taken at the start, so the listing ends even while a worker adds more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition

from snf.kafka.errors import BrokerError
from snf.kafka.producer import TopicProducer
from snf.kafka.security import client_kwargs

__all__ = ["DeadLetterRecord", "read_dead_letters", "republish"]


@dataclass(frozen=True)
class DeadLetterRecord:
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None
    headers: list[tuple[str, bytes]]


def read_dead_letters(bootstrap: str, topic: str, timeout: float = 30.0) -> list[DeadLetterRecord]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 << 20,
        **client_kwargs(),
    )
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise BrokerError(f"no topic {topic} on {bootstrap}: is the pipeline deployed?")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[DeadLetterRecord] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {topic} took longer than {timeout:.0f}s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                out += [
                    DeadLetterRecord(
                        tp.partition, r.offset, r.timestamp, r.value, list(r.headers or [])
                    )
                    for r in records
                    if r.offset < ends[tp]
                ]
        return out
    finally:
        consumer.close()


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
