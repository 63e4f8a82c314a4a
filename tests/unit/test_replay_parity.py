"""tcpreplay parity of the capture agent: -M, --unique-ip, --duration, --loopdelay-ms,
--preload-pcap, and the achieved rate and lateness of the summary. No broker."""

from __future__ import annotations

import argparse
import io
import json
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

import snf.ingress.pacing
import snf.ingress.replay
from snf.cli.common import add_timing, replay_options
from snf.cli.main import main
from snf.errors import ConfigError
from snf.ingress.replay import ReplayOptions, ReplaySummary, replay
from snf.ingress.unique_ip import unique_ip
from snf.packet.capture_chunk import CaptureChunk
from snf.packet.capture_file import read_capture
from snf.packet.linktypes import LINKTYPE_ETHERNET, LINKTYPE_RAW
from snf.packet.pcapng_writer import PcapngWriter
from snf.packet.rewrite import checksum
from tests.packets import arp, fragments4, icmp6_echo, tcp4, tcp6, udp4, udp6
from tests.unit.test_replay import FakeClock, Recorder

T0 = 1_700_000_000 * 10**9
S = 10**9
EDGE = Path(__file__).resolve().parents[2] / "pipelines" / "perimeter.yaml"
Traffic = Callable[[str], Path]


def _run(captures: list[Path], publish: Callable, **opts: object) -> ReplaySummary:
    console = Console(file=io.StringIO())
    return replay(captures, 4, publish, ReplayOptions(progress=False, **opts), console=console)


def _write(path: Path, frames: list[tuple[int, int, bytes, int | None]]) -> Path:
    """(linktype, ts_ns, data, orig_len or None) per packet, as pcapng."""
    with PcapngWriter(path) as w:
        for linktype, ts, data, orig in frames:
            w.write(linktype, ts, data, orig)
    return path


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(tick=0.0005)
    monkeypatch.setattr(snf.ingress.pacing.time, "perf_counter", fake.perf_counter)
    monkeypatch.setattr(snf.ingress.pacing.time, "sleep", fake.sleep)
    return fake


def _released(rec: Recorder, n: int) -> list[float]:
    start = rec.sent_at[0]
    return [rec.sent_at[i] - start for i in range(n)]


