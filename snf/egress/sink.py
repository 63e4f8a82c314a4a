"""KafkaSink: read a pipeline's terminal topics into a Collector or a Stream.

Completion comes from end markers: at the end of input, every writer
partition of a terminal topic sends one end (an EndMarker on packet topics,
a records block with `end` on record topics), after its last output. Per
end id, the sink counts distinct origins per partition; once every partition
of every terminal has its expected count (Pipeline.terminal_ends), everything
of that input is in.

With heads after ingress (the pipeline's `ship: heads`, snf.packet.heads),
the sink also reads the ingress topic (`wholes_from`) and keeps its whole
packets in the collector, which joins each head with its tail.

Anything on a terminal topic that is not snf's (`topic:NAME` topics are
shared with other producers) is skipped and counted by kind in `foreign`,
with one log line per kind: a null value, bad headers, not the wire format,
or the wrong kind of message for the topic (packets on a record port's
topic, records on a packet port's). The sink never stops for one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from snf import wire
from snf.guarantee.control_auth import key_from_env
from snf.guarantee.lineage import Lineage, Watermarks, signed
from snf.kafka.topic_reader import TopicReader
from snf.pipeline.model import Pipeline, PortKey
from snf.signals import stop_on_signals

__all__ = ["KafkaSink", "Receiver", "follow", "topic_kinds"]

log = logging.getLogger("snf.egress.sink")

PACKETS, RECORDS = "packets", "records"


class Receiver(Protocol):
    """What a sink fills: the one-shot Collector, or the following Stream."""

    redelivered: int
    total: int

    def add(self, where: PortKey, batch: wire.PacketBatch) -> int: ...

    def add_records(self, where: PortKey, records: list[dict[str, Any]]) -> int: ...

    def add_payloads(self, batch: wire.PacketBatch) -> None: ...


def topic_kinds(pipeline: Pipeline) -> dict[str, set[str]]:
    """Terminal topic -> the kinds of message its writers send (packets, records)."""
    return {
        topic: {RECORDS if port in fn.cls.record_ports else PACKETS for fn, port, _ in writers}
        for topic, writers in pipeline.terminals().items()
    }


class KafkaSink:
    """Reads every partition of the given topics from the beginning (no group), or
    from the end (`from_end`: a live sink, which must never send the past again)."""

    def __init__(
        self,
        bootstrap: str,
        topics: dict[str, PortKey],
        ends: dict[str, list[int]] | None = None,
        wholes_from: str | None = None,
        kinds: dict[str, set[str]] | None = None,
        reader: TopicReader | None = None,  # tests pass one that needs no broker
        from_end: bool = False,  # live: only what arrives from now on
    ) -> None:
        self.topics = topics
        self.wholes_from = wholes_from
        self.kinds = kinds or {}  # topic -> kinds accepted there (default: both)
        self.foreign: Counter[str] = Counter()  # skipped messages by kind of problem
        # With the pipeline's control key, only messages its workers signed count
        # (snf.guarantee.control_auth): a forged lineage cannot hide real output.
        self.key = key_from_env()
        self.ends = ends or {}
        # topic -> partition -> end id -> origins whose end arrived
        self.ends_in: dict[str, dict[int, dict[str, set[str]]]] = {t: {} for t in topics}
        # per terminal partition, the highest lineage read per origin (snf.guarantee.lineage):
        # a message at or below it is an output sent again by a redo after a crash
        self.marks: dict[tuple[str, int], Watermarks] = {}
        wanted = [*topics, *([wholes_from] if wholes_from else [])]
        self.reader = reader or TopicReader(bootstrap, wanted, from_end)
        self.partitions = self.reader.partitions

    @classmethod
    def of(
        cls, bootstrap: str, pipeline: Pipeline, wholes: bool = True, from_end: bool = False
    ) -> KafkaSink:
        """The sink of a pipeline: its terminals, their ends, and (`wholes`) the
        ingress copies its heads are joined with (`ship: heads`)."""
        heads = wholes and pipeline.spec.ship == "heads"
        wholes_from = pipeline.ingress_topic if heads else None
        ends, kinds = pipeline.terminal_ends(), topic_kinds(pipeline)
        return cls(bootstrap, pipeline.sink_topics(), ends, wholes_from, kinds, from_end=from_end)

    def _end(self, topic: str, partition: int, end_id: str, origin: str) -> None:
        origins = self.ends_in[topic].setdefault(partition, {}).setdefault(end_id, set())
        origins.add(origin or f"#{len(origins)}")

    def poll(
        self,
        receiver: Receiver,
        timeout_ms: int = 200,
        on_batch: Callable[[PortKey, wire.PacketBatch], None] | None = None,
    ) -> int:
        new = 0
        for topic, partition, records in self.reader.poll(timeout_ms):
            if topic == self.wholes_from:
                _keep_wholes(receiver, records)
                continue
            where = self.topics[topic]
            marks = self.marks.setdefault((topic, partition), Watermarks())
            for record in records:
                got = self._decode(topic, record)
                if got is None:
                    continue
                lineage, msg = got
                if not marks.is_new(lineage):
                    receiver.redelivered += 1
                    continue
                marks.advance(lineage)
                if isinstance(msg, wire.RecordBlock):
                    new += receiver.add_records(where, msg.records)
                    if msg.end:
                        self._end(topic, partition, msg.end, msg.origin)
                        new += 1  # progress, even when the block is empty
                elif isinstance(msg, wire.EndMarker):
                    self._end(topic, partition, msg.end_id, msg.origin)
                    new += 1
                else:
                    new += receiver.add(where, msg)
                    if on_batch is not None:
                        on_batch(where, msg)
        return new

    def _decode(self, topic: str, record: Any) -> tuple[Lineage | None, Any] | None:
        """A record's lineage and message, or None (counted) when it is not snf's."""
        try:
            lineage = Lineage.from_headers(record.headers)
        except (ValueError, TypeError):  # LineageError is a ValueError
            return self._foreign(topic, "bad headers")
        if record.value is None:
            return self._foreign(topic, "null value")
        if self.key is not None and not signed(record.headers, record.value, self.key):
            return self._foreign(topic, "not signed with the control key")
        try:
            msg = wire.decode_any(record.value)
        except wire.WireError:
            return self._foreign(topic, "not snf wire format")
        kinds = self.kinds.get(topic)
        kind = RECORDS if isinstance(msg, wire.RecordBlock) else PACKETS
        if kinds and kind not in kinds and not isinstance(msg, wire.EndMarker):
            return self._foreign(topic, f"{kind} on a topic of {'/'.join(sorted(kinds))}")
        return lineage, msg

    def _foreign(self, topic: str, kind: str) -> None:
        if not self.foreign[kind]:
            log.warning(
                "skipping foreign messages on %s: %s (counted, not logged again)", topic, kind
            )
        self.foreign[kind] += 1
        return None

    def _missing(self, end_id: str) -> dict[str, tuple[int, int]]:
        """Terminal topic -> (partitions complete, partitions) where some end is missing."""
        out = {}
        for topic, expected in self.ends.items():
            got = self.ends_in.get(topic, {})
            done = sum(len(got.get(p, {}).get(end_id, ())) >= n for p, n in enumerate(expected))
            if done < len(expected):
                out[topic] = (done, len(expected))
        return out

    def unended(self, end_id: str) -> list[str]:
        """Terminal topics whose partitions have not all ended, for error messages."""
        return [f"{t} ({d}/{n} partitions)" for t, (d, n) in sorted(self._missing(end_id).items())]

    def ended(self, end_id: str) -> bool:
        """Every partition of every terminal topic has all its ends of this end id."""
        return not self._missing(end_id)

    def collect(
        self,
        collector: Receiver,
        timeout: float,
        *,
        end_id: str | None = None,
        packets: int | None = None,
        check: Callable[[], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> bool:
        """Poll until `packets` distinct packets are in and the end `end_id` has
        ended everywhere (either optional), or `timeout` passes without news."""
        last_news = time.monotonic()
        while (packets is not None and collector.total < packets) or (
            end_id is not None and not self.ended(end_id)
        ):
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
        self.reader.close()


def _keep_wholes(receiver: Receiver, records: list) -> None:
    for record in records:
        try:
            msg = wire.decode_any(record.value)
        except wire.WireError:
            continue  # the workers dead-letter what they cannot read; nothing to join
        if isinstance(msg, wire.PacketBatch):
            receiver.add_payloads(msg)


def follow(
    sink: KafkaSink,
    receiver: Receiver,
    on_progress: Callable[[int], None] | None = None,
    idle: float | None = None,
    after_poll: Callable[[], None] | None = None,
) -> None:
    """Poll into `receiver` until Ctrl-C or SIGTERM (or `idle` seconds pass
    without news), calling `after_poll` after each poll that brought news (a
    Stream's flush: snf.egress.stream).

    The signals set a flag checked between polls (snf.signals): a
    KeyboardInterrupt inside kafka-python's poll once left close() hanging."""
    stop = threading.Event()
    last_news = time.monotonic()
    with stop_on_signals(stop):
        while not stop.is_set() and (idle is None or time.monotonic() - last_news < idle):
            if sink.poll(receiver):
                last_news = time.monotonic()
                if after_poll is not None:
                    after_poll()
                if on_progress:
                    on_progress(receiver.total)
