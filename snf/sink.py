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

    def __init__(
        self, bootstrap: str, topics: dict[str, PortKey], record_topics: set[str] | None = None
    ) -> None:
        self.topics = topics
        self.record_topics = record_topics or set()
        # record topic -> partitions whose flush has ended (their last records are in)
        self.ended: dict[str, set[int]] = {t: set() for t in self.record_topics}
        self.partitions: dict[str, int] = {}
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
            self.partitions[topic] = len(parts)
            assignment += [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(assignment)
        self.consumer.seek_to_beginning(*assignment)

    def poll(self, collector: Collector, timeout_ms: int = 200) -> int:
        new = 0
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms).items():
            where = self.topics[tp.topic]
            for record in records:
                msg = wire.decode_any(record.value)
                if isinstance(msg, wire.RecordBlock):
                    new += collector.add_records(where, msg.records)
                    if msg.end:
                        self.ended[tp.topic].add(tp.partition)
                        new += 1  # progress, even when the block is empty
                elif isinstance(msg, wire.Flush):
                    continue
                else:
                    new += collector.add(where, msg)
        return new

    def unflushed(self) -> list[str]:
        """Record topics with partitions whose flush has not ended, for error messages."""
        return sorted(
            f"{t} ({len(self.ended[t])}/{self.partitions.get(t, 0)} partitions)"
            for t in self.record_topics
            if len(self.ended[t]) < self.partitions.get(t, 0)
        )

    def flushed(self) -> bool:
        """Every partition of every record topic has sent its end-of-flush block."""
        return all(len(self.ended[t]) >= self.partitions.get(t, 0) for t in self.record_topics)

    def collect(
        self,
        collector: Collector,
        expected: int,
        timeout: float,
        check: Callable[[], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> bool:
        """Poll until `expected` distinct packets and every flush are in, or `timeout`
        passes without news."""
        last_news = time.monotonic()
        while collector.total < expected or not self.flushed():
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
