"""KafkaSink: read a pipeline's terminal topics into a Collector."""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition

from snf import wire
from snf.collect import Collector, PortKey

__all__ = ["KafkaSink"]


class KafkaSink:
    """Reads every partition of the given topics from the beginning (no group)."""

    def __init__(self, bootstrap: str, topics: dict[str, PortKey]) -> None:
        self.topics = topics
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=16 << 20,
            fetch_max_bytes=64 << 20,
        )
        assignment = []
        for topic in topics:
            parts = self.consumer.partitions_for_topic(topic) or set()
            assignment += [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(assignment)
        self.consumer.seek_to_beginning(*assignment)

    def poll(self, collector: Collector, timeout_ms: int = 200) -> int:
        new = 0
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms).items():
            where = self.topics[tp.topic]
            for record in records:
                new += collector.add(where, wire.decode(record.value))
        return new

    def collect(
        self,
        collector: Collector,
        expected: int,
        timeout: float,
        check: Callable[[], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> bool:
        """Poll until `expected` distinct packets are in, or `timeout` passes without news."""
        last_news = time.monotonic()
        while collector.total < expected:
            if self.poll(collector):
                last_news = time.monotonic()
                if on_progress:
                    on_progress(collector.total)
            elif time.monotonic() - last_news > timeout:
                return False
            if check:
                check()
        return True

    def close(self) -> None:
        self.consumer.close()
