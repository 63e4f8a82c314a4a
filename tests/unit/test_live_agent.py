"""The live capture agent and the sink's transmit, with the interfaces faked:
source ids carry the arm, each interface has its own publisher, limits and
stops hold, kernel drops are reported, and egress leaves by the other arm,
deduplicated. The real AF_PACKET I/O is tests/unit/test_live_io.py."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from snf.egress.stream import Stream
from snf.packet.batch import PacketBatch
from snf.packet.capture_chunk import CaptureChunk
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.pipeline.loader import PipelineError, load_pipeline
from snf.pipeline.model import EGRESS
from tests.packets import tcp4, udp4


class Stats(NamedTuple):
    received: int
    dropped: int
    frozen: int


class FakeRing:
    """Hands out queued frames per interface, as RingCapture.read does."""

    frames: dict[str, list[list[bytes]]] = {}
    opened: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, interface: str, **kwargs: Any) -> None:
        self.interface = interface
        FakeRing.opened.append((interface, kwargs))
        self.r, self.w = os.pipe()  # a real fd for select()
        if FakeRing.frames.get(interface):
            os.write(self.w, b"x")

    def read(self, timeout_s: float) -> CaptureChunk | None:
        queue = FakeRing.frames.get(self.interface) or []
        if not queue:
            return None
        datas = queue.pop(0)
        if not queue:
            os.read(self.r, 1)
        n = len(datas)
        return CaptureChunk.from_packets(
            range(10**18, 10**18 + n), [len(d) for d in datas], datas, LINKTYPE_ETHERNET
        )

    def fileno(self) -> int:
        return self.r

    def stats(self) -> Stats:
        return Stats(received=100, dropped=3, frozen=0)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@pytest.fixture
def fake_rings(monkeypatch: pytest.MonkeyPatch) -> type[FakeRing]:
    import snf.ingress.live as live

    FakeRing.frames, FakeRing.opened = {}, []
    monkeypatch.setattr(live, "RingCapture", FakeRing)
    return FakeRing


def test_source_ids_carry_the_arm_and_a_fresh_nonce() -> None:
    from snf.live.arms import NO_ARM, arm_of, live_source_id

    a, b = live_source_id(0), live_source_id(0)
    assert arm_of(a) == arm_of(b) == 0 and a != b  # a restarted agent never reuses ids
    assert arm_of(live_source_id(1)) == 1 and arm_of(live_source_id(NO_ARM)) == NO_ARM
    assert all(0 < live_source_id(1) < 1 << 63 for _ in range(100))


def test_capture_publishes_each_interface_under_its_own_source_and_session(
    fake_rings: type[FakeRing],
) -> None:
    from snf.ingress.live import CaptureOptions, capture
    from snf.live.arms import arm_of

    fake_rings.frames = {
        "a0": [[tcp4("10.10.1.2", "198.51.100.10", 40000 + i, 80) for i in range(5)]],
        "b0": [[udp4("198.51.100.10", "10.10.1.2", 53, 5353)] * 2],
    }
    got: dict[str, list[tuple[int, PacketBatch]]] = {}
    sources: dict[str, int] = {}

    def publishers(interface: str, source_id: int) -> Any:
        sources[interface] = source_id
        return lambda part, batch: got.setdefault(interface, []).append((part, batch))

    opts = CaptureOptions(["a0", "b0"], {"a0": 0, "b0": 1}, "tcp or udp", linger_ms=3, limit=7)
    summary = capture(4, publishers, opts)
    assert summary.packets == 7
    assert arm_of(sources["a0"]) == 0 and arm_of(sources["b0"]) == 1
    for name, want in (("a0", 5), ("b0", 2)):
        batches = [b for _, b in got[name]]
        assert sum(len(b) for b in batches) == want
        assert {int(s) for b in batches for s in b.sources} == {sources[name]}
        seqs = sorted(int(q) for b in batches for q in b.records["seq"])
        assert seqs == list(range(want))  # ids count per interface from 0
    counts = summary.interfaces["a0"]
    assert (counts.captured, counts.received, counts.kernel_dropped) == (5, 100, 3)
    assert summary.kernel_dropped == 6
    assert fake_rings.opened[0] == (
        "a0",
        {"bpf": "tcp or udp", "snaplen": 65535, "promisc": False, "block_timeout_ms": 1},
    )


def test_capture_stops_at_its_limit_and_on_the_stop_flag(fake_rings: type[FakeRing]) -> None:
    from snf.ingress.live import CaptureOptions, capture

    fake_rings.frames = {"a0": [[udp4(sport=1000 + i) for i in range(10)]]}
    published: list[int] = []
    opts = CaptureOptions(["a0"], limit=4)
    summary = capture(1, lambda i, s: lambda p, b: published.append(len(b)), opts)
    assert summary.packets == 4 and sum(published) == 4
    stop = threading.Event()
    stop.set()
    assert (
        capture(1, lambda i, s: lambda p, b: None, CaptureOptions(["a0"]), stop=stop).packets == 0
    )


def test_a_quiet_link_sends_at_once_and_a_busy_one_once_per_linger(
    fake_rings: type[FakeRing],
) -> None:
    from snf.ingress.live import CaptureOptions, _Arm

    fake_rings.frames = {"a0": [[udp4(sport=1000 + i)] for i in range(4)] + [[udp4()] * 8]}
    sent: list[int] = []
    opts = CaptureOptions(["a0"], linger_ms=50, max_packets=8)
    arm = _Arm("a0", opts, 1, (), lambda i, s: lambda p, b: sent.append(len(b)))
    arm.drain(None)
    arm.flush(100.0)
    assert sent == [1]  # the first packet after a quiet spell: no wait
    arm.drain(None)
    arm.flush(100.01)
    arm.drain(None)
    arm.flush(100.049)
    assert sent == [1] and arm.due() == pytest.approx(100.05)  # gathering
    arm.drain(None)
    arm.flush(100.05)
    assert sent == [1, 3]  # one message for three packets, 50 ms after the last
    arm.drain(None)  # 8 more: a full batch goes at once, whatever the linger
    assert sent == [1, 3, 8] and arm.due() is None
    arm.close()


class FakeTransmitter:
    def __init__(self, interface: str) -> None:
        self.interface, self.frames = interface, []
        self.sent = self.failed = self.too_big = 0

    def send(self, frames: Sequence[bytes]) -> None:
        self.frames += list(frames)
        self.sent += len(frames)

    def close(self) -> None:
        pass


def test_inline_egress_leaves_by_the_other_arm_and_unknown_sources_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import snf.egress.transmit as transmit
    from snf.live.arms import live_source_id

    monkeypatch.setattr(transmit, "Transmitter", FakeTransmitter)
    out = transmit.Interfaces(inline=["c0", "s0"])
    from_client, from_server = live_source_id(0), live_source_id(1)
    frames = [b"c1", b"s1", b"c2", b"file"]
    now = time.time_ns()
    ts = np.array([now - 2_000_000, now - 1_000_000, now, now])
    out.send(frames, np.array([from_client, from_server, from_client, 12345 << 8 | 7]), ts)
    assert out.transmitters["s0"].frames == [b"c1", b"c2"]  # in order, by the other arm
    assert out.transmitters["c0"].frames == [b"s1"]
    counts = out.counts()
    assert counts | {"latency": None} == {
        "c0": {"sent": 1, "failed": 0, "too_big": 0},
        "s0": {"sent": 2, "failed": 0, "too_big": 0},
        "unrouted": 1,
        "latency": None,
    }
    assert counts["latency"]["packets"] == 4 and 1.9 <= counts["latency"]["max_ms"] < 50
    single = transmit.Interfaces(interface="eth9")
    single.send(frames, np.zeros(4, dtype=np.uint64), ts)
    assert single.transmitters["eth9"].frames == frames and "unrouted" not in single.counts()


def test_stream_transmits_egress_once_per_packet_id_and_writes_the_same(tmp_path: Path) -> None:
    from snf.packet.capture_file import read_capture

    sent: list[bytes] = []
    stream = Stream(tmp_path / "tap.pcapng", transmit=lambda frames, src, ts: sent.extend(frames))
    rows = [(10**18 + q, 60, tcp4(sport=1000 + q), 77, q, "") for q in range(3)]
    batch = PacketBatch.from_rows(LINKTYPE_ETHERNET, rows)
    stream.add(EGRESS, batch)
    stream.add(EGRESS, batch)  # a redelivered copy: not sent twice
    stream.add(("fw", "drop"), PacketBatch.from_rows(LINKTYPE_ETHERNET, [rows[0]]))
    stream.close()
    assert sent == [r[2] for r in rows]
    assert [p.data for p in read_capture(tmp_path / "tap.pcapng")] == sent  # the tap = the wire


@pytest.mark.parametrize(
    ("egress", "message"),
    [
        ("{inline: [a, a]}", "egress: expected two different interfaces"),
        ("{interface: e0, inline: [a, b]}", "expected exactly one of `interface` or `inline`"),
        ("{inline: [a]}", "egress.inline: list should have at least 2 items"),
        ("{interface: 'bad/name'}", "egress.interface: string should match pattern"),
        ("{interface: e0, port: 3}", "egress.port"),
    ],
)
def test_a_bad_egress_section_is_rejected_naming_the_field(
    tmp_path: Path, egress: str, message: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        f"name: p\nfunctions:\n  - {{name: fw, function: firewall}}\negress: {egress}\n"
    )
    with pytest.raises(PipelineError) as err:
        load_pipeline(path)
    assert f"{path}:4:" in str(err.value) and message in str(err.value)


def test_the_egress_section_is_read() -> None:
    pipeline = load_pipeline(Path("pipelines/inline.yaml"))
    assert pipeline.spec.egress is not None and pipeline.spec.egress.inline == ["slabc", "slabs"]


def test_latency_quantiles_are_within_a_bin_and_memory_is_fixed() -> None:
    from snf.egress.latency import LatencyHistogram

    hist = LatencyHistogram()
    now = 10**18
    delays_ms = np.concatenate([np.full(980, 2.0), np.full(19, 30.0), [900.0]])
    hist.add(now - (delays_ms * 1e6).astype(np.int64), now_ns=now)
    s = hist.summary()
    assert s["packets"] == 1000 and s["max_ms"] == 900.0
    assert 2.0 <= s["p50_ms"] <= 2.1 and 30.0 <= s["p99_ms"] <= 31.5
    hist.add(np.full(10**5, now - 10**6), now_ns=now)
    assert hist.counts.nbytes < 4096 and LatencyHistogram().summary()["p50_ms"] is None


def test_a_quantile_never_exceeds_the_largest_sample() -> None:
    from snf.egress.latency import LatencyHistogram

    one, now = LatencyHistogram(), 10**18
    one.add(np.array([now - 2_000_000]), now_ns=now)
    assert one.summary()["p99_ms"] == one.summary()["max_ms"] == 2.0
