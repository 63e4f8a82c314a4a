"""The capture agent without a broker: counts, ids, loop/limit, damage, timing, verdicts."""

from __future__ import annotations

import io
import shutil
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rich.console import Console

import snf.replay
from snf.batch import PacketBatch
from snf.collect import Collector
from snf.linktypes import LINKTYPE_ETHERNET, LINKTYPE_RAW
from snf.local import LocalPipeline
from snf.pcapng import PcapngWriter
from snf.pipeline import load_pipeline
from snf.replay import ReplayOptions, ReplaySummary, replay, source_id_for
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
    monkeypatch.setattr(snf.replay.time, "perf_counter", fake.perf_counter)
    monkeypatch.setattr(snf.replay.time, "sleep", fake.sleep)
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
    monkeypatch.setattr(snf.replay.time, "perf_counter", fake.perf_counter)
    monkeypatch.setattr(snf.replay.time, "sleep", fake.sleep)
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
