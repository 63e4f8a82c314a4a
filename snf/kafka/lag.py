"""Consumer-group lag on one topic: how many input messages a function has not consumed.

Lag per partition = end offset - where the group resumes: its committed offset,
or the log start offset when it never committed (Faust's auto_offset_reset is
`earliest`, so that is where a new group starts) or when the committed offset
fell off the log through retention.

Everything comes from one admin client (OffsetFetch to the group coordinator,
ListOffsets to the partition leaders): about 10 ms per call on loopback, so a
`LagProbe` that keeps its client open can be asked every second.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import kafka.errors as kerrors
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec

from snf.kafka.admin import UNREACHABLE, admin_client, quiet, retrying
from snf.kafka.errors import BrokerError

__all__ = ["LagInfo", "LagProbe", "PartitionLag", "group_lag"]

_PARTITIONS_TTL = 30.0  # partitions can be added to a topic; notice it eventually


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None  # None: the group never committed on this partition
    start: int  # log start offset
    end: int  # offset of the next message to be written
    lag: int


@dataclass(frozen=True)
class LagInfo:
    group: str
    topic: str
    partitions: tuple[PartitionLag, ...]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def end_total(self) -> int:
        """Sum of end offsets: it moves exactly when new input arrives."""
        return sum(p.end for p in self.partitions)

    @property
    def committed_total(self) -> int:
        return sum(p.committed or 0 for p in self.partitions)


def _partition_ids(admin: KafkaAdminClient, topic: str) -> list[int]:
    (described,) = admin.describe_topics([topic])
    error = kerrors.for_code(described["error_code"])
    if error is not kerrors.NoError:
        raise BrokerError(f"topic {topic!r}: {error.__name__}")
    return sorted(p["partition_index"] for p in described["partitions"])


def _lag(admin: KafkaAdminClient, group: str, topic: str, partitions: list[int]) -> LagInfo:
    tps = [TopicPartition(topic, p) for p in partitions]
    committed = admin.list_group_offsets({group: tps}).get(group, {})
    starts = admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in tps})
    ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps})
    rows = []
    for tp in tps:
        meta = committed.get(tp)
        # The broker answers -1 for a partition the group has no offset for.
        done = meta.offset if meta is not None and meta.offset >= 0 else None
        start, end = starts[tp].offset, ends[tp].offset
        resume = start if done is None else max(done, start)
        rows.append(PartitionLag(tp.partition, done, start, end, max(end - resume, 0)))
    return LagInfo(group, topic, tuple(rows))


def group_lag(bootstrap: str, group: str, topic: str, retries: int = 3) -> LagInfo:
    """One-off lag of `group` on `topic` (a fresh client; retried while nobody answers)."""
    return retrying(bootstrap, retries, lambda a: _lag(a, group, topic, _partition_ids(a, topic)))


class LagProbe:
    """Keeps one admin client open for repeated lag queries; reconnects after an error.

    Errors are raised as BrokerError and never retried here: the caller asks again
    at its next tick anyway.
    """

    def __init__(self, bootstrap: str, timeout: float = 5.0) -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        self._stack: contextlib.ExitStack | None = None
        self._admin: KafkaAdminClient | None = None
        self._partitions: dict[str, tuple[float, list[int]]] = {}

    def _client(self) -> KafkaAdminClient:
        if self._admin is None:
            stack = contextlib.ExitStack()
            with quiet():  # kafka-python logs every refused connection
                self._admin = stack.enter_context(admin_client(self.bootstrap, self.timeout))
            self._stack = stack
        return self._admin

    def _ids(self, admin: KafkaAdminClient, topic: str) -> list[int]:
        cached = self._partitions.get(topic)
        if cached is None or time.monotonic() - cached[0] > _PARTITIONS_TTL:
            cached = (time.monotonic(), _partition_ids(admin, topic))
            self._partitions[topic] = cached
        return cached[1]

    def group_lag(self, group: str, topic: str) -> LagInfo:
        try:
            admin = self._client()
            return _lag(admin, group, topic, self._ids(admin, topic))
        except BrokerError:
            self._partitions.pop(topic, None)
            raise
        except (*UNREACHABLE, kerrors.KafkaError) as exc:
            # The client may be wedged (broker restarted, coordinator moved): start over.
            self.close()
            raise BrokerError(f"lag of {group} on {topic} at {self.bootstrap}: {exc}") from exc

    def close(self) -> None:
        self._partitions.clear()
        stack, self._stack, self._admin = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                stack.close()

    def __enter__(self) -> LagProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
