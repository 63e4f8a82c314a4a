"""SideReader: a plain consumer (no group) for one worker's direct reads.

A worker reads records itself when Faust's fetcher skipped or withholds them
(snf.runtime.worker.catch_up), and asks for beginning and end offsets
without queueing behind Faust's fetch long-poll. Both are rare, so the
client is created on first use, and one lock serialises the calls: the
worker calls from threads (asyncio.to_thread), and kafka-python's consumer
is not thread-safe.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from snf.kafka.security import client_kwargs

__all__ = ["SideReader", "SideRecord"]

# What a read returns: kafka-python's ConsumerRecord (offset, value, headers, ...).
SideRecord = Any


class SideReader:
    def __init__(self, brokers: str) -> None:
        self.brokers = brokers
        self.consumer: KafkaConsumer | None = None
        self.lock = threading.Lock()

    def _client(self) -> KafkaConsumer:
        if self.consumer is None:
            self.consumer = KafkaConsumer(
                bootstrap_servers=self.brokers.split(","),
                enable_auto_commit=False,
                max_partition_fetch_bytes=16 << 20,
                **client_kwargs(),
            )
        return self.consumer

    def offsets(self, topic: str, partitions: list[int], *, end: bool) -> dict[int, int]:
        """The end (or beginning) offset of each partition."""
        with self.lock:
            tps = [TopicPartition(topic, p) for p in partitions]
            c = self._client()
            found = c.end_offsets(tps) if end else c.beginning_offsets(tps)
            return {tp.partition: o for tp, o in found.items()}

    def read(self, topic: str, partition: int, start: int, end: int) -> list[SideRecord]:
        """Records [start, end) of one partition, in offset order."""
        with self.lock:
            tp, c = TopicPartition(topic, partition), self._client()
            c.assign([tp])
            c.seek(tp, start)
            out: list[SideRecord] = []
            deadline = time.monotonic() + 60.0
            while c.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topic}/{partition} [{start}, {end})")
                out += [r for r in c.poll(timeout_ms=500).get(tp, []) if r.offset < end]
            return out

    def close(self) -> None:
        with self.lock:
            if self.consumer is not None:
                self.consumer.close()
                self.consumer = None
