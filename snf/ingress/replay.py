"""The capture agent: read captures, batch per partition, publish.

Timing follows tcpreplay: captured timing scaled by `speed` (tcpreplay's
--multiplier), a fixed packet rate (`pps`), or top speed. Whatever the speed,
functions only ever see packet time, so results do not depend on it.

Resuming (`ReplayOptions.skip`, snf/ingress/checkpoint.py): the first `skip`
packets of the stream are routed but not published, so the rest keep their
ids (seq = position in the stream) and their partitions, and the pacing
clock starts again at the first packet sent.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from snf.core.contract import NetworkFunction
from snf.ingress.accumulator import Batcher
from snf.packet.batch import PacketBatch
from snf.packet.capture_file import CapturedPacket, CaptureError, read_capture

__all__ = ["ReplayOptions", "ReplaySummary", "check_captures", "replay", "source_id_for"]

Publish = Callable[[int, PacketBatch], None]
CHUNK = 2048  # packets parsed and routed together at top speed
LINGER_S = 0.005  # timed replay: packets due within this window share batches


@dataclass
class ReplayOptions:
    speed: float | None = None  # None: top speed; 1.0: as captured; 2.0: twice as fast
    pps: float | None = None  # fixed packets per second (overrides speed)
    loop: int = 1
    limit: int | None = None  # stop after this many packets
    max_packets: int = 512
    max_bytes: int = 512 * 1024
    source_id: int | None = None
    progress: bool = True
    # Resume: packets with seq < skip were acknowledged by an earlier run; they
    # are routed (fragment memory) but not published.
    skip: int = 0


@dataclass
class ReplaySummary:
    packets: int = 0
    bytes: int = 0
    batches: int = 0
    seconds: float = 0.0
    source_id: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)
    last_ts_ns: int = 0  # the latest packet time of the stream (flushes use it as "now")
    skipped: int = 0  # packets not published: acknowledged by an earlier run (resume)
    warnings: list[str] = field(default_factory=list)

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0


def source_id_for(captures: Sequence[Path]) -> int:
    """Stable 63-bit source id: same files, same packet ids, run after run."""
    h = hashlib.blake2b(digest_size=8)
    for path in captures:
        h.update(path.name.encode())
        h.update(str(path.stat().st_size).encode())
        with path.open("rb") as f:
            h.update(f.read(65536))
    return int.from_bytes(h.digest(), "little") >> 1


def check_captures(captures: Sequence[Path]) -> None:
    """Fail before anything starts when a capture is missing or not a file."""
    for path in captures:
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise CaptureError(f"{path}: capture file {what}")


def _packets(
    captures: Sequence[Path],
    opts: ReplayOptions,
    warn: Callable[[str], None],
    advance: Callable[[int], None],
) -> Iterator[tuple[int, CapturedPacket]]:
    """(segment, packet): a segment is one pass over one file, timed on its own."""
    n = 0
    segment = 0
    for _ in range(opts.loop):
        for path in captures:
            for pkt in read_capture(path, on_warning=warn):
                if opts.limit is not None and n >= opts.limit:
                    return
                n += 1
                advance(len(pkt.data) + 16)
                yield segment, pkt
            segment += 1


def replay(
    captures: Sequence[Path],
    partitions: int,
    publish: Publish,
    opts: ReplayOptions | None = None,
    console: Console | None = None,
    keyers: Sequence[NetworkFunction] = (),
) -> ReplaySummary:
    """Read, batch and publish the captures, partitioned by `keyers` (snf.pipeline.routing)."""
    opts = opts or ReplayOptions()
    captures = [Path(c) for c in captures]
    console = console or Console(stderr=True)
    check_captures(captures)
    source_id = opts.source_id if opts.source_id is not None else source_id_for(captures)
    summary = ReplaySummary(source_id=source_id)
    batcher = Batcher(
        partitions,
        summary.source_id,
        max_packets=opts.max_packets,
        max_bytes=opts.max_bytes,
        first_seq=opts.skip,  # resumed packets keep their ids: seq = position in the stream
        keyers=keyers,
    )
    total = sum(p.stat().st_size for p in captures) * opts.loop

    def warn(msg: str) -> None:
        summary.warnings.append(msg)
        console.print(f"[yellow]warning:[/] {msg}")

    progress = Progress(
        TextColumn("replay"),
        BarColumn(),
        TextColumn("{task.fields[pkts]:,} packets"),
        TimeElapsedColumn(),
        console=console,
        disable=not opts.progress,
        transient=False,
    )
    started = time.perf_counter()
    with progress:
        task = progress.add_task("replay", total=total, pkts=0)
        seen = [0]

        def advance(nbytes: int) -> None:
            seen[0] += nbytes

        def send(ready: list[tuple[int, PacketBatch]]) -> None:
            for part, batch in ready:
                publish(part, batch)
            progress.update(task, completed=seen[0], pkts=batcher.stats.packets)

        stream = _packets(captures, opts, warn, advance)
        skipped_ts = 0
        if opts.skip > 0:
            summary.skipped, skipped_ts = _route_only(stream, opts.skip, batcher, keyers)
        if opts.speed is None and opts.pps is None:
            chunk: list[CapturedPacket] = []
            for _, pkt in stream:
                chunk.append(pkt)
                if len(chunk) >= CHUNK:
                    send(batcher.add(chunk))
                    chunk = []
            send(batcher.add(chunk))
        else:
            _timed(stream, opts, batcher, send)
        send(batcher.cut_all())
        progress.update(task, completed=total)
    summary.seconds = time.perf_counter() - started
    summary.packets = batcher.stats.packets
    summary.bytes = batcher.stats.bytes
    summary.batches = batcher.stats.batches
    summary.per_partition = dict(batcher.stats.per_partition)
    summary.last_ts_ns = max(batcher.stats.last_ts_ns, skipped_ts)
    return summary


def _route_only(
    stream: Iterator[tuple[int, CapturedPacket]],
    skip: int,
    batcher: Batcher,
    keyers: Sequence[NetworkFunction],
) -> tuple[int, int]:
    """Consume the first `skip` packets without publishing: (count, latest packet time).

    They go through a throw-away Batcher whose FlowRouter then replaces
    `batcher`'s: a later fragment whose first fragment was skipped still
    follows it, so every packet sent lands where one uninterrupted run puts it.
    """
    warm = Batcher(batcher.partitions, batcher.source_id, keyers=keyers)
    count = 0
    while count < skip:
        chunk = [pkt for _, pkt in itertools.islice(stream, min(CHUNK, skip - count))]
        if not chunk:
            break  # the stream is shorter than the checkpoint: nothing left to send
        warm.add(chunk)
        count += len(chunk)
    batcher.router = warm.router
    return count, warm.stats.last_ts_ns


def _timed(
    stream: Iterator[tuple[int, CapturedPacket]],
    opts: ReplayOptions,
    batcher: Batcher,
    send: Callable[[list[tuple[int, PacketBatch]]], None],
) -> None:
    """Release packets at their due wall time; cut batches whenever we wait.

    Due times are fixed from the start, so small delays never add up. Each
    segment (a pass over one file) keeps its own captured timing and starts
    where the previous one ended, as tcpreplay plays files and loops.
    """
    t0_wall = time.perf_counter()
    segment_start = t0_wall  # wall time at which the current segment starts
    current, t0_pkt, due = -1, 0, t0_wall
    speed = opts.speed or 1.0
    chunk: list[CapturedPacket] = []
    for i, (segment, pkt) in enumerate(stream):
        if opts.pps:
            due = t0_wall + i / opts.pps
        else:
            if segment != current:
                current, t0_pkt, segment_start = segment, pkt.ts_ns, due
            # A capture may step backwards in time; never wait for those.
            due = max(due, segment_start + max(0, pkt.ts_ns - t0_pkt) / 1e9 / speed)
        wait = due - time.perf_counter()
        if wait > LINGER_S:
            send(batcher.add(chunk) + batcher.cut_all())
            chunk = []
            time.sleep(wait)
        chunk.append(pkt)
        if len(chunk) >= CHUNK:
            send(batcher.add(chunk))
            chunk = []
    send(batcher.add(chunk))
