"""BatchPublisher: the capture agent's PacketBatches to the ingress topic, one message each.

Each batch carries the lineage of its replay session (snf.guarantee.lineage:
origin `capture:<session>/<partition>`, offset the batch's highest seq), so
the first function drops the packets a resumed replay sends again. With a
control key in the environment every lineage is signed (control_auth).
`on_delivered` hears of every batch the brokers acknowledged, with its
packets' seqs, from the producer's I/O thread and in any order across
partitions: the replay checkpoint (snf/ingress/checkpoint.py) is built on it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import partial

import numpy as np

from snf import wire
from snf.guarantee.control_auth import key_from_env
from snf.guarantee.lineage import CAPTURE_ORIGIN, MAX_LINEAGE_VALUE, Lineage
from snf.kafka.producer import TopicProducer
from snf.packet.batch import PacketBatch

__all__ = ["BatchPublisher"]

END_OFFSET = MAX_LINEAGE_VALUE - 1  # an end marker's lineage: after every batch's


class BatchPublisher:
    """Callable(partition, batch). Ordered per partition: one request in flight."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        on_delivered: Callable[[np.ndarray], None] | None = None,
        session: str | None = None,
        linger_ms: int = 5,
    ) -> None:
        self.topic = topic
        self.session = session  # None: no lineage (tests that publish by hand)
        self.on_delivered = on_delivered  # called with the seqs of each acknowledged batch
        self.producer = TopicProducer(bootstrap, topic, linger_ms)
        self.key = key_from_env()  # the pipeline's control key (snf.guarantee.control_auth)

    def __call__(self, partition: int, batch: PacketBatch) -> None:
        value, headers = wire.encode(batch), None
        if self.session is not None and len(batch):
            last = int(batch.records["seq"].max())
            headers = Lineage(self._origin(partition), last, 0).headers(value, self.key)
        on_acked = None
        if self.on_delivered is not None:
            # Only a copy of the seqs waits for the ack, not the whole batch.
            on_acked = partial(self.on_delivered, batch.records["seq"].copy())
        self.producer.send(partition, value, headers, on_acked)

    def send_end_markers(self, marker: wire.EndMarker, partitions: int) -> None:
        """End of input: one end marker to every partition, after its last batch.
        With a session it carries the session's last lineage (after any seq), so
        a resumed replay's marker counts as sent again and a signed one is trusted."""
        value = wire.encode_end_marker(marker)
        # Without a session (batches published by hand) the marker still needs a
        # lineage to be trusted: one of its own.
        session = self.session or f"end-{secrets.token_hex(6)}"
        for p in range(partitions):
            lineage = Lineage(self._origin(p, session), END_OFFSET, 0)
            self.producer.send(p, value, lineage.headers(value, self.key))

    def _origin(self, partition: int, session: str | None = None) -> str:
        return f"{CAPTURE_ORIGIN}{session or self.session}/{partition}"

    def close(self, timeout: float = 60.0) -> None:
        """Deliver everything; raises PublishError if a batch failed."""
        self.producer.close(timeout)
