"""KafkaSink: read a pipeline's terminal topics into a Collector.

Completion comes from end markers: at the end of input, every writer
partition of a terminal topic sends one end (an EndMarker on packet topics,
a records block with `end` on record topics), after its last output. Per
end id, the sink counts distinct origins per partition; once every partition
of every terminal has its expected count (Pipeline.terminal_ends), everything
of that input is in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from snf import wire
from snf.egress.collector import Collector
from snf.guarantee.lineage import Lineage, Watermarks
from snf.kafka.topic_reader import TopicReader
from snf.packet.batch import format_packet_id
from snf.packet.pcapng_writer import PcapngWriter
from snf.pipeline.model import PortKey

__all__ = ["KafkaSink", "follow"]


class KafkaSink:
    """Reads every partition of the given topics from the beginning (no group)."""

    def __init__(
        self,
        bootstrap: str,
        topics: dict[str, PortKey],
        ends: dict[str, list[int]] | None = None,
    ) -> None:
        self.topics = topics
        self.ends = ends or {}
        # topic -> partition -> end id -> origins whose end arrived
        self.ends_in: dict[str, dict[int, dict[str, set[str]]]] = {t: {} for t in topics}
        # per terminal partition, the highest lineage read per origin (snf.guarantee.lineage):
        # a message at or below it is an output sent again by a redo after a crash
        self.marks: dict[tuple[str, int], Watermarks] = {}
        self.reader = TopicReader(bootstrap, topics)
        self.partitions = self.reader.partitions

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


def follow(
    sink: KafkaSink,
    out: Path | None,
    on_progress: Callable[[int], None] | None = None,
    idle: float | None = None,
) -> Collector:
    """Stream egress into a pcapng as packets arrive, until interrupted (or `idle`
    seconds pass without news). Each packet is written whole and the file is
    flushed after every poll, so Ctrl-C leaves a valid file of all received."""
    collector = Collector()
    writer = PcapngWriter(out) if out is not None else None
    written: set[tuple[int, int]] = set()

    def write(where: PortKey, batch: wire.PacketBatch) -> None:
        if writer is None or where != ("", "egress"):
            return
        for ts, orig, data, sid, seq, _reason in batch.rows():
            if (sid, seq) in written:
                continue
            written.add((sid, seq))
            comment = f"snf id={format_packet_id(sid, seq)}"
            writer.write(batch.linktype, ts, bytes(data), orig, comment=comment)

    last_news = time.monotonic()
    try:
        while idle is None or time.monotonic() - last_news < idle:
            if sink.poll(collector, on_batch=write):
                last_news = time.monotonic()
                if writer is not None:
                    writer.flush()
                if on_progress:
                    on_progress(collector.total)
    except KeyboardInterrupt:
        pass
    finally:
        if writer is not None:
            writer.close()
    return collector
