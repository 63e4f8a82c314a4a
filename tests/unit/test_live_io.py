"""snf.live: RingCapture and Transmitter on a veth pair in a network namespace of their own.

Known frames go out of one end with Transmitter and are read back on the
other with RingCapture. Needs root (namespaces, AF_PACKET); skipped without.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import dpkt
import numpy as np
import pytest

from snf.errors import ConfigError
from snf.live.afpacket import RingCapture
from snf.live.transmit import Transmitter
from snf.packet.capture_chunk import CaptureChunk
from snf.packet.linktypes import LINKTYPE_ETHERNET

CLONE_NEWNET = 0x40000000
A, B = "snfioa", "snfiob"  # the two ends, inside the namespace
SMALL = {"blocks": 4, "block_size": 1 << 16}  # a 256 KiB ring: enough here, quick to set up


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and AF_PACKET sockets")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` for the namespace and the veth pair")
    name = f"snfcap{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"`ip netns add` is not available here: {exc}")
    try:
        with inside(name):  # no IPv6: no router solicitation joins the frames we count
            for conf in ("all", "default"):
                with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
                    f.write("1")
        _ip("-n", name, "link", "add", A, "type", "veth", "peer", "name", B)
        for end in (A, B):
            _ip("-n", name, "link", "set", end, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """This thread in namespace `name`; sockets opened here stay in it after."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), "setns")
        try:
            yield
        finally:
            libc.setns(home.fileno(), CLONE_NEWNET)


def frame(n: int, port: int = 9, size: int = 100, vlan: int | None = None) -> bytes:
    """Ethernet/IPv4/UDP of `size` bytes; n marks it (source port, payload)."""
    udp = dpkt.udp.UDP(sport=20000 + n, dport=port, data=bytes([n % 256]) * (size - 42))
    ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02", p=17, data=udp)
    eth = bytes(dpkt.ethernet.Ethernet(dst=b"\x02" * 6, src=b"\x02\x00\x00\x00\x00\x01", data=ip))
    if vlan is not None:
        eth = eth[:12] + b"\x81\x00" + vlan.to_bytes(2, "big") + eth[12:]
    return eth


def collect(cap: RingCapture, want: int, timeout: float = 2.0) -> list[CaptureChunk]:
    """Chunks until `want` packets came (or timeout), then whatever follows within 50 ms."""
    chunks: list[CaptureChunk] = []
    deadline = time.monotonic() + timeout
    while sum(map(len, chunks)) < want and time.monotonic() < deadline:
        if (chunk := cap.read(0.1)) is not None:
            chunks.append(chunk)
    while (chunk := cap.read(0.05)) is not None:
        chunks.append(chunk)
    return chunks


def packets(chunks: list[CaptureChunk]) -> list[bytes]:
    return [p for c in chunks for p in c.packets()]


def test_frames_arrive_exact_in_order_with_kernel_timestamps(netns: str) -> None:
    sent = [frame(n, size=60 + n * 7) for n in range(64)]
    with inside(netns):
        cap, tx = RingCapture(B), Transmitter(A)
    with cap, tx:
        before = time.time_ns()
        tx.send(sent)
        chunks = collect(cap, len(sent))
    assert packets(chunks) == sent
    assert (tx.sent, tx.failed, tx.too_big) == (64, 0, 0)
    ts = np.concatenate([c.ts_ns for c in chunks])
    assert np.all(np.diff(ts) >= 0) and ts[-1] > ts[0]
    assert before - 10**9 < ts[0] and ts[-1] < time.time_ns() + 10**9
    lens = np.concatenate([c.orig_len for c in chunks])
    assert (
        lens.tolist()
        == [len(f) for f in sent]
        == np.concatenate([c.cap_len for c in chunks]).tolist()
    )
    assert {int(k) for c in chunks for k in c.linktype} == {LINKTYPE_ETHERNET}
    assert cap.linktype == LINKTYPE_ETHERNET and cap.csum_not_ready == 0


def test_stats_count_what_the_socket_received(netns: str) -> None:
    with inside(netns):
        cap, tx = RingCapture(B, **SMALL), Transmitter(A)
    with cap, tx:
        tx.send([frame(n) for n in range(20)])
        assert len(packets(collect(cap, 20))) == 20
        assert cap.stats() == (20, 0, 0)
        tx.send([frame(n) for n in range(5)])
        collect(cap, 5)
        assert cap.stats().received == 25  # cumulative, though the kernel resets on read


def test_bpf_filter_keeps_only_matching_frames(netns: str) -> None:
    sent = [frame(n, port=9 if n % 3 == 0 else 53) for n in range(30)]
    with inside(netns):
        cap, tx = RingCapture(B, bpf="udp port 9", **SMALL), Transmitter(A)
    with cap, tx:
        tx.send(sent)
        got = packets(collect(cap, 10))
    assert got == sent[::3]
    assert cap.stats().received == 10  # the rest never reached the socket


def test_bad_bpf_expression_says_why(netns: str) -> None:
    with inside(netns), pytest.raises(ConfigError, match=r"udp prot 9.*syntax error"):
        RingCapture(B, bpf="udp prot 9", **SMALL)


def test_missing_interface_is_named() -> None:
    with pytest.raises(ConfigError, match="snfnosuch0"):
        RingCapture("snfnosuch0")
    with pytest.raises(ConfigError, match="snfnosuch1"):
        Transmitter("snfnosuch1")


def test_snaplen_truncates_cap_len_and_keeps_orig_len(netns: str) -> None:
    sent = [frame(n, size=300) for n in range(5)]
    with inside(netns):
        cap, tx = RingCapture(B, snaplen=60, **SMALL), Transmitter(A)
    with cap, tx:
        tx.send(sent)
        chunks = collect(cap, 5)
    assert packets(chunks) == [f[:60] for f in sent]
    assert np.concatenate([c.orig_len for c in chunks]).tolist() == [300] * 5


def test_too_big_frames_are_counted_not_sent(netns: str) -> None:
    fits, tagged = frame(1, size=1514), frame(2, size=1514, vlan=7)  # MTU 1500 + 14 (+ 4)
    over, tagged_over = frame(3, size=1515), frame(4, size=1515, vlan=7)
    with inside(netns):
        cap, tx = RingCapture(B, **SMALL), Transmitter(A)
    with cap, tx:
        tx.send([over, fits, tagged_over, tagged])
        got = packets(collect(cap, 2))
    assert (tx.sent, tx.too_big, tx.failed) == (2, 2, 0)
    assert got == [fits, tagged]  # the 802.1Q tag the kernel took out is put back


def test_own_outgoing_frames_are_not_captured(netns: str) -> None:
    with inside(netns):
        own, peer, tx = RingCapture(A, **SMALL), RingCapture(B, **SMALL), Transmitter(A)
    with own, peer, tx:
        tx.send([frame(n) for n in range(10)])
        assert len(packets(collect(peer, 10))) == 10
        assert own.read(0.05) is None
        assert own.stats().received == 0


def test_read_returns_none_when_nothing_came(netns: str) -> None:
    with inside(netns):
        cap = RingCapture(B, **SMALL)
    with cap:
        started = time.monotonic()
        assert cap.read(0.05) is None
        assert 0.04 < time.monotonic() - started < 1.0
        assert cap.read(0) is None
