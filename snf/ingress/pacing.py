"""Pacing: when the capture agent releases each packet, as tcpreplay times it.

Timed modes (tcpreplay's names): the captured timing times a multiplier
(-x/--multiplier), a fixed packet rate (-p/--pps), or a fixed bit rate
(-M/--mbps) of the packets' wire bytes (their original lengths, as tcpreplay
counts them): packet i leaves once the bytes up to and including it have
had their time on a link of that rate. Every due time is an absolute wall
time fixed from the start of the replay, never from the previous packet, so
delays never add up over a long replay. Top speed (-t) waits for nothing.

--loopdelay-ms: each loop iteration after the first starts that much later
(in every mode). --duration: nothing is released once that much wall time
has passed since the first packet. Lateness, reported by the timed modes, is
how late the agent handed a packet over: the clock reading after its batcher
took it (and published the batches it filled) minus its due time. A batch
not yet full goes at the next wait, when nothing is due for LINGER_S.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from snf.ingress.accumulator import Batcher
from snf.packet.batch import PacketBatch
from snf.packet.capture_chunk import CaptureChunk

__all__ = ["LINGER_S", "Paced", "Schedule", "Timing", "timed", "top_speed"]

Stream = Iterator[tuple[int, CaptureChunk]]  # (segment, chunk); see replay._chunks
Send = Callable[[list[tuple[int, PacketBatch]]], None]
LINGER_S = 0.005  # timed replay: packets due within this window share batches
_STEP = 1024  # top speed with a --duration: the clock is read at least this often


@dataclass(frozen=True)
class Timing:
    """The timing of a replay (snf.ingress.replay.ReplayOptions has the same fields)."""

    speed: float | None = None  # captured timing times this; with pps and mbps None: top speed
    pps: float | None = None  # fixed packets per second (wins over mbps and speed)
    mbps: float | None = None  # fixed megabits per second of wire bytes (wins over speed)
    duration: float | None = None  # seconds of wall time after which nothing is released
    loopdelay_ms: float = 0.0  # pause before every loop iteration after the first

    @property
    def top(self) -> bool:
        return self.speed is None and self.pps is None and self.mbps is None


@dataclass
class Paced:
    """What one pacing pass over the stream did."""

    wire_bytes: int = 0  # original lengths of the packets released
    worst_late_s: float | None = None  # timed modes: the worst release minus due time
    duration_reached: bool = False  # --duration ended it before the stream did


class Schedule:
    """Due wall times of a timed replay, a chunk at a time (vectorised).

    A segment is one pass over one file; `files` segments make a loop
    iteration, so iteration = segment // files (a new one waits --loopdelay-ms).
    With the captured timing each segment keeps its own timing and starts
    where the previous one ended, as tcpreplay plays files and loops.
    """

    def __init__(self, timing: Timing, start: float, files: int) -> None:
        self.timing = timing
        self.files = max(1, files)
        self.delay = timing.loopdelay_ms / 1000
        self.start = start  # the first packet's due time
        self.pause = 0.0  # loop delays so far (the rate modes)
        self.segment = -1
        self.t0_pkt = 0  # the current segment's first packet time
        self.segment_start = start
        self.due_last = start
        self.sent = 0  # packets scheduled so far (-p)
        self.bits = 0  # wire bits scheduled so far (-M)

    def due(self, segment: int, chunk: CaptureChunk) -> np.ndarray:
        timing = self.timing
        if segment != self.segment:
            # The first segment sent never waits, even when a resume starts mid-loop.
            new_loop = self.segment >= 0 and segment // self.files != self.segment // self.files
            gap = self.delay if new_loop else 0.0
            self.segment, self.t0_pkt = segment, int(chunk.ts_ns[0])
            self.pause += gap
            self.segment_start = self.due_last + gap
        n = len(chunk)
        if timing.pps:
            due = self.start + self.pause + (self.sent + np.arange(n)) / timing.pps
        elif timing.mbps:
            bits = self.bits + 8 * np.cumsum(chunk.orig_len)
            self.bits = int(bits[-1])
            due = self.start + self.pause + bits / (timing.mbps * 1e6)
        else:
            # A capture may step backwards in time; never wait for those.
            offsets = np.maximum(chunk.ts_ns - self.t0_pkt, 0) / 1e9 / (timing.speed or 1.0)
            due = np.maximum.accumulate(np.maximum(self.segment_start + offsets, self.due_last))
        self.sent += n
        self.due_last = float(due[-1])
        return due


def timed(stream: Stream, timing: Timing, files: int, batcher: Batcher, send: Send) -> Paced:
    """Release packets at their due wall time; cut batches whenever we wait.

    Due times are computed a chunk at a time; the loop runs once per wait.
    """
    start = time.perf_counter()
    schedule = Schedule(timing, start, files)
    deadline = start + timing.duration if timing.duration is not None else math.inf
    out = Paced()
    worst = -math.inf
    pending = math.inf  # the due time of the last release, until it is timed (inf: none)
    for segment, chunk in stream:
        due = schedule.due(segment, chunk)
        last = int(np.searchsorted(due, deadline, side="left"))  # due later: never sent
        pos = 0
        while pos < last:
            now = time.perf_counter()
            # A release is timed once handed over (full batches published): at this reading.
            worst = max(worst, now - pending)
            pending = math.inf
            if now >= deadline:
                break
            # Everything due within the linger window goes now, the rest waits.
            end = min(max(int(np.searchsorted(due, now + LINGER_S, side="right")), pos), last)
            if end == pos:
                send(batcher.cut_all())
                time.sleep(float(due[pos]) - now)
                end = pos + 1  # the packet that was waited for goes at once
            pending = float(due[pos])  # due times rise: pos, due first, is the latest
            send(batcher.add_chunk(chunk.take(slice(pos, end))))
            pos = end
        out.wire_bytes += int(chunk.orig_len[:pos].sum())
        if pos < len(chunk):
            out.duration_reached = True
            break
    worst = max(worst, time.perf_counter() - pending)
    out.worst_late_s = worst if worst > -math.inf else None
    return out


def top_speed(stream: Stream, timing: Timing, files: int, batcher: Batcher, send: Send) -> Paced:
    """Release every packet at once; only --loopdelay-ms and --duration wait or stop."""
    start = time.perf_counter()
    deadline = start + timing.duration if timing.duration is not None else math.inf
    delay = timing.loopdelay_ms / 1000
    files = max(1, files)
    out = Paced()
    current = -1
    for segment, chunk in stream:
        if segment != current:
            if current >= 0 and delay > 0 and segment // files != current // files:
                send(batcher.cut_all())  # the iteration before the pause goes before it
                time.sleep(max(min(delay, deadline - time.perf_counter()), 0.0))
            current = segment
        step = len(chunk) if deadline == math.inf else _STEP
        for pos in range(0, len(chunk), step):
            if deadline < math.inf and time.perf_counter() >= deadline:
                out.duration_reached = True
                return out
            part = chunk if step >= len(chunk) else chunk.take(slice(pos, pos + step))
            send(batcher.add_chunk(part))
            out.wire_bytes += int(part.orig_len.sum())
    return out
