"""The capture agent without a broker: counts, ids, loop/limit, damage, timing, verdicts, resume."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import snf.ingress.replay
from snf.cli.main import main
from snf.egress.collector import Collector
from snf.ingress.checkpoint import (
    AckTracker,
    Checkpoint,
    CheckpointError,
    CheckpointSession,
    ReplayIdentity,
    load,
    save,
)
from snf.ingress.replay import ReplayOptions, ReplaySummary, replay, source_id_for
from snf.packet.batch import PacketBatch
from snf.packet.linktypes import LINKTYPE_ETHERNET, LINKTYPE_RAW
from snf.packet.pcapng_writer import PcapngWriter
from snf.pipeline.loader import load_pipeline
from snf.runtime.local import LocalPipeline
from tests.conftest import traffic_dir
from tests.packets import arp, fragments4, icmp4_echo, read_pcap, tcp4, udp4

EDGE = Path(__file__).resolve().parents[2] / "pipelines" / "perimeter.yaml"
T0 = 1_700_000_000 * 10**9
S = 10**9
Traffic = Callable[[str], Path]  # the conftest fixture
CAPTURES = sorted(p.name for p in traffic_dir().glob("*.pcap"))  # empty: skipped


def _quiet() -> Console:
    return Console(file=io.StringIO())


class Recorder:
    """A publish callable that keeps every (partition, batch) and when it was sent."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.sent: list[tuple[int, PacketBatch]] = []
        self.sent_at: dict[int, float] = {}  # seq -> clock time of its publish

    def __call__(self, partition: int, batch: PacketBatch) -> None:
        self.sent.append((partition, batch))
        if self.clock is not None:
            for _, seq in batch.packet_ids():
                self.sent_at[seq] = self.clock.now

    def by_seq(self) -> dict[int, tuple[int, int, bytes, int]]:
        """seq -> (ts_ns, orig_len, bytes, source id)."""
        out = {}
        for _, batch in self.sent:
            for ts, orig, data, sid, seq, _ in batch.rows():
                assert seq not in out
                out[seq] = (ts, orig, bytes(data), sid)
        return out


def _run(
    captures: list[Path], publish: Callable[[int, PacketBatch], None], **opts: object
) -> ReplaySummary:
    return replay(captures, 4, publish, ReplayOptions(progress=False, **opts), console=_quiet())


def _pcap_records(path: Path) -> list[tuple[int, int, int]]:
    """(record offset, caplen, origlen) of each record of a little-endian microsecond pcap."""
    raw = path.read_bytes()
    assert raw[:4] == b"\xd4\xc3\xb2\xa1"
    out, off = [], 24
    while off + 16 <= len(raw):
        _, _, caplen, origlen = struct.unpack_from("<IIII", raw, off)
        out.append((off, caplen, origlen))
        off += 16 + caplen
    assert off == len(raw)
    return out


# -- counts, summary, ids ------------------------------------------------------


@pytest.mark.parametrize("name", CAPTURES)
def test_replay_sends_every_packet_of_a_real_capture(traffic: Traffic, name: str) -> None:
    path = traffic(name)
    _, expected = read_pcap(path)  # dpkt: an independent reader
    rec = Recorder()
    s = _run([path], rec)
    got = rec.by_seq()
    assert s.packets == len(expected) == len(got)
    assert [got[i][2] for i in range(len(expected))] == [data for _, data in expected]
    assert s.bytes == sum(len(data) for _, data in expected)
    assert s.batches == len(rec.sent)
    assert s.source_id == source_id_for([path])
    assert {sid for *_, sid in got.values()} == {s.source_id}
    per_part = Counter()
    for part, batch in rec.sent:
        assert 0 <= part < 4
        per_part[part] += len(batch)
    assert s.per_partition == dict(per_part)
    assert s.seconds > 0 and s.pps > 0
    assert s.warnings == []


