"""The live capture agent: frames from network interfaces, batched and published.

What `snf replay` does for files, for interfaces: the same wire format,
packet ids, lineage and flow-key partitioning (snf.ingress.accumulator),
with the kernel's capture timestamps as packet time. Each interface has its
own AF_PACKET ring (snf.live.afpacket), Batcher and publisher session:

- **Batches** are cut when full (`max_packets`, `max_bytes`), and partial
  ones at most once per `linger_ms` per interface: what arrives on a quiet
  link goes at once (the ring hands frames over within RING_TIMEOUT_MS), and
  under load packets gather for up to `linger_ms`. Every message costs each
  worker of the chain a fixed share of a core, so the message rate, not the
  packet rate, is what overloads a small machine (docs/LIVE.md, latency).
- **Source ids** carry the arm (snf.live.arms), so `snf sink` sends a packet
  out of the other arm; their other bits are random per run, so a restarted
  agent never reuses a packet id.
- **Lineage** per interface (one publisher session each): two interfaces'
  sequence numbers never interleave under one origin.
- **Kernel drops** are read from the rings (PACKET_STATISTICS) and reported.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from snf.core.contract import NetworkFunction
from snf.ingress.accumulator import Batcher
from snf.live.afpacket import RingCapture
from snf.live.arms import NO_ARM, live_source_id
from snf.packet.batch import PacketBatch

__all__ = ["RING_TIMEOUT_MS", "CaptureOptions", "InterfaceCounts", "LiveSummary", "capture"]

RING_TIMEOUT_MS = 1  # the kernel retires a ring block at most this long after its first frame

Publish = Callable[[int, PacketBatch], None]
Publishers = Callable[[str, int], Publish]  # (interface, its source id) -> its publish


@dataclass
class CaptureOptions:
    interfaces: list[str]
    arms: dict[str, int] = field(default_factory=dict)  # interface -> arm (egress.inline)
    bpf: str | None = None
    snaplen: int = 65535
    promisc: bool = False
    linger_ms: int = 20  # partial batches at most once per this, per interface
    max_packets: int = 512
    max_bytes: int = 512 * 1024
    duration: float | None = None  # seconds; None: until stopped
    limit: int | None = None  # packets; None: no limit


@dataclass
class InterfaceCounts:
    captured: int = 0  # published
    bytes: int = 0
    received: int = 0  # the kernel's count for the socket
    kernel_dropped: int = 0  # ring full: lost before snf saw them
    source_id: int = 0


@dataclass
class LiveSummary:
    packets: int = 0
    batches: int = 0
    seconds: float = 0.0
    interfaces: dict[str, InterfaceCounts] = field(default_factory=dict)

    @property
    def kernel_dropped(self) -> int:
        return sum(c.kernel_dropped for c in self.interfaces.values())


class _Arm:
    """One interface: its ring, its batcher, its publisher."""

    def __init__(
        self,
        name: str,
        opts: CaptureOptions,
        partitions: int,
        keyers: Sequence[NetworkFunction],
        publishers: Publishers,
    ) -> None:
        self.name = name
        self.counts = InterfaceCounts(source_id=live_source_id(opts.arms.get(name, NO_ARM)))
        self.ring = RingCapture(
            name,
            bpf=opts.bpf,
            snaplen=opts.snaplen,
            promisc=opts.promisc,
            block_timeout_ms=RING_TIMEOUT_MS,
        )
        self.linger_s = max(0, opts.linger_ms) / 1000
        self.last_cut = -float("inf")  # the last partial cut: a quiet link's packets go at once
        self.batcher = Batcher(
            partitions,
            self.counts.source_id,
            max_packets=opts.max_packets,
            max_bytes=opts.max_bytes,
            keyers=keyers,
        )
        self.publish = publishers(name, self.counts.source_id)

    def drain(self, room: int | None) -> int:
        """Take what the ring has (at most `room` packets), publish the batches it
        filled; return how many packets."""
        chunk = self.ring.read(0)
        if chunk is None or not len(chunk):
            return 0
        if room is not None and len(chunk) > room:
            chunk = chunk.take(slice(0, room))
        for part, batch in self.batcher.add_chunk(chunk):  # full: they go at once
            self.publish(part, batch)
        self.counts.captured += len(chunk)
        self.counts.bytes += int(chunk.cap_len.sum())
        return len(chunk)

    def due(self) -> float | None:
        """When the partial batches may go (monotonic seconds), None: there are none."""
        return self.last_cut + self.linger_s if self.batcher.pending else None

    def flush(self, now: float, force: bool = False) -> None:
        """Publish the partial batches if their time has come (or `force`)."""
        due = self.due()
        if due is not None and (force or now >= due):
            for part, batch in self.batcher.cut_all():
                self.publish(part, batch)
            self.last_cut = now

    def close(self) -> None:
        stats = self.ring.stats()
        self.counts.received, self.counts.kernel_dropped = stats.received, stats.dropped
        self.ring.close()


def capture(
    partitions: int,
    publishers: Publishers,
    opts: CaptureOptions,
    keyers: Sequence[NetworkFunction] = (),
    stop: threading.Event | None = None,
    on_progress: Callable[[LiveSummary], None] | None = None,
) -> LiveSummary:
    """Capture until `stop` is set, `duration` passes or `limit` packets are in.
    `publishers(interface, source_id)` gives each interface its publish callable."""
    stop = stop or threading.Event()
    summary = LiveSummary()
    arms: list[_Arm] = []
    try:
        for name in opts.interfaces:
            arm = _Arm(name, opts, partitions, keyers, publishers)
            arms.append(arm)
            summary.interfaces[name] = arm.counts
        started = time.monotonic()
        fds = {arm.ring.fileno(): arm for arm in arms}
        last_progress = started
        while not stop.is_set():
            if opts.duration is not None and time.monotonic() - started >= opts.duration:
                break
            if opts.limit is not None and summary.packets >= opts.limit:
                break
            readable, _, _ = select.select(list(fds), [], [], _wait(arms))
            for fd in readable:
                room = None if opts.limit is None else opts.limit - summary.packets
                summary.packets += fds[fd].drain(room)
            now = time.monotonic()
            for arm in arms:
                arm.flush(now)
            if on_progress is not None and now - last_progress >= 0.5:
                last_progress = now
                summary.batches = sum(arm.batcher.stats.batches for arm in arms)
                on_progress(summary)
        for arm in arms:
            arm.flush(time.monotonic(), force=True)  # nothing captured stays behind
        summary.seconds = time.monotonic() - started
    finally:
        for arm in arms:
            arm.close()
        summary.batches = sum(arm.batcher.stats.batches for arm in arms)
    return summary


def _wait(arms: Sequence[_Arm], longest: float = 0.1) -> float:
    """How long select() may sleep: until the earliest partial batch is due."""
    dues = [d for arm in arms if (d := arm.due()) is not None]
    return longest if not dues else min(longest, max(0.0, min(dues) - time.monotonic()))
