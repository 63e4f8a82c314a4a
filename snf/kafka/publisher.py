"""KafkaPublisher: send PacketBatches to one topic, one message per batch.

`on_delivered` hears of every batch the brokers acknowledged (acks=all), with
its packets' seqs, from the producer's I/O thread and in any order across
partitions: the replay checkpoint (snf/ingress/checkpoint.py) is built on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError as ClientError
from kafka.errors import KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata

from snf import wire
from snf.errors import SnfError
from snf.guarantee.lineage import CAPTURE_ORIGIN, Lineage
from snf.packet.batch import PacketBatch

__all__ = ["KafkaPublisher", "PublishError", "connect_producer"]

log = logging.getLogger("snf.publisher")


class PublishError(SnfError):
    """Batches could not be delivered."""


def connect_producer(bootstrap: str, tries: int = 4, **config: Any) -> KafkaProducer:
    """A producer, retrying while no broker answers (then a clear error)."""
    delay = 0.5
    for attempt in range(1, tries + 1):
        try:
            return KafkaProducer(
                bootstrap_servers=bootstrap.split(","), bootstrap_timeout_ms=2500, **config
            )
        except KafkaTimeoutError:
            if attempt == tries:
                break
            log.warning(
                "no Kafka broker answers at %s (try %d/%d), retrying in %.1fs",
                bootstrap,
                attempt,
                tries,
                delay,
            )
            time.sleep(delay)
            delay *= 2
    raise PublishError(
        f"no Kafka broker answers at {bootstrap} after {tries} tries; "
        "start one with `snf kafka up` or point --brokers / SNF_BROKERS at a running cluster"
    )


class KafkaPublisher:
    """Callable(partition, batch). Ordered per partition: one request in flight."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        on_delivered: Callable[[np.ndarray], None] | None = None,
        session: str | None = None,
    ) -> None:
        self.topic = topic
        # Each batch's lineage (snf.guarantee.journal) names the replay session, so the first
        # function drops packets a resumed replay sends again (same ids, seq order).
        self.session = session
        self.on_delivered = on_delivered  # called with the seqs of each acknowledged batch
        self.errors: list[str] = []
        self.sent = 0
        self.producer = connect_producer(
            bootstrap,
            acks="all",
            linger_ms=5,
            batch_size=1 << 20,
            max_request_size=8 << 20,
            max_in_flight_requests_per_connection=1,  # keeps per-partition order on retries
            retries=10,
        )

    def __call__(self, partition: int, batch: PacketBatch) -> None:
        headers = None
        if self.session is not None and len(batch):
            last = int(batch.records["seq"].max())
            headers = [Lineage(f"{CAPTURE_ORIGIN}{self.session}/{partition}", last, 0).header()]
        future = self.send_raw(partition, wire.encode(batch), headers)
        if self.on_delivered is not None:
            # Only a copy of the seqs waits for the ack, not the whole batch.
            future.add_callback(self._delivered, batch.records["seq"].copy())

    def send_raw(
        self, partition: int, message: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> FutureRecordMetadata:
        future = self.producer.send(self.topic, value=message, partition=partition, headers=headers)
        future.add_errback(self._failed)
        self.sent += 1
        return future

    def _delivered(self, seqs: np.ndarray, _metadata: object) -> None:
        assert self.on_delivered is not None
        self.on_delivered(seqs)

    def send_end_markers(self, marker: wire.EndMarker, partitions: int) -> None:
        """End of input: one end marker to every partition, after its last batch."""
        for p in range(partitions):
            self.send_raw(p, wire.encode_end_marker(marker))

    def _failed(self, exc: BaseException) -> None:
        self.errors.append(repr(exc))

    def close(self, timeout: float = 60.0) -> None:
        try:
            self.producer.flush(timeout=timeout)
        except ClientError as exc:
            self.errors.append(repr(exc))
        finally:
            self.producer.close(timeout=5)
        if self.errors:
            raise PublishError(
                f"{len(self.errors)} of {self.sent} batches to {self.topic} failed: "
                f"{self.errors[0]}"
            )