def test_source_id_is_stable_per_file_and_differs_between_files(
    traffic: Traffic, tmp_path: Path
) -> None:
    paths = [traffic(n) for n in CAPTURES]
    ids = [source_id_for([p]) for p in paths]
    assert ids == [source_id_for([p]) for p in paths]
    assert len(set(ids)) == len(ids)
    assert all(0 <= i < 1 << 63 for i in ids)
    a, b = paths[0], paths[1]
    assert len({source_id_for([a, b]), source_id_for([b, a]), ids[0], ids[1]}) == 4
    copy = tmp_path / a.name
    shutil.copyfile(a, copy)  # the same file elsewhere: the same packet ids
    assert source_id_for([copy]) == ids[0]


def test_replay_of_the_same_file_twice_gives_the_same_ids(traffic: Traffic) -> None:
    path = traffic("zeek-wikipedia.pcap")
    first, second = Recorder(), Recorder()
    s1, s2 = _run([path], first), _run([path], second)
    assert s1.source_id == s2.source_id
    assert first.by_seq() == second.by_seq()


def test_loop_sends_every_packet_again_with_seqs_continuing(traffic: Traffic) -> None:
    path = traffic("zeek-http-vlan.pcap")
    _, expected = read_pcap(path)
    n = len(expected)
    rec = Recorder()
    s = _run([path], rec, loop=3)
    got = rec.by_seq()
    assert s.packets == 3 * n
    assert sorted(got) == list(range(3 * n))
    assert [got[i][2] for i in range(3 * n)] == [data for _, data in expected] * 3


@pytest.mark.parametrize(("loop", "limit"), [(1, 50), (1, 1), (3, 751 + 7), (1, 10_000)])
def test_limit_stops_exactly(traffic: Traffic, loop: int, limit: int) -> None:
    path = traffic("zeek-http-bro.org.pcap")
    rec = Recorder()
    s = _run([path], rec, loop=loop, limit=limit)
    want = min(limit, 751 * loop)
    assert s.packets == want
    assert sorted(rec.by_seq()) == list(range(want))


@pytest.mark.parametrize("cut_in", ["data", "header"])
def test_truncated_capture_warns_and_keeps_every_complete_packet(
    traffic: Traffic, tmp_path: Path, cut_in: str
) -> None:
    source = traffic("zeek-http-bro.org.pcap")
    raw = source.read_bytes()
    records = _pcap_records(source)
    k = len(records) * 2 // 3
    off, caplen, _ = records[k]
    cut = off + 16 + caplen // 2 if cut_in == "data" else off + 7
    damaged = tmp_path / "cut.pcap"
    damaged.write_bytes(raw[:cut])

    rec = Recorder()
    s = _run([damaged], rec)
    got = rec.by_seq()
    assert s.packets == k
    assert [got[i][2] for i in range(k)] == [raw[o + 16 : o + 16 + c] for o, c, _ in records[:k]]
    assert [got[i][1] for i in range(k)] == [orig for _, _, orig in records[:k]]
    assert len(s.warnings) == 1
    assert "cut.pcap" in s.warnings[0] and "truncated" in s.warnings[0]


# -- timing, with a fake clock -------------------------------------------------


@dataclass
class FakeClock:
    """perf_counter/sleep stand-ins: sleeping advances time; each reading costs `tick`."""

    now: float = 1000.0
    tick: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(tick=0.0005)
    monkeypatch.setattr(snf.ingress.replay.time, "perf_counter", fake.perf_counter)
    monkeypatch.setattr(snf.ingress.replay.time, "sleep", fake.sleep)
    return fake


def _write(path: Path, frames: list[tuple[int, bytes]], linktype: int = LINKTYPE_ETHERNET) -> Path:
    with PcapngWriter(path) as w:
        for ts, data in frames:
            w.write(linktype, ts, data)
    return path


OFFSETS = [0.0, 0.5, 1.0, 2.0, 4.0]


@pytest.fixture
def five(tmp_path: Path) -> Path:
    """Five packets of five flows at 0, 0.5, 1, 2 and 4 s."""
    frames = [
        (T0 + round(t * S), udp4("10.0.0.1", "10.0.0.2", 1000 + i, 53))
        for i, t in enumerate(OFFSETS)
    ]
    return _write(tmp_path / "five.pcapng", frames)


