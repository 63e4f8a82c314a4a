"""The sink without a broker: foreign messages skipped and counted, and the following
Stream's bounded dedup and files (pcapng, JSON Lines) written as messages come."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from snf import wire
from snf.egress.collector import Collector
from snf.egress.sink import KafkaSink
from snf.egress.stream import Stream
from snf.guarantee.lineage import Lineage
from snf.packet.batch import PacketBatch
from snf.packet.capture_file import read_capture
from snf.packet.linktypes import LINKTYPE_ETHERNET
from tests.packets import tcp4

EGRESS = ("", "egress")
DROP = ("fw", "drop")
ALERTS = ("ids", "alerts")
TOPICS = {"t.egress": EGRESS, "t.drop": DROP, "t.alerts": ALERTS}
KINDS = {"t.egress": {"packets"}, "t.drop": {"packets"}, "t.alerts": {"records"}}
SRC = 0x5EED


class Message(NamedTuple):
    value: Any
    headers: list[tuple[str, bytes]]


class FakeReader:
    """Hands out the queued messages once, as TopicReader.poll does."""

    partitions: dict[str, int] = {}

    def __init__(self) -> None:
        self.queue: list[tuple[str, int, list[Message]]] = []

    def poll(self, timeout_ms: int) -> list[tuple[str, int, list[Message]]]:
        out, self.queue = self.queue, []
        return out

    def close(self) -> None:
        pass


def batch(*seqs: int, reason: str = "") -> PacketBatch:
    rows = [(10**18 + q, 60 + q, tcp4(sport=1000 + q), SRC, q, reason) for q in seqs]
    return PacketBatch.from_rows(LINKTYPE_ETHERNET, rows)


def msg(value: Any, offset: int, origin: str = "fw/0") -> Message:
    return Message(value, [Lineage(origin, offset, 0).header()])


def sink_with(*messages: tuple[str, Message]) -> KafkaSink:
    reader = FakeReader()
    sink = KafkaSink("", TOPICS, kinds=KINDS, reader=reader)  # type: ignore[arg-type]
    for topic, m in messages:
        reader.queue.append((topic, 0, [m]))
    return sink


def test_foreign_messages_are_skipped_counted_and_never_stop_the_sink() -> None:
    records = wire.encode_record_blocks([{"ts_ns": 1, "alert": "x"}])[0]
    sink = sink_with(
        ("t.egress", msg(wire.encode(batch(0, 1)), 1)),
        ("t.egress", Message(None, [])),  # a tombstone
        ("t.egress", Message(b"hello, not snf", [])),
        ("t.egress", Message(wire.encode(batch(7)), [("snf-lineage", b"\xff|x|y")])),
        ("t.egress", msg(records, 2)),  # records on a packet topic
        ("t.alerts", msg(wire.encode(batch(8)), 1, "ids/0")),  # packets on a record topic
        ("t.alerts", msg(records, 2, "ids/0")),
        ("t.egress", msg(wire.encode(batch(2)), 3)),
    )
    col = Collector()
    sink.poll(col)
    assert col.count(EGRESS) == 3 and len(col.records[ALERTS]) == 1
    assert sink.foreign == {
        "null value": 1,
        "not snf wire format": 1,
        "bad headers": 1,
        "records on a topic of packets": 1,
        "packets on a topic of records": 1,
    }


def test_stream_writes_as_it_comes_and_removes_copies(tmp_path: Path) -> None:
    out, events = tmp_path / "out.pcapng", tmp_path / "ev"
    stream = Stream(out, events)
    sink = sink_with(
        ("t.egress", msg(wire.encode(batch(3, 1)), 1)),
        ("t.egress", msg(wire.encode(batch(3, 1)), 1)),  # a redo's copy: same lineage
        ("t.egress", msg(wire.encode(batch(1, 2)), 2)),  # a repeat of 1 in a new message
        ("t.drop", msg(wire.encode(batch(0, reason="default")), 1)),
        ("t.alerts", msg(wire.encode_record_blocks([{"ts_ns": 5, "a": 1}] * 2)[0], 1, "ids/0")),
    )
    sink.poll(stream)
    stream.flush()
    assert [p.ts_ns - 10**18 for p in read_capture(out)] == [3, 1, 2]  # arrival order
    drops = [json.loads(x) for x in (events / "fw.drop.jsonl").read_text().splitlines()]
    assert [(d["packet_id"], d["reason"]) for d in drops] == [(f"{SRC:016x}:0", "default")]
    assert (events / "ids.alerts.jsonl").read_text() == '{"ts_ns": 5, "a": 1}\n'
    stream.close()
    summary = stream.summary()
    assert (summary["egress"], summary["distinct"], summary["records"]) == (3, 4, 1)
    assert (summary["duplicates"], summary["redelivered"], summary["duplicate_records"]) == (
        1,
        1,
        1,
    )


def test_stream_dedup_is_a_window(tmp_path: Path) -> None:
    stream = Stream(tmp_path / "out.pcapng", window=64, records_window=2)
    assert stream.add(EGRESS, batch(*range(10))) == 10
    assert stream.add(EGRESS, batch(5)) == 0  # within the window
    assert stream.add(EGRESS, batch(200)) == 1  # moves the window past 0..9
    assert stream.add(EGRESS, batch(5)) == 1  # too old to tell: written again
    for n in range(3):
        stream.add_records(ALERTS, [{"n": n}])
    assert stream.add_records(ALERTS, [{"n": 0}]) == 1  # forgotten: the window holds 2
    stream.close()
    s = stream.summary()
    assert (s["duplicates"], s["unchecked"], s["records_evicted"]) == (1, 1, 2)
    assert s["evicted"] >= 10
    assert len(list(read_capture(tmp_path / "out.pcapng"))) == 12


def test_follow_stops_on_ctrl_c_between_polls_not_inside_one() -> None:
    """SIGINT during a poll lets that poll finish (kafka-python is never cut mid-fetch),
    then `follow` returns with what it read and puts the handler back as it was
    (default, or ignored where a shell started us in the background); SIGTERM likewise."""
    import os
    import signal

    from snf.egress.sink import follow

    for sig in (signal.SIGINT, signal.SIGTERM):
        sink = sink_with(("t.egress", msg(wire.encode(batch(0, 1)), 1)))
        reader = sink.reader
        finished: list[int] = []
        inner = reader.poll

        def poll(
            timeout_ms: int, inner: Any = inner, sig: int = sig, finished: list = finished
        ) -> list:
            os.kill(os.getpid(), sig)  # arrives while kafka-python would be fetching
            out = inner(timeout_ms)
            finished.append(len(out))
            return out

        reader.poll = poll  # type: ignore[method-assign]
        col = Collector()
        before = signal.getsignal(sig)
        follow(sink, col)
        assert finished == [1] and col.count(EGRESS) == 2
        assert signal.getsignal(sig) == before
