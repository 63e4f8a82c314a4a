"""The capture agent: read captures, batch per partition, publish.

Timing follows tcpreplay (snf/ingress/pacing.py): captured timing scaled by
`speed` (tcpreplay's --multiplier), a fixed packet rate (`pps`), a fixed bit
rate (`mbps`), or top speed; with tcpreplay's --duration, --loopdelay-ms,
--preload-pcap (`preload`) and --unique-ip (snf/ingress/unique_ip.py). Whatever
the speed, functions only ever see packet time, so results do not depend on it.

Resuming (`ReplayOptions.skip`, snf/ingress/checkpoint.py): the first `skip`
packets of the stream are routed but not published, so the rest keep their
ids (seq = position in the stream) and their partitions, and the pacing
clock starts again at the first packet sent.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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
from snf.ingress.pacing import Timing, timed, top_speed
from snf.ingress.unique_ip import unique_ip
from snf.packet.batch import PacketBatch
from snf.packet.capture_chunk import CaptureChunk
from snf.packet.capture_file import CaptureError, read_chunks

__all__ = ["ReplayOptions", "ReplaySummary", "check_captures", "replay", "source_id_for"]

Publish = Callable[[int, PacketBatch], None]
Kept = dict[Path, tuple[list[CaptureChunk], list[str]]]  # a file's chunks and warnings


@dataclass
class ReplayOptions:
    speed: float | None = None  # None: top speed; 1.0: as captured; 2.0: twice as fast
    pps: float | None = None  # fixed packets per second (overrides speed and mbps)
    mbps: float | None = None  # fixed megabits per second of wire bytes (overrides speed)
    loop: int = 1
    unique_ip: bool = False  # loop k (from 0) shifts IP addresses by k (snf.ingress.unique_ip)
    duration: float | None = None  # stop sending after this many seconds of wall time
    loopdelay_ms: float = 0.0  # pause between loop iterations
    preload: bool = False  # read every capture into memory before the clock starts
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
    wire_bytes: int = 0  # original (on the wire) lengths of the packets published
    worst_late_ms: float | None = None  # timed replays: worst release minus due time
    duration_reached: bool = False  # stopped by `duration` before the end of the captures

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0

    @property
    def mbps(self) -> float:
        """The achieved rate in megabits per second of wire bytes (as -M counts them)."""
        return self.wire_bytes * 8 / 1e6 / self.seconds if self.seconds > 0 else 0.0


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


def _chunks(
    captures: Sequence[Path],
    opts: ReplayOptions,
    warn: Callable[[str], None],
    advance: Callable[[int], None],
    kept: Kept,
) -> Iterator[tuple[int, CaptureChunk]]:
    """(segment, chunk): a segment is one pass over one file, timed on its own.

    A file replayed again (`loop`) is walked once: its chunks (arrays over the
    mapped file) are kept, and its warnings repeated on every pass. `kept`
    may come filled (`preload`). With `unique_ip`, loop k's chunks are
    rewritten copies (pass k shifts addresses by k).
    """
    left = opts.limit if opts.limit is not None else -1
    segment = 0
    for k in range(opts.loop):
        for path in captures:
            for chunk in _pass(path, opts, warn, kept):
                if left == 0:
                    return
                if 0 < left < len(chunk):
                    chunk = chunk.take(slice(0, left))
                left -= len(chunk) if left > 0 else 0
                advance(int(chunk.cap_len.sum()) + 16 * len(chunk))
                yield segment, unique_ip(chunk, k) if opts.unique_ip else chunk
            segment += 1


def _pass(
    path: Path, opts: ReplayOptions, warn: Callable[[str], None], kept: Kept
) -> Iterable[CaptureChunk]:
    """The chunks of one pass over `path`: kept ones, else read (and kept when looping)."""
    if path in kept:
        chunks, found = kept[path]
        for message in found:
            warn(message)
        return chunks
    found: list[str] = []

    def note(message: str) -> None:
        found.append(message)
        warn(message)

    read = read_chunks(path, on_warning=note)
    if opts.loop == 1:
        return read
    kept[path] = (list(read), found)
    return kept[path][0]


def _preload(captures: Sequence[Path]) -> Kept:
    """Every capture's chunks over an in-memory copy of the file (tcpreplay's -K):
    once this returns, sending never waits for the disk. Warnings are kept for
    each pass to repeat, as without preloading."""
    kept: Kept = {}
    for path in captures:
        if path in kept:
            continue
        found: list[str] = []
        chunks = list(read_chunks(path, on_warning=found.append))
        if chunks:
            mapped = chunks[0].data  # every chunk of a file shares its mapping
            copy = bytes(mapped)
            for chunk in chunks:
                if chunk.data is mapped:
                    chunk.data = copy
        kept[path] = (chunks, found)
    return kept


def replay(
    captures: Sequence[Path],
    partitions: int,
    publish: Publish,
    opts: ReplayOptions | None = None,
    console: Console | None = None,
    keyers: Sequence[NetworkFunction] = (),
    keep_headers: bool = False,
) -> ReplaySummary:
    """Read, batch and publish the captures, partitioned by `keyers` (snf.pipeline.routing).
    `keep_headers`: batches carry their parsed headers (an in-process consumer)."""
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
        keep_headers=keep_headers,
    )
    total = sum(p.stat().st_size for p in captures) * opts.loop

    def warn(msg: str) -> None:
        summary.warnings.append(msg)
        console.print(f"[yellow]warning:[/] {msg}")

    progress = _progress(console, opts.progress)
    kept = _preload(captures) if opts.preload else {}
    started = time.perf_counter()  # after any preload: disk reads are not part of the timing
    with progress:
        task = progress.add_task("replay", total=total, pkts=0)
        seen = [0]

        def advance(nbytes: int) -> None:
            seen[0] += nbytes

        def send(ready: list[tuple[int, PacketBatch]]) -> None:
            for part, batch in ready:
                publish(part, batch)
            progress.update(task, completed=seen[0], pkts=batcher.stats.packets)

        stream = _chunks(captures, opts, warn, advance, kept)
        skipped_ts = 0
        if opts.skip > 0:
            summary.skipped, skipped_ts, stream = _route_only(stream, opts.skip, batcher, keyers)
        timing = Timing(opts.speed, opts.pps, opts.mbps, opts.duration, opts.loopdelay_ms)
        pace = top_speed if timing.top else timed
        paced = pace(stream, timing, len(captures), batcher, send)
        send(batcher.cut_all())
        progress.update(task, completed=total)
    summary.seconds = time.perf_counter() - started
    summary.packets = batcher.stats.packets
    summary.bytes = batcher.stats.bytes
    summary.batches = batcher.stats.batches
    summary.per_partition = dict(batcher.stats.per_partition)
    summary.last_ts_ns = max(batcher.stats.last_ts_ns, skipped_ts)
    summary.wire_bytes = paced.wire_bytes
    late = paced.worst_late_s
    summary.worst_late_ms = None if late is None else late * 1000
    summary.duration_reached = paced.duration_reached
    return summary


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("replay"),
        BarColumn(),
        TextColumn("{task.fields[pkts]:,} packets"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


def _route_only(
    stream: Iterator[tuple[int, CaptureChunk]],
    skip: int,
    batcher: Batcher,
    keyers: Sequence[NetworkFunction],
) -> tuple[int, int, Iterator[tuple[int, CaptureChunk]]]:
    """Consume the first `skip` packets without publishing: (count, latest packet
    time, the rest of the stream).

    They go through a throw-away Batcher whose FlowRouter then replaces
    `batcher`'s: a later fragment whose first fragment was skipped still
    follows it, so every packet sent lands where one uninterrupted run puts it.
    """
    warm = Batcher(batcher.partitions, batcher.source_id, keyers=keyers)
    count = 0
    rest: list[tuple[int, CaptureChunk]] = []
    for segment, chunk in stream:
        take = min(len(chunk), skip - count)
        warm.add_chunk(chunk if take == len(chunk) else chunk.take(slice(0, take)))
        count += take
        if take < len(chunk):
            rest.append((segment, chunk.take(slice(take, len(chunk)))))
        if count >= skip:
            break
    batcher.router = warm.router
    return count, warm.stats.last_ts_ns, itertools.chain(rest, stream)