@pytest.mark.parametrize(
    ("opts", "due"),
    [
        ({"speed": 1.0}, OFFSETS),
        ({"speed": 4.0}, [t / 4 for t in OFFSETS]),
        ({"speed": 0.5}, [t * 2 for t in OFFSETS]),
        ({"pps": 10.0}, [i / 10 for i in range(5)]),
        ({"pps": 10.0, "speed": 4.0}, [i / 10 for i in range(5)]),  # pps wins
    ],
)
def test_timed_replay_releases_each_packet_when_due(
    clock: FakeClock, five: Path, opts: dict, due: list[float]
) -> None:
    rec = Recorder(clock)
    s = _run([five], rec, **opts)
    assert s.packets == 5
    start = rec.sent_at[0]
    released = [rec.sent_at[i] - start for i in range(5)]
    # Due times are absolute: the clock's own cost per reading never accumulates.
    assert released == pytest.approx(due, abs=0.003)
    assert len(clock.sleeps) == 4
    assert sum(clock.sleeps) == pytest.approx(due[-1], abs=0.003)
    assert s.seconds == pytest.approx(due[-1], abs=0.01)


def test_top_speed_never_sleeps(clock: FakeClock, five: Path) -> None:
    rec = Recorder(clock)
    assert _run([five], rec).packets == 5
    assert clock.sleeps == []
    assert len(rec.sent) == len({p for p, _ in rec.sent})  # one batch per partition


def test_timed_replay_keeps_captured_timing_on_every_loop(clock: FakeClock, five: Path) -> None:
    rec = Recorder(clock)
    assert _run([five], rec, speed=1.0, loop=2).packets == 10
    start = rec.sent_at[0]
    released = [rec.sent_at[i] - start for i in range(10)]
    assert released == pytest.approx(OFFSETS + [4.0 + t for t in OFFSETS], abs=0.01)


# -- verdicts do not depend on replay speed ---------------------------------------


def _rev(c: tuple[str, str, int, int]) -> tuple[str, str, int, int]:
    return c[1], c[0], c[3], c[2]


def _edge_traffic() -> list[tuple[float, bytes]]:
    """Crafted traffic through perimeter.yaml's firewall: verdicts depend on state and time."""
    web = ("10.0.0.1", "93.184.216.34", 40000, 80)
    dns = ("10.0.0.1", "8.8.8.8", 5353, 53)
    frags = fragments4("10.0.0.1", "8.8.8.8", 1234, 53, bytes(3000), ip_id=7)
    frags_bad = fragments4("10.0.0.9", "8.8.8.8", 1234, 9999, bytes(2000), ip_id=8)
    orphan = fragments4("10.0.0.4", "8.8.8.8", 1234, 53, bytes(2000), ip_id=9)[1]
    return [
        (0.000, tcp4(*web, "S")),  # allowed by rule 0: opens the connection
        (0.020, tcp4(*_rev(web), "SA")),  # reply: passes on state only
        (0.021, tcp4(*web, "A")),
        (0.030, tcp4("198.51.100.7", "10.0.0.2", 443, 40001, "SA")),  # unsolicited: default
        (0.500, tcp4("10.0.0.3", "93.184.216.34", 40002, 22, "S")),  # no rule: default
        (1.000, udp4(*dns)),
        (1.050, udp4(*_rev(dns))),
        (1.060, icmp4_echo("10.0.0.1", "8.8.8.8", ident=9)),
        (1.070, icmp4_echo("8.8.8.8", "10.0.0.1", ident=9, reply=True)),
        (2.000, arp()),
        (3.000, frags[0]),
        (3.001, frags[1]),
        (3.002, frags[2]),
        (3.500, frags_bad[0]),
        (3.510, frags_bad[1]),
        (4.000, orphan),  # later fragment whose first was never seen
        (5.000, tcp4()[:20]),  # Ethernet + 6 bytes of IPv4: malformed
        (40.000, udp4(*_rev(dns))),  # after the 30 s UDP timeout: no longer a reply
        (40.500, tcp4(*_rev(web), "A")),  # TCP connection still live
    ]


def _contents(collector: Collector) -> dict:
    return {
        where: {pid: (p.reason, p.ts_ns, p.orig_len, p.data) for pid, p in bucket.items()}
        for where, bucket in collector.packets.items()
    }


