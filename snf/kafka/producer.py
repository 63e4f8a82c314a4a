"""TopicProducer: messages to one topic, in order per partition, failures reported at close.

kafka-python's producer with the settings snf's producers share: acks from
every in-sync replica, one request in flight per connection (so a retry
never reorders a partition), large batches. A broker that does not answer
at start is retried, then reported with what to do about it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kafka import KafkaProducer
from kafka.errors import KafkaError as ClientError
from kafka.errors import KafkaTimeoutError

from snf.errors import SnfError
from snf.kafka.errors import BrokerError, PublishError
from snf.kafka.login_probe import refusals
from snf.kafka.security import client_kwargs

__all__ = ["TopicProducer", "connect", "connect_producer"]

T = TypeVar("T")

log = logging.getLogger("snf.kafka.producer")


def connect_producer(bootstrap: str, tries: int = 4, **config: Any) -> KafkaProducer:
    """A producer, retrying while no broker answers (then a clear error)."""
    return connect(KafkaProducer, bootstrap, PublishError, tries, **config)


def connect(
    client: Callable[..., T],
    bootstrap: str,
    error: type[SnfError] = BrokerError,
    tries: int = 4,
    **config: Any,
) -> T:
    """A kafka-python client, retrying while no broker answers, then `error` saying
    what to do."""
    delay = 0.5
    for attempt in range(1, tries + 1):
        try:
            with refusals(bootstrap):  # wrong credentials: at once, not after every try
                return client(
                    bootstrap_servers=bootstrap.split(","),
                    bootstrap_timeout_ms=2500,
                    **client_kwargs(),
                    **config,
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
    raise error(
        f"no Kafka broker answers at {bootstrap} after {tries} tries; "
        "start one with `snf kafka up` or point --brokers / SNF_BROKERS at a running cluster"
    )


class TopicProducer:
    def __init__(self, bootstrap: str, topic: str, linger_ms: int = 5) -> None:
        self.topic = topic
        self.errors: list[str] = []
        self.sent = 0
        self.producer = connect_producer(
            bootstrap,
            acks="all",
            linger_ms=linger_ms,  # live capture: 0, its batches are cut already
            batch_size=1 << 20,
            max_request_size=8 << 20,
            max_in_flight_requests_per_connection=1,  # keeps per-partition order on retries
            retries=10,
        )

    def send(
        self,
        partition: int,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
        on_acked: Callable[[], None] | None = None,
    ) -> Any:
        """Queue one message; `on_acked` runs on the producer's I/O thread once Kafka
        acknowledged it. Returns kafka-python's future."""
        future = self.producer.send(self.topic, value=value, partition=partition, headers=headers)
        future.add_errback(self._failed)
        if on_acked is not None:
            future.add_callback(lambda _metadata: on_acked())
        self.sent += 1
        return future

    def flush(self, timeout: float | None = None) -> None:
        """Until every queued message is acknowledged (or failed)."""
        self.producer.flush(timeout=timeout)

    def _failed(self, exc: BaseException) -> None:
        self.errors.append(repr(exc))

    def close(self, timeout: float = 60.0) -> None:
        """Deliver what is queued, close, and raise PublishError if anything failed."""
        try:
            self.producer.flush(timeout=timeout)
        except ClientError as exc:
            self.errors.append(repr(exc))
        finally:
            self.producer.close(timeout=5)
        if self.errors:
            raise PublishError(
                f"{len(self.errors)} of {self.sent} messages to {self.topic} failed: "
                f"{self.errors[0]}"
            )