def _udp_stream(path: Path, n: int, size: int, cap: int | None = None) -> Path:
    """n UDP frames of `size` wire bytes, 1 ms apart; `cap`: captured bytes of each."""
    frame = udp4("10.0.0.1", "10.0.0.2", 1000, 53, bytes(size - 42))
    assert len(frame) == size
    rows = [(LINKTYPE_ETHERNET, T0 + i * S // 1000, frame[: cap or size], size) for i in range(n)]
    return _write(path, rows)


# -- -M/--mbps -------------------------------------------------------------------


def test_mbps_paces_the_wire_bytes_not_the_captured_ones(clock: FakeClock, tmp_path: Path) -> None:
    # 1250 wire bytes (10,000 bits) a packet, but only 100 captured: -M counts 1250.
    path = _udp_stream(tmp_path / "cut.pcapng", 10, 1250, cap=100)
    rec = Recorder(clock)
    s = _run([path], rec, mbps=1.0)
    assert s.packets == 10 and s.bytes == 1000 and s.wire_bytes == 12_500
    # At 1 Mbit/s each packet takes 10 ms: packet i leaves once its own bits are through.
    assert _released(rec, 10) == pytest.approx([i * 0.010 for i in range(10)], abs=0.003)
    assert rec.sent_at[0] - (clock.now - s.seconds) == pytest.approx(0.010, abs=0.003)
    assert s.mbps == pytest.approx(1.0, rel=0.05)


def test_mbps_on_a_real_clock_is_near_the_rate(tmp_path: Path) -> None:
    path = _udp_stream(tmp_path / "rate.pcapng", 40, 1250)  # 400 kbit: 0.1 s at 4 Mbit/s
    s = _run([path], Recorder(), mbps=4.0)
    assert s.packets == 40
    assert 0.09 <= s.seconds < 1.0  # loose: a loaded machine may be late, never early
    assert 0.4 < s.mbps <= 4.4
    assert s.worst_late_ms is not None and s.worst_late_ms < 500


# -- --unique-ip -----------------------------------------------------------------


def _checksums_ok(frame: bytes) -> bool:
    """Every checksum scapy knows of in the frame equals the one it recomputes."""
    pkt = Ether(frame)
    for layer, name in ((IP, "chksum"), (TCP, "chksum"), (UDP, "chksum")):
        if layer in pkt:
            clean = pkt.copy()
            delattr(clean[layer], name)
            if getattr(Ether(bytes(clean))[layer], name) != getattr(pkt[layer], name):
                return False
    if ICMPv6EchoRequest in pkt:
        clean = pkt.copy()
        del clean[ICMPv6EchoRequest].cksum
        return Ether(bytes(clean))[ICMPv6EchoRequest].cksum == pkt[ICMPv6EchoRequest].cksum
    return True


def _ip(frame: bytes) -> Packet | None:
    pkt = Ether(frame)
    for layer in (IP, IPv6):
        if layer in pkt:
            return pkt[layer]
    return None


MIXED = [
    tcp4("10.0.0.1", "10.0.0.2", 40000, 80, "S", b"hello"),
    tcp4("10.0.0.2", "10.0.0.1", 80, 40000, "SA"),  # the reply: same flow
    udp4("192.168.1.9", "8.8.8.8", 5353, 53, b"q", vlan=100),
    tcp6("2001:db8::1", "2001:db8::2", 1234, 443, "PA", b"data"),
    udp6("2001:db8::7", "2001:db8::1", 53, 5353, b"r", vlan=[7, 100]),
    icmp6_echo("2001:db8::1", "2001:db8::2"),
    udp4("10.9.9.9", "10.9.9.9", 7, 7, b"self"),  # equal addresses
    arp(),  # not IP: untouched
    tcp4()[:30],  # cut short in its IPv4 header: untouched
]


def test_unique_ip_gives_every_loop_new_addresses_with_valid_checksums(tmp_path: Path) -> None:
    rows = [(LINKTYPE_ETHERNET, T0 + i * 1000, f, None) for i, f in enumerate(MIXED)]
    path = _write(tmp_path / "mixed.pcapng", rows)
    rec = Recorder()
    s = _run([path], rec, loop=3, unique_ip=True)
    n = len(MIXED)
    assert s.packets == 3 * n
    got = rec.by_seq()
    passes = [[got[k * n + i][2] for i in range(n)] for k in range(3)]
    assert passes[0] == MIXED  # the first loop goes out as captured
    for k in (1, 2):
        for before, after in zip(MIXED, passes[k], strict=True):
            assert len(after) == len(before)
            ip = _ip(before)
            if ip is None or before == tcp4()[:30]:
                assert after == before  # not IP, or cut short: untouched
                continue
            new = _ip(after)
            assert (new.src, new.dst) != (ip.src, ip.dst)
            assert _checksums_ok(after), (k, Ether(after).summary())
            assert after[:12] == before[:12]  # link layer (and VLAN tags) kept
        assert {_ip(a).src for a in passes[1][:7]}.isdisjoint(_ip(a).src for a in passes[2][:7])
    # As tcpreplay: the greater address +k, the other -k, so a reply stays a reply.
    first, reply = _ip(passes[1][0]), _ip(passes[1][1])
    assert (first.src, first.dst) == ("10.0.0.0", "10.0.0.3")
    assert (reply.src, reply.dst) == ("10.0.0.3", "10.0.0.0")
    assert (_ip(passes[2][3]).src, _ip(passes[2][3]).dst) == ("2001:db8::ffff:ffff", "2001:db8::4")
    assert (_ip(passes[1][6]).src, _ip(passes[1][6]).dst) == ("10.9.9.10", "10.9.9.8")


def test_unique_ip_rewrites_raw_ip_link_types(tmp_path: Path) -> None:
    bare = tcp4("10.0.0.1", "10.0.0.2", 1, 2, "S", ether=False)
    rows = [(LINKTYPE_RAW, T0, bare, None), (LINKTYPE_ETHERNET, T0 + 1, tcp4(), None)]
    rec = Recorder()
    _run([_write(tmp_path / "two.pcapng", rows)], rec, loop=2, unique_ip=True)
    after = rec.by_seq()[2][2]
    assert IP(after).src == "10.0.0.0" and IP(after).dst == "10.0.0.3"
    assert _checksums_ok(bytes(Ether() / IP(after)))


def _l4_sum_ok(frags: list[bytes]) -> bool:
    """The UDP checksum of a datagram reassembled from Ethernet/IPv4 fragments."""
    ips = [IP(f[14:]) for f in frags]
    data = b"".join(bytes(ip.payload) if i else bytes(ip[UDP]) for i, ip in enumerate(ips))
    pseudo = socket.inet_aton(ips[0].src) + socket.inet_aton(ips[0].dst)
    pseudo += struct.pack("!BBH", 0, 17, len(data))
    return checksum(pseudo + data) == 0


def test_unique_ip_shifts_every_fragment_alike() -> None:
    frags = fragments4("10.0.0.1", "10.0.0.2", payload=bytes(range(256)) * 12)
    assert len(frags) == 3 and _l4_sum_ok(frags)
    chunk = CaptureChunk.from_packets([T0] * 3, [len(f) for f in frags], frags, LINKTYPE_ETHERNET)
    # A shift that wraps below 0.0.0.0: the one case where the sums of the addresses
    # change (tcpreplay's +k/-k keeps them otherwise), so the checksums must be updated.
    out = unique_ip(chunk, 0x0A000002).packets()
    assert {(IP(f[14:]).src, IP(f[14:]).dst) for f in out} == {("255.255.255.255", "20.0.0.4")}
    assert all(checksum(f[14:34]) == 0 for f in out)  # IPv4 header checksums
    assert _l4_sum_ok(out)  # the first fragment carries the whole datagram's checksum
    assert unique_ip(chunk, 0) is chunk


def test_unique_ip_keeps_a_udp_checksum_of_zero() -> None:
    frame = bytearray(udp4("10.0.0.1", "10.0.0.2", 1, 2, b"x"))
    frame[40:42] = b"\0\0"  # UDP over IPv4 without a checksum
    chunk = CaptureChunk.from_packets([T0], [len(frame)], [bytes(frame)], LINKTYPE_ETHERNET)
    out = unique_ip(chunk, 0x50000000).packets()[0]  # wraps 10.0.0.1: the sums change
    assert out[26:34] != frame[26:34] and checksum(out[14:34]) == 0
    assert out[40:42] == b"\0\0"


@pytest.mark.parametrize("k", [1, 0x50000000])  # the second wraps one address of most
def test_unique_ip_keeps_valid_checksums_of_real_captures(traffic: Traffic, k: int) -> None:
    for name in ("zeek-http-vlan.pcap", "zeek-ipv6.pcap", "tcpreplay-test.pcap"):
        packets = list(read_capture(traffic(name)))
        chunk = CaptureChunk.from_packets(
            [p.ts_ns for p in packets],
            [p.orig_len for p in packets],
            [p.data for p in packets],
            [p.linktype for p in packets],
        )
        out = unique_ip(chunk, k).packets()
        assert len(out) == len(packets)
        changed = 0
        for p, after in zip(packets, out, strict=True):
            assert len(after) == len(p.data)
            changed += after != p.data
            if _checksums_ok(p.data):  # offloaded (wrong) checksums stay wrong
                assert _checksums_ok(after), (name, Ether(after).summary())
        assert changed > len(packets) // 2, name


# -- --duration, --loopdelay-ms ----------------------------------------------------


def _five(tmp_path: Path) -> Path:
    rows = [
        (LINKTYPE_ETHERNET, T0 + round(t * S), udp4(sport=1000 + i), None)
        for i, t in enumerate([0.0, 0.5, 1.0, 2.0, 4.0])
    ]
    return _write(tmp_path / "five.pcapng", rows)


def test_duration_stops_a_timed_replay(clock: FakeClock, tmp_path: Path) -> None:
    path = _udp_stream(tmp_path / "second.pcapng", 100, 100)
    rec = Recorder(clock)
    s = _run([path], rec, pps=100.0, duration=0.25)
    assert s.duration_reached
    assert s.packets == 25  # due at 0, 10, ..., 240 ms; the rest is due too late
    assert s.seconds == pytest.approx(0.24, abs=0.01)
    assert not _run([path], Recorder(clock), pps=100.0, duration=5.0).duration_reached


def test_duration_stops_top_speed(clock: FakeClock, tmp_path: Path) -> None:
    path = _udp_stream(tmp_path / "many.pcapng", 3000, 64)

    def slow(part: int, batch: object) -> None:
        clock.now += 0.01  # every publish takes 10 ms

    s = _run([path], slow, duration=0.05, max_packets=8)
    assert s.duration_reached and 0 < s.packets < 3000
    full = _run([path], slow, max_packets=8)
    assert full.packets == 3000 and not full.duration_reached


def test_loopdelay_pauses_between_loops_in_every_mode(clock: FakeClock, tmp_path: Path) -> None:
    five = _five(tmp_path)
    offsets = [0.0, 0.5, 1.0, 2.0, 4.0]
    rec = Recorder(clock)
    _run([five], rec, speed=1.0, loop=2, loopdelay_ms=500)
    want = offsets + [4.5 + t for t in offsets]
    assert _released(rec, 10) == pytest.approx(want, abs=0.01)

    rec = Recorder(clock)
    _run([five], rec, pps=10.0, loop=3, loopdelay_ms=1000)
    want = [k * 1.5 + i / 10 for k in range(3) for i in range(5)]
    assert _released(rec, 15) == pytest.approx(want, abs=0.01)

    clock.sleeps.clear()
    rec = Recorder(clock)
    assert _run([five], rec, loop=3, loopdelay_ms=200).packets == 15
    assert clock.sleeps == pytest.approx([0.2, 0.2])
    # Each loop was published before the pause after it.
    assert _released(rec, 15)[5] >= 0.2 and _released(rec, 15)[4] < 0.2


# -- --preload-pcap --------------------------------------------------------------


def test_preload_gives_the_same_output(traffic: Traffic, tmp_path: Path) -> None:
    raw = traffic("zeek-http-bro.org.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(raw[: len(raw) * 2 // 3])  # a damaged file: its warning repeats per loop
    captures = [traffic("zeek-ipv6.pcap"), cut]
    plain, loaded = Recorder(), Recorder()
    a = _run(captures, plain, loop=2, limit=900)
    b = _run(captures, loaded, loop=2, limit=900, preload=True)
    assert plain.by_seq() == loaded.by_seq()
    assert (
        (a.packets, a.bytes, a.wire_bytes)
        == (b.packets, b.bytes, b.wire_bytes)
        == (
            a.packets,
            a.bytes,
            a.wire_bytes,
        )
    )
    assert a.packets == 900
    assert a.warnings == b.warnings and len(a.warnings) == 2


def test_preload_reads_every_capture_before_sending(
    traffic: Traffic, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real = snf.ingress.replay.read_chunks

    def reading(path: Path, on_warning: Callable[[str], None]) -> Iterator[CaptureChunk]:
        events.append(f"open {path.name}")
        yield from real(path, on_warning=on_warning)
        events.append(f"read {path.name}")

    monkeypatch.setattr(snf.ingress.replay, "read_chunks", reading)
    captures = [traffic("zeek-ipv6.pcap"), traffic("zeek-http-vlan.pcap")]

    def publish(part: int, batch: object) -> None:
        events.append("publish")

    _run(captures, publish, pps=1e6, max_packets=1)  # every packet published at once
    assert events.index("publish") < events.index("open zeek-http-vlan.pcap")
    events.clear()
    _run(captures, publish, pps=1e6, max_packets=1, preload=True)
    assert events[:4] == [f"{e} {p.name}" for p in captures for e in ("open", "read")]
    assert events[4:] and set(events[4:]) == {"publish"}


# -- the summary -------------------------------------------------------------------


def test_summary_has_the_achieved_rate_and_the_worst_lateness(
    clock: FakeClock, tmp_path: Path
) -> None:
    path = _udp_stream(tmp_path / "two-seconds.pcapng", 2000, 125)
    rec = Recorder(clock)
    s = _run([path], rec, pps=1000.0)
    # Absolute due times: 2000 readings of the clock (1 s of ticks) never add up.
    assert _released(rec, 2000)[-1] == pytest.approx(1.999, abs=0.01)
    assert s.pps == pytest.approx(1000, rel=0.02)
    assert s.wire_bytes == 2000 * 125
    assert s.mbps == pytest.approx(1.0, rel=0.02)  # 1000 packets/s of 1000 bits
    assert s.worst_late_ms is not None and s.worst_late_ms < 5

    def slow(part: int, batch: object) -> None:
        clock.now += 0.05  # a publish that takes 50 ms makes packets late

    late = _run([_udp_stream(tmp_path / "ten.pcapng", 10, 125)], slow, pps=100.0)
    assert late.worst_late_ms is not None and late.worst_late_ms > 40
    assert _run([path], Recorder()).worst_late_ms is None  # top speed: nothing is due


# -- the command line ------------------------------------------------------------


def _options(argv: list[str], default_top: bool = False) -> ReplayOptions:
    parser = argparse.ArgumentParser()
    add_timing(parser, default_top=default_top)
    return replay_options(parser.parse_args(argv))


def test_cli_parses_the_tcpreplay_flags() -> None:
    argv = ["-M", "12.5", "-l", "3", "--unique-ip", "--duration", "2", "--loopdelay-ms", "7"]
    o = _options([*argv, "-K"])
    assert (o.mbps, o.speed, o.pps, o.loop, o.unique_ip) == (12.5, None, None, 3, True)
    assert (o.duration, o.loopdelay_ms, o.preload) == (2.0, 7.0, True)
    assert _options(["--preload-pcap"]).preload and _options([]).speed == 1.0
    assert _options(["-M", "1"], default_top=True).mbps == 1.0  # -t by default, not given
    assert _options([], default_top=True).speed is None


@pytest.mark.parametrize(
    "argv",
    [
        ["-M", "10", "-x", "2"],
        ["-M", "10", "-p", "100"],
        ["-M", "10", "-t"],
        ["--mbps", "0"],
        ["--duration", "0"],
        ["--loopdelay-ms", "-1"],
        ["--unique-ip"],  # without --loop it would change nothing
    ],
)
def test_cli_rejects_conflicting_or_bad_flags(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        _options(argv)


def test_run_prints_and_writes_the_achieved_rate(
    traffic: Traffic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = str(traffic("tcpreplay-test.pcap"))
    base = ["run", str(EDGE), capture, "--local", "--no-progress"]
    assert main([*base, "-M", "5", "-x", "2"]) == 2
    assert "-M/--mbps cannot be combined" in capsys.readouterr().err
    summary = tmp_path / "run.json"
    argv = [*base, "-M", "200", "-l", "2", "--unique-ip", "--loopdelay-ms", "1", "-K"]
    assert main([*argv, "--duration", "30", "--json", str(summary)]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("replay:"))
    assert "Mbit/s" in line and "worst lateness" in line and "358 packets" in line
    report = json.loads(summary.read_text())["replay"]
    assert report["mbps"] > 0 and report["worst_late_ms"] is not None
    assert report["duration_reached"] is False
    start = time.perf_counter()
    assert main([*base, "-p", "100", "--duration", "0.1"]) == 0  # 179 packets: 1.8 s
    assert time.perf_counter() - start < 1.5
    assert "stopped by --duration" in capsys.readouterr().err