def _local_run(
    path: Path, monkeypatch: pytest.MonkeyPatch, speed: float | None
) -> tuple[LocalPipeline, list[list[tuple[int, int]]]]:
    fake = FakeClock(tick=0.0001)
    monkeypatch.setattr(snf.ingress.replay.time, "perf_counter", fake.perf_counter)
    monkeypatch.setattr(snf.ingress.replay.time, "sleep", fake.sleep)
    local = LocalPipeline(load_pipeline(EDGE))
    batches: list[list[tuple[int, int]]] = []

    def publish(part: int, batch: PacketBatch) -> None:
        batches.append(batch.packet_ids())
        local(part, batch)

    replay([path], local.pipeline.partitions, publish, ReplayOptions(speed=speed, progress=False))
    assert local.collector.duplicates == 0 and local.collector.conflicts == 0
    return local, batches


@pytest.mark.parametrize("capture", ["crafted", "tcpreplay-test.pcap", "zeek-wikipedia.pcap"])
def test_verdicts_do_not_depend_on_replay_speed(
    traffic: Traffic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capture: str
) -> None:
    if capture == "crafted":
        frames = [(T0 + round(t * S), data) for t, data in _edge_traffic()]
        path = _write(tmp_path / "edge.pcapng", frames)
    else:
        path = traffic(capture)
    fast, fast_batches = _local_run(path, monkeypatch, None)
    slow, slow_batches = _local_run(path, monkeypatch, 2.0)
    assert fast_batches != slow_batches  # batch boundaries really differ
    assert _contents(fast.collector) == _contents(slow.collector)
    assert fast.collector.total == slow.collector.total > 0
    drops = fast.collector.reasons(("fw", "drop"))
    assert fast.collector.count(("", "egress")) > 0 and drops
    if capture == "crafted":
        assert drops == {"default": 5, "fragment": 1, "malformed": 1}
        assert fast.collector.count(("", "egress")) == 12


def test_verdicts_do_not_depend_on_replay_speed_across_link_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "two-interfaces.pcapng"
    with PcapngWriter(path) as w:
        w.write(LINKTYPE_RAW, T0, tcp4("10.0.0.1", "93.184.216.34", 40000, 80, "S", ether=False))
        w.write(LINKTYPE_ETHERNET, T0 + S, tcp4("93.184.216.34", "10.0.0.1", 80, 40000, "SA"))
    fast, _ = _local_run(path, monkeypatch, None)
    slow, _ = _local_run(path, monkeypatch, 1.0)
    assert slow.collector.count(("", "egress")) == 2  # timed: SYN first, then the reply
    assert _contents(fast.collector) == _contents(slow.collector)


# -- resume from a checkpoint (snf/ingress/checkpoint.py) -------------------------

RESUME_CAPTURE = "zeek-http-bro.org.pcap"  # 751 packets, replayed 3 times below


class Died(Exception):
    """The capture agent's death, mid-replay."""


class OutOfOrderAcker:
    """A publisher whose broker acknowledges batches in a random order, then dies.

    At most `window` batches are in flight; each new one makes the broker ack
    a random in-flight batch, so partitions are acknowledged out of order.
    After `die_after` batches the agent dies with batches still unacked.
    """

    def __init__(self, on_delivered: Callable, die_after: int, window: int = 8) -> None:
        self.on_delivered = on_delivered
        self.die_after = die_after
        self.window = window
        self.rng = random.Random(die_after)
        self.sent: list[tuple[int, PacketBatch]] = []
        self.in_flight: list[PacketBatch] = []
        self.acked: set[int] = set()

    def __call__(self, partition: int, batch: PacketBatch) -> None:
        if len(self.sent) == self.die_after:
            raise Died
        self.sent.append((partition, batch))
        self.in_flight.append(batch)
        while len(self.in_flight) > self.window:
            done = self.in_flight.pop(self.rng.randrange(len(self.in_flight)))
            self.acked.update(done.records["seq"].tolist())
            self.on_delivered(done.records["seq"])

    def prefix(self) -> int:
        """The highest seq with every seq up to it acknowledged (-1: none)."""
        n = 0
        while n in self.acked:
            n += 1
        return n - 1


