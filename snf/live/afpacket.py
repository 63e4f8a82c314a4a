"""RingCapture: packets from an interface through an AF_PACKET TPACKET_V3 ring.

The kernel writes frames into blocks of a ring shared with us (mmap) and
hands a block over when it is full or `block_timeout_ms` has passed. A read
copies every handed-over block out in one join, gives the blocks back, then
walks the frame headers of the copy: one Python step per frame (the next
offset), everything else in numpy. The chunk's bytes are the copied blocks,
ring headers included; `start` points past them, at each frame's link header.

Chosen over libpcap by measurement (bench/live_capture.py, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import fcntl
import math
import mmap
import select
import socket
import struct
from itertools import repeat
from typing import NamedTuple

import numpy as np

from snf.errors import ConfigError, SnfError
from snf.live import bpf as bpf_module  # the constructor's `bpf` argument shadows `bpf`
from snf.packet.capture_chunk import CaptureChunk
from snf.packet.linktypes import LINKTYPE_ETHERNET, LINKTYPE_RAW

__all__ = ["CaptureStats", "LinkInfo", "RingCapture", "link_info", "packet_socket"]

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20
TPACKET_V3 = 2
PACKET_MR_PROMISC = 1
ETH_P_ALL = 0x0003
SIOCGIFMTU = 0x8921
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
ETH_P_8021Q = 0x8100
FRAME_SIZE = 2048  # V3 frames are variable; the kernel only checks this divides a block
# ARPHRD_* -> (LINKTYPE_*, libpcap DLT for the filter compiler, link header bytes)
LINKS = {
    1: (LINKTYPE_ETHERNET, bpf_module.DLT_EN10MB, 14),  # ARPHRD_ETHER
    772: (LINKTYPE_ETHERNET, bpf_module.DLT_EN10MB, 14),  # ARPHRD_LOOPBACK: zeroed MACs
    0xFFFE: (LINKTYPE_RAW, bpf_module.DLT_RAW, 0),  # ARPHRD_NONE: tun, WireGuard
}
# tpacket_block_desc words: [2] block_status, [3] num_pkts, [4] offset_to_first_pkt, [5] blk_len
# tpacket3_hdr words: [0] tp_next_offset, [1] sec, [2] nsec, [3] snaplen, [4] len,
# [5] status, [6] mac | net << 16, [8] vlan_tci, [9] vlan_tpid


class CaptureStats(NamedTuple):
    received: int  # passed the filter, dropped ones included (libpcap's ps_recv)
    dropped: int  # ring full: PACKET_STATISTICS' tp_drops, cumulative
    frozen: int  # tp_freeze_q_cnt


class LinkInfo(NamedTuple):
    linktype: int
    dlt: int
    header: int  # link header bytes before the MTU's payload
    mtu: int


def packet_socket(interface: str, what: str) -> socket.socket:
    """An AF_PACKET SOCK_RAW socket bound to `interface` with protocol 0 (it
    receives nothing until rebound with a protocol); clear errors naming it."""
    try:
        socket.if_nametoindex(interface)
    except OSError:
        raise ConfigError(f"{what} {interface!r}: no such interface here") from None
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        raise SnfError(f"{what} {interface!r}: permission denied (needs CAP_NET_RAW)") from None
    try:
        sock.bind((interface, 0))
    except OSError as exc:
        sock.close()
        raise SnfError(f"{what} {interface!r}: {exc.strerror}") from None
    return sock


def link_info(sock: socket.socket, interface: str) -> LinkInfo:
    """The bound interface's link type (from its ARPHRD type) and MTU, read
    through the socket: right in any network namespace, unlike /sys."""
    hatype = sock.getsockname()[3]
    if hatype not in LINKS:
        raise ConfigError(f"interface {interface!r}: link type ARPHRD {hatype} is not supported")
    request = struct.pack("16si", interface.encode(), 0)
    mtu = struct.unpack("16si", fcntl.ioctl(sock.fileno(), SIOCGIFMTU, request))[1]
    return LinkInfo(*LINKS[hatype], mtu)


class RingCapture:
    """Frames arriving on one interface (outgoing ones ignored), a chunk per read."""

    def __init__(
        self,
        interface: str,
        *,
        bpf: str | None = None,
        snaplen: int = 65535,
        promisc: bool = False,
        block_size: int = 1 << 20,
        blocks: int = 64,
        block_timeout_ms: int = 2,
    ) -> None:
        if block_size % mmap.PAGESIZE or block_size < FRAME_SIZE or blocks < 1 or snaplen < 1:
            raise ConfigError(
                f"capture {interface!r}: block_size must be a multiple of {mmap.PAGESIZE}, "
                "blocks and snaplen at least 1"
            )
        self.interface, self.snaplen = interface, snaplen
        self.csum_not_ready = 0  # frames with a partial checksum (a sending veth's peer)
        self._block_size, self._blocks, self._next = block_size, blocks, 0
        self._totals = [0, 0, 0]
        self._sock = packet_socket(interface, "capture")
        try:
            info = link_info(self._sock, interface)
            self.linktype = info.linktype
            program = (
                bpf_module.compile_filter(bpf, snaplen, info.dlt)
                if bpf is not None
                else bpf_module.snaplen_only(snaplen)
            )
            self._ring = self._setup(program, promisc, block_timeout_ms)
            # Only now packets flow: the filter and the ring were in place first.
            self._sock.bind((interface, ETH_P_ALL))
        except BaseException:
            self.close()
            raise
        self._words = memoryview(self._ring).cast("I")
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN | select.POLLERR)

    def _setup(self, program: bpf_module.Program, promisc: bool, timeout_ms: int) -> mmap.mmap:
        sock, size = self._sock, self._block_size * self._blocks
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            raise SnfError("capture needs PACKET_IGNORE_OUTGOING (Linux 4.20 or later)") from None
        bpf_module.attach(sock, program)
        if promisc:
            index = socket.if_nametoindex(self.interface)
            mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        frames = self._block_size // FRAME_SIZE * self._blocks
        req = struct.pack(
            "7I", self._block_size, self._blocks, FRAME_SIZE, frames, timeout_ms, 0, 0
        )
        try:
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        except OSError as exc:
            raise SnfError(
                f"capture {self.interface!r}: a ring of {self._blocks} x {self._block_size} "
                f"bytes: {exc.strerror}"
            ) from None
        return mmap.mmap(sock.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, timeout_s: float) -> CaptureChunk | None:
        """Every frame of the blocks handed over so far, waiting up to timeout_s
        for one; None when none came."""
        wait_ms = math.ceil(max(timeout_s, 0.0) * 1000)
        if not self._ready() and (not self._poll.poll(wait_ms) or not self._ready()):
            return None
        data, blocks = self._take()
        return self._chunk(data, blocks) if any(n for n, _ in blocks) else None

    def _ready(self) -> bool:
        return bool(self._words[self._next * self._block_size // 4 + 2] & TP_STATUS_USER)

    def _take(self) -> tuple[bytes, list[tuple[int, int]]]:
        """Copy out the user-owned blocks in ring order, then return them to the
        kernel: (the bytes, (frames, offset of the first frame) per block)."""
        words, view, size = self._words, memoryview(self._ring), self._block_size
        spans, blocks, taken, pos = [], [], [], 0
        for _ in range(self._blocks):
            word = self._next * size // 4
            if not words[word + 2] & TP_STATUS_USER:
                break
            used = min(-(-words[word + 5] // 8) * 8, size)  # blk_len, 8-byte aligned
            spans.append(view[self._next * size : self._next * size + used])
            blocks.append((words[word + 3], pos + words[word + 4]))
            taken.append(word)
            pos += used
            self._next = (self._next + 1) % self._blocks
        data = b"".join(spans)
        for span in spans:
            span.release()
        view.release()
        for word in taken:
            words[word + 2] = TP_STATUS_KERNEL
        return data, blocks

    def _chunk(self, data: bytes, blocks: list[tuple[int, int]]) -> CaptureChunk:
        """The columns from the frame headers in `data`."""
        words = memoryview(data).cast("I")
        offsets: list[int] = []
        for count, first in blocks:
            if count:
                # The one per-frame Python step, follow tp_next_offset: a comprehension
                # is ~20% faster than a loop of appends.
                i = first >> 2
                offsets.append(i)
                offsets += [i := i + (words[i] >> 2) for _ in repeat(None, count - 1)]
        words.release()
        at = np.array(offsets, dtype=np.int64)
        u32 = np.frombuffer(data, dtype=np.uint32)
        status = u32[at + 5]
        self.csum_not_ready += int(np.count_nonzero(status & TP_STATUS_CSUMNOTREADY))
        chunk = CaptureChunk(
            data,
            at * 4 + (u32[at + 6] & 0xFFFF).astype(np.int64),
            u32[at + 3].astype(np.int64),
            u32[at + 4].astype(np.int64),
            u32[at + 1].astype(np.int64) * 1_000_000_000 + u32[at + 2],
            np.full(len(at), self.linktype, dtype=np.int64),
        )
        tagged = np.flatnonzero(status & TP_STATUS_VLAN_VALID)
        if not len(tagged):
            return chunk
        return self._retag(chunk, tagged, u32[at[tagged] + 8], u32[at[tagged] + 9])

    def _retag(
        self, chunk: CaptureChunk, tagged: np.ndarray, tci: np.ndarray, tpid: np.ndarray
    ) -> CaptureChunk:
        """Put back the 802.1Q tags the kernel moved out of the frames (as libpcap
        does): the tagged frames are rebuilt after the copied blocks."""
        view, extra, pos = memoryview(chunk.data), [], len(chunk.data)
        for k, vid, proto in zip(tagged.tolist(), tci.tolist(), tpid.tolist(), strict=True):
            s, n = int(chunk.start[k]), int(chunk.cap_len[k])
            tag = struct.pack("!HH", proto & 0xFFFF or ETH_P_8021Q, vid & 0xFFFF)
            frame = (bytes(view[s : s + 12]) + tag + bytes(view[s + 12 : s + n]))[: self.snaplen]
            extra.append(frame)
            chunk.start[k], chunk.cap_len[k] = pos, len(frame)
            chunk.orig_len[k] += 4
            pos += len(frame)
        view.release()
        chunk.data = b"".join([chunk.data, *extra])
        return chunk

    def stats(self) -> CaptureStats:
        """Cumulative since open (the kernel resets its counters on each read);
        after close, the counts at close."""
        if self._sock is None:
            return CaptureStats(*self._totals)
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        self._totals = [a + b for a, b in zip(self._totals, struct.unpack("3I", raw), strict=True)]
        return CaptureStats(*self._totals)

    def close(self) -> None:
        if getattr(self, "_ring", None) is not None:
            self.stats()  # the last counts, for stats() after close
        for name in ("_words", "_ring", "_sock"):
            thing = getattr(self, name, None)
            if thing is not None:
                (thing.release if name == "_words" else thing.close)()
                setattr(self, name, None)

    def __enter__(self) -> RingCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
