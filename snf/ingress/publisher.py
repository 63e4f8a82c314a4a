"""BatchPublisher: the capture agent's PacketBatches to the ingress topic, one message each.

Each batch carries the lineage of its replay session (snf.guarantee.lineage:
origin `capture:<session>/<partition>`, offset the batch's highest seq), so
the first function drops the packets a resumed replay sends again.
`on_delivered` hears of every batch the brokers acknowledged, with its
packets' seqs, from the producer's I/O thread and in any order across
partitions: the replay checkpoint (snf/ingress/checkpoint.py) is built on it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from snf import wire
from snf.guarantee.lineage import CAPTURE_ORIGIN, Lineage
from snf.kafka.producer import TopicProducer
from snf.packet.batch import PacketBatch

__all__ = ["BatchPublisher"]


class BatchPublisher:
    """Callable(partition, batch). Ordered per partition: one request in flight."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        on_delivered: Callable[[np.ndarray], None] | None = None,
        session: str | None = None,
    ) -> None:
        self.topic = topic
        self.session = session  # None: no lineage (tests that publish by hand)
        self.on_delivered = on_delivered  # called with the seqs of each acknowledged batch
        self.producer = TopicProducer(bootstrap, topic)

    def __call__(self, partition: int, batch: PacketBatch) -> None:
        headers = None
        if self.session is not None and len(batch):
            last = int(batch.records["seq"].max())
            headers = [Lineage(f"{CAPTURE_ORIGIN}{self.session}/{partition}", last, 0).header()]
        on_acked = None
        if self.on_delivered is not None:
            # Only a copy of the seqs waits for the ack, not the whole batch.
            on_acked = partial(self.on_delivered, batch.records["seq"].copy())
        self.producer.send(partition, wire.encode(batch), headers, on_acked)

    def send_end_markers(self, marker: wire.EndMarker, partitions: int) -> None:
        """End of input: one end marker to every partition, after its last batch."""
        for p in range(partitions):
            self.producer.send(p, wire.encode_end_marker(marker))

    def close(self, timeout: float = 60.0) -> None:
        """Deliver everything; raises PublishError if a batch failed."""
        self.producer.close(timeout)