def _identity(captures: list[Path], **changes: object) -> ReplayIdentity:
    fields: dict = {
        "source_id": source_id_for(captures),
        "loop": 3,
        "limit": None,
        "pipeline": "edge",
        "topic": "snf.edge.ingress",
        "partitions": 4,
        "routing": "partitioned by flow",
    }
    return ReplayIdentity.of(captures, **{**fields, **changes})


def _session_run(
    path: Path, captures: list[Path], publish_for: Callable, *, resume: bool, **opts: object
) -> tuple[CheckpointSession, object, ReplaySummary | None]:
    """One replay under a checkpoint session, as `snf replay` runs it.

    publish_for(on_delivered) makes the publisher; a Died publisher ends the run."""
    with CheckpointSession(path, _identity(captures), resume=resume) as session:
        publish = publish_for(session.tracker.acked)
        o = ReplayOptions(progress=False, loop=3, max_packets=50, skip=session.resume_at, **opts)
        try:
            summary = replay(captures, 4, publish, o, console=_quiet())
        except Died:
            return session, publish, None
        session.finish(ended=False)
    return session, publish, summary


class AckAll(Recorder):
    """A Recorder whose broker acknowledges every batch at once."""

    def __init__(self, on_delivered: Callable) -> None:
        super().__init__()
        self.on_delivered = on_delivered

    def __call__(self, partition: int, batch: PacketBatch) -> None:
        super().__call__(partition, batch)
        self.on_delivered(batch.records["seq"])


def _partitions(rec: Recorder) -> dict[int, int]:
    return {seq: part for part, batch in rec.sent for _, seq in batch.packet_ids()}


