"""KafkaSink: read a pipeline's terminal topics into a Collector.

Completion comes from end markers: at the end of input, every writer
partition of a terminal topic sends one end (an EndMarker on packet topics,
a records block with `end` on record topics), after its last output. Per
end id, the sink counts distinct origins per partition; once every partition
of every terminal has its expected count (Pipeline.terminal_ends), everything
of that input is in.

With heads after ingress (the pipeline's `ship: heads`, snf.packet.heads),
the sink also reads the ingress topic (`wholes_from`) and keeps its whole
packets in the collector, which joins each head with its tail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from snf import wire
from snf.egress.collector import Collector
from snf.egress.wholes import WholeStore
from snf.guarantee.lineage import Lineage, Watermarks
from snf.kafka.topic_reader import TopicReader
from snf.packet.batch import format_packet_id
from snf.packet.pcapng_writer import PcapngWriter
from snf.pipeline.model import EGRESS, Pipeline, PortKey

__all__ = ["FOLLOW_WHOLES_BYTES", "MAX_WAITING", "KafkaSink", "follow"]

FOLLOW_WHOLES_BYTES = 512 << 20  # ingress copies a following sink keeps to join heads
MAX_WAITING = 64  # egress batches that wait for their ingress copies before going as heads


class KafkaSink:
    """Reads every partition of the given topics from the beginning (no group)."""

    def __init__(
        self,
        bootstrap: str,
        topics: dict[str, PortKey],
        ends: dict[str, list[int]] | None = None,
        wholes_from: str | None = None,
    ) -> None:
        self.topics = topics
        self.wholes_from = wholes_from
        self.ends = ends or {}
        # topic -> partition -> end id -> origins whose end arrived
        self.ends_in: dict[str, dict[int, dict[str, set[str]]]] = {t: {} for t in topics}
        # per terminal partition, the highest lineage read per origin (snf.guarantee.lineage):
        # a message at or below it is an output sent again by a redo after a crash
        self.marks: dict[tuple[str, int], Watermarks] = {}
        self.reader = TopicReader(bootstrap, [*topics, *([wholes_from] if wholes_from else [])])
        self.partitions = self.reader.partitions

    @classmethod
    def of(cls, bootstrap: str, pipeline: Pipeline) -> KafkaSink:
        """The sink of a pipeline: its terminals, their ends, and the ingress copies
        its heads are joined with (`ship: heads`)."""
        wholes_from = pipeline.ingress_topic if pipeline.spec.ship == "heads" else None
        return cls(bootstrap, pipeline.sink_topics(), pipeline.terminal_ends(), wholes_from)

    def _end(self, topic: str, partition: int, end_id: str, origin: str) -> None:
        origins = self.ends_in[topic].setdefault(partition, {}).setdefault(end_id, set())
        origins.add(origin or f"#{len(origins)}")

    def poll(
        self,
        collector: Collector,
        timeout_ms: int = 200,
        on_batch: Callable[[PortKey, wire.PacketBatch], None] | None = None,
    ) -> int:
        new = 0
        for topic, partition, records in self.reader.poll(timeout_ms):
            if topic == self.wholes_from:
                _keep_wholes(collector, records)
                continue
            where = self.topics[topic]
            marks = self.marks.setdefault((topic, partition), Watermarks())
            for record in records:
                lineage = Lineage.from_headers(record.headers)
                if not marks.is_new(lineage):
                    collector.redelivered += 1
                    continue
                marks.advance(lineage)
                msg = wire.decode_any(record.value)
                if isinstance(msg, wire.RecordBlock):
                    new += collector.add_records(where, msg.records)
                    if msg.end:
                        self._end(topic, partition, msg.end, msg.origin)
                        new += 1  # progress, even when the block is empty
                elif isinstance(msg, wire.EndMarker):
                    self._end(topic, partition, msg.end_id, msg.origin)
                    new += 1
                else:
                    new += collector.add(where, msg)
                    if on_batch is not None:
                        on_batch(where, msg)
        return new

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
        collector: Collector,
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


def _keep_wholes(collector: Collector, records: list) -> None:
    for record in records:
        try:
            msg = wire.decode_any(record.value)
        except wire.WireError:
            continue  # the workers dead-letter what they cannot read; nothing to join
        if isinstance(msg, wire.PacketBatch):
            collector.add_payloads(msg)


def follow(
    sink: KafkaSink,
    out: Path | None,
    on_progress: Callable[[int], None] | None = None,
    idle: float | None = None,
) -> Collector:
    """Stream egress into a pcapng as packets arrive, until interrupted (or `idle`
    seconds pass without news). Each packet is written whole (a head once its
    ingress copy is in, waiting at most MAX_WAITING batches) and the file is
    flushed after every poll, so Ctrl-C leaves a valid file of all received."""
    collector = Collector(wholes=WholeStore(max_bytes=FOLLOW_WHOLES_BYTES))
    writer = PcapngWriter(out) if out is not None else None
    written: set[tuple[int, int]] = set()
    waiting: list[wire.PacketBatch] = []

    def write(batch: wire.PacketBatch) -> None:
        assert writer is not None
        rec = batch.records
        ids = batch.packet_ids()
        datas = collector.wholes.join(ids, batch.packets(), rec["cap_len"], rec["full_len"])
        for (ts, orig, _, sid, seq, _reason), data in zip(batch.rows(), datas, strict=True):
            if (sid, seq) in written:
                continue
            written.add((sid, seq))
            comment = f"snf id={format_packet_id(sid, seq)}"
            writer.write(batch.linktype, ts, bytes(data), orig, comment=comment)

    def arrived(where: PortKey, batch: wire.PacketBatch) -> None:
        if writer is not None and where == EGRESS:
            waiting.append(batch)

    def write_ready(final: bool = False) -> None:
        while waiting and (
            final or len(waiting) > MAX_WAITING or collector.wholes.has_all(waiting[0])
        ):
            write(waiting.pop(0))

    last_news = time.monotonic()
    try:
        while idle is None or time.monotonic() - last_news < idle:
            if sink.poll(collector, on_batch=arrived):
                last_news = time.monotonic()
                write_ready()
                if writer is not None:
                    writer.flush()
                if on_progress:
                    on_progress(collector.total)
    except KeyboardInterrupt:
        pass
    finally:
        if writer is not None:
            write_ready(final=True)
            writer.close()
    return collector
