"""TopicReader: every partition of some topics, from the beginning (or the end), without a group.

The sink's consumer: it reads terminal topics whole (it owns no offsets and
commits nothing), with fetch sizes for messages that carry 512 packets each.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from snf.kafka.producer import connect

__all__ = ["TopicReader"]


class TopicReader:
    def __init__(self, bootstrap: str, topics: Iterable[str], from_end: bool = False) -> None:
        self.consumer = connect(  # a down broker: retried, then a clear error
            KafkaConsumer,
            bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=16 << 20,
            fetch_max_bytes=64 << 20,
        )
        self.partitions: dict[str, int] = {}  # topic -> partitions found at start
        assignment = []
        for topic in topics:
            parts = self.consumer.partitions_for_topic(topic) or set()
            self.partitions[topic] = len(parts)
            assignment += [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(assignment)
        if from_end:  # a live sink: what is sent from now on, never the past again
            self.consumer.seek_to_end(*assignment)
        else:
            self.consumer.seek_to_beginning(*assignment)

    def poll(self, timeout_ms: int) -> Iterator[tuple[str, int, list[Any]]]:
        """(topic, partition, records) for what arrived; a record has .value, .headers."""
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms).items():
            yield tp.topic, tp.partition, records

    def close(self) -> None:
        self.consumer.close()