@pytest.mark.parametrize("seed", range(20))
def test_ack_tracker_keeps_the_contiguous_acked_prefix(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randrange(1, 600)
    by_part: dict[int, list[int]] = {}
    for seq in range(n):  # packets spread over 4 partitions, as the batcher does
        by_part.setdefault(rng.randrange(4), []).append(seq)
    batches = []
    for seqs in by_part.values():
        while seqs:
            size = rng.randrange(1, 40)
            batches.append(seqs[:size])
            seqs = seqs[size:]
    rng.shuffle(batches)  # the brokers acknowledge them in any order
    tracker, acked = AckTracker(), set()
    for batch in batches:
        tracker.acked(np.array(batch, dtype="<u8"))
        acked.update(batch)
        # Never the max acked: the lowest unacknowledged seq holds it back.
        assert tracker.last == min(set(range(n + 1)) - acked) - 1
    assert tracker.last == n - 1


def test_checkpoint_holds_the_contiguous_acked_prefix_when_the_agent_dies(
    traffic: Traffic, tmp_path: Path
) -> None:
    captures = [traffic(RESUME_CAPTURE)]
    path = tmp_path / "ckpt.json"
    _, dead, _ = _session_run(
        path, captures, lambda ack: OutOfOrderAcker(ack, die_after=25), resume=False
    )
    assert isinstance(dead, OutOfOrderAcker)
    saved = json.loads(path.read_text())
    assert 0 < saved["acked_seq"] == dead.prefix() < max(dead.acked)  # out of order: not the max
    assert saved["complete"] is False and saved["flushed"] is False
    assert saved["source_id"] == f"{source_id_for(captures):016x}"
    assert saved["captures"] == [
        {"path": str(captures[0].resolve()), "size": captures[0].stat().st_size,
         "mtime_ns": captures[0].stat().st_mtime_ns}
    ]  # fmt: skip
    assert (saved["pipeline"], saved["partitions"], saved["loop"]) == ("edge", 4, 3)
    assert list(tmp_path.glob(".*.tmp")) == []  # written by rename, nothing left behind


def test_resume_skips_exactly_the_acked_prefix_and_keeps_ids_and_partitions(
    traffic: Traffic, tmp_path: Path
) -> None:
    captures = [traffic(RESUME_CAPTURE)]
    path = tmp_path / "ckpt.json"
    whole = Recorder()  # one uninterrupted run: the reference
    s_whole = replay(
        captures, 4, whole, ReplayOptions(progress=False, loop=3, max_packets=50), _quiet()
    )
    _, dead, _ = _session_run(
        path, captures, lambda ack: OutOfOrderAcker(ack, die_after=20), resume=False
    )
    assert isinstance(dead, OutOfOrderAcker)
    k = dead.prefix()
    session, rec, s = _session_run(path, captures, AckAll, resume=True)
    assert isinstance(rec, AckAll) and s is not None
    assert session.notes == [f"resuming from {path}: packets 0..{k} were acknowledged"]

    total = 3 * 751
    resent = rec.by_seq()
    assert sorted(resent) == list(range(k + 1, total))  # exactly the rest, each once
    assert s.skipped == k + 1 and s.packets == total - k - 1
    reference = whole.by_seq()
    assert all(resent[seq] == reference[seq] for seq in resent)  # same id, bytes, time
    assert all(_partitions(whole)[seq] == part for seq, part in _partitions(rec).items())
    assert s.last_ts_ns == s_whole.last_ts_ns  # a flush after a resume still ends the capture

    # Nothing lost; duplicates only between the prefix and what the dead agent published.
    first = {seq for _, batch in dead.sent for _, seq in batch.packet_ids()}
    assert first | set(resent) == set(range(total))
    duplicates = first & set(resent)
    assert duplicates and min(duplicates) > k and max(duplicates) <= max(first)

    saved = json.loads(path.read_text())
    assert (saved["acked_seq"], saved["complete"]) == (total - 1, True)
    _, again, s3 = _session_run(path, captures, AckAll, resume=True)
    assert s3 is not None and s3.packets == 0 and again.sent == []  # complete: nothing resent


def test_resumed_fragments_follow_their_first_fragment(tmp_path: Path) -> None:
    frames, later = [], []
    for i in range(16):  # sixteen datagrams, cut into three fragments each
        first, *rest = fragments4("10.0.0.1", "10.9.0.2", 2000 + i, 53, bytes(3000), ip_id=i)
        frames.append(first)
        later += rest
    timed = [(T0 + i * S // 100, f) for i, f in enumerate(frames + later)]
    path = _write(tmp_path / "frags.pcapng", timed)
    whole, resumed, alone = Recorder(), Recorder(), Recorder()
    _run([path], whole)
    _run([path], resumed, skip=16)  # killed after the first fragments were acknowledged
    _run([_write(tmp_path / "later.pcapng", [(T0, f) for f in later])], alone)
    want = {seq: part for seq, part in _partitions(whole).items() if seq >= 16}
    assert _partitions(resumed) == want
    # Without the skipped first fragments routed, some would land elsewhere.
    assert [p for _, p in sorted(_partitions(alone).items())] != [
        p for _, p in sorted(want.items())
    ]


@pytest.mark.parametrize(
    ("opts", "due"),
    [({"speed": 1.0}, [0.0, 1.0, 3.0]), ({"pps": 10.0}, [0.0, 0.1, 0.2])],
)
def test_resumed_timing_restarts_at_the_first_packet_sent(
    clock: FakeClock, five: Path, opts: dict, due: list[float]
) -> None:
    rec = Recorder(clock)
    s = _run([five], rec, skip=2, **opts)
    assert (s.skipped, s.packets) == (2, 3)
    start = rec.sent_at[2]
    assert [rec.sent_at[i] - start for i in (2, 3, 4)] == pytest.approx(due, abs=0.003)
    assert sum(clock.sleeps) == pytest.approx(due[-1], abs=0.003)  # no wait for skipped packets


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"partitions": 5}, "partitions 4 -> 5"),
        ({"pipeline": "edge-r1a2b3c"}, "pipeline 'edge' -> 'edge-r1a2b3c'"),
        ({"loop": 2}, "loop 3 -> 2"),
        ({"routing": "partitioned by the key of nat"}, "routing 'partitioned by flow' ->"),
        ({"topic": "snf.other.ingress"}, "topic 'snf.edge.ingress' -> 'snf.other.ingress'"),
        ("touch", "captures ["),
        ("other file", "source_id"),
    ],
)
def test_a_checkpoint_of_another_replay_is_refused(
    traffic: Traffic, tmp_path: Path, change: object, message: str
) -> None:
    capture = tmp_path / RESUME_CAPTURE
    shutil.copyfile(traffic(RESUME_CAPTURE), capture)
    path = tmp_path / "ckpt.json"
    save(path, Checkpoint(_identity([capture]), acked_seq=99))
    if change == "touch":
        os.utime(capture, ns=(0, capture.stat().st_mtime_ns + S))
        identity = _identity([capture])
    elif change == "other file":
        shutil.copyfile(traffic("zeek-wikipedia.pcap"), capture)
        identity = _identity([capture])
    else:
        assert isinstance(change, dict)
        identity = _identity([capture], **change)
    refused = pytest.raises(CheckpointError, match="is for another replay")
    with refused as err, CheckpointSession(path, identity, resume=True):
        pass
    assert message in str(err.value)
    assert json.loads(path.read_text())["acked_seq"] == 99  # refused: left as it was
    # Without --resume the replay starts over and replaces it, and says so.
    with CheckpointSession(path, identity, resume=False) as session:
        assert session.resume_at == 0
        assert "replacing the unfinished replay checkpoint" in session.notes[0]
    assert load(path).identity == identity


def test_cli_refuses_a_mismatching_checkpoint_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = Path(__file__).resolve().parents[2] / "pipelines" / "captures" / "edge.pcapng"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "name: edge\npartitions: 5\nfunctions:\n  - {name: fw, function: firewall}\n"
    )
    path = tmp_path / "ckpt.json"
    save(path, Checkpoint(_identity([capture], loop=1), acked_seq=7))  # 4 partitions
    argv = ["replay", str(capture), "--pipeline", str(pipeline), "--brokers", "127.0.0.1:9"]
    assert main([*argv, "--resume", "--checkpoint", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"error: replay checkpoint {path} is for another replay" in err
    assert "partitions 4 -> 5" in err and "loop" not in err  # only what differs


def test_checkpoint_is_written_during_the_replay_atomically(
    traffic: Traffic, tmp_path: Path
) -> None:
    captures = [traffic(RESUME_CAPTURE)]
    path = tmp_path / "ckpt.json"
    seen: list[int] = []

    def slow_ack(ack: Callable) -> Callable[[int, PacketBatch], None]:
        def publish(part: int, batch: PacketBatch) -> None:
            ack(batch.records["seq"])
            time.sleep(0.002)
            seen.append(json.loads(path.read_text())["acked_seq"])  # never a torn file

        return publish

    with CheckpointSession(path, _identity(captures), resume=False, interval=0.01) as session:
        opts = ReplayOptions(progress=False, loop=3, max_packets=50)
        replay(captures, 4, slow_ack(session.tracker.acked), opts, console=_quiet())
        assert session.checkpoint.complete is False
    assert seen == sorted(seen) and len(set(seen)) > 3  # advanced while the replay ran
    assert load(path).acked_seq == 3 * 751 - 1


def test_one_checkpoint_one_agent(tmp_path: Path, traffic: Traffic) -> None:
    identity = _identity([traffic(RESUME_CAPTURE)])
    path = tmp_path / "ckpt.json"
    with CheckpointSession(path, identity, resume=False) as first:
        in_use = pytest.raises(CheckpointError, match="in use by another snf replay")
        with in_use, CheckpointSession(path, identity, resume=True):
            pass
        first.finish(ended=True)
    with CheckpointSession(path, identity, resume=True) as again:  # released at exit
        assert again.checkpoint.ended and again.end_id == first.end_id


def test_no_checkpoint_to_resume_starts_from_the_first_packet(
    tmp_path: Path, traffic: Traffic
) -> None:
    path = tmp_path / "none" / "ckpt.json"
    with CheckpointSession(path, _identity([traffic(RESUME_CAPTURE)]), resume=True) as s:
        assert s.resume_at == 0 and s.notes == [
            f"no replay checkpoint at {path}: starting from packet 0"
        ]
    path.write_text("{not json")
    unreadable = pytest.raises(CheckpointError, match="cannot read replay checkpoint")
    with unreadable, CheckpointSession(path, _identity([traffic(RESUME_CAPTURE)]), resume=True):
        pass
