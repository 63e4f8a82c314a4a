"""Replay checkpoints: a capture agent killed mid-replay resumes where Kafka's acks end.

While `snf replay` runs, the producer's delivery callbacks feed an AckTracker
with the seqs of every acknowledged batch. Batches of different partitions
are acknowledged out of order, so the tracker keeps the contiguous prefix:
the highest seq such that every packet up to it is acknowledged. A writer
thread records it at most every `interval` seconds (tmp file, fsync, rename:
a kill leaves the old checkpoint or the new one, never half of one).

`--resume` skips the packets up to that prefix (snf.ingress.replay `skip`); the rest
keep their ids (same source id, same seq). Packets published but not yet
acknowledged at the kill are sent again: at-least-once at the agent, with
identical ids, which the sink (and any consumer that deduplicates by packet
id) removes.

The checkpoint also records what it is a checkpoint of (source id, capture
files with sizes and mtimes, loop and limit, pipeline instance, topic,
partitions, ingress routing) and refuses to resume anything else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from snf.errors import SnfError
from snf.kafka.settings import snf_home

__all__ = [
    "AckTracker",
    "Checkpoint",
    "CheckpointError",
    "CheckpointSession",
    "ReplayIdentity",
    "default_path",
    "load",
    "save",
    "sigterm_as_interrupt",
]

VERSION = 1
log = logging.getLogger("snf.ingress.replay")


class CheckpointError(SnfError):
    """A checkpoint that cannot be read, is in use, or belongs to another replay."""


@dataclass(frozen=True)
class ReplayIdentity:
    """What a checkpoint is a checkpoint of: any difference refuses a resume."""

    source_id: int
    captures: tuple[tuple[str, int, int], ...]  # (absolute path, size, mtime ns)
    loop: int
    limit: int | None
    pipeline: str  # the pipeline instance name
    topic: str
    partitions: int
    routing: (
        str  # how ingress is partitioned (snf.pipeline.routing): decides where resent packets go
    )

    @classmethod
    def of(cls, captures: Sequence[Path], **fields: Any) -> ReplayIdentity:
        stats = [(str(p.resolve()), p.stat()) for p in captures]
        return cls(captures=tuple((n, s.st_size, s.st_mtime_ns) for n, s in stats), **fields)

    def differences(self, other: ReplayIdentity) -> list[str]:
        out = []
        if self.captures != other.captures:
            out.append(f"captures {_files(other.captures)} -> {_files(self.captures)}")
        for name in ("source_id", "loop", "limit", "pipeline", "topic", "partitions", "routing"):
            was, now = getattr(other, name), getattr(self, name)
            if was != now:
                out.append(f"{name} {was!r} -> {now!r}")
        return out


def _files(captures: Iterable[tuple[str, int, int]]) -> str:
    return "[" + ", ".join(f"{p} ({size} B, mtime {mt})" for p, size, mt in captures) + "]"


@dataclass
class Checkpoint:
    identity: ReplayIdentity
    # Fixed at the first start and kept by every resume: the end marker is
    # named after it, so a marker sent again after a kill counts once.
    run_id: str = field(default_factory=lambda: f"{time.time_ns():x}")
    acked_seq: int = -1  # every packet with seq <= acked_seq was acknowledged by Kafka
    complete: bool = False  # every packet acknowledged
    ended: bool = False  # ... and the end marker too

    def to_json(self) -> dict[str, Any]:
        ident = asdict(self.identity)
        ident["source_id"] = f"{self.identity.source_id:016x}"  # as packet ids print it
        ident["captures"] = [
            {"path": p, "size": s, "mtime_ns": m} for p, s, m in self.identity.captures
        ]
        state = {k: v for k, v in asdict(self).items() if k != "identity"}
        state["flushed"] = state.pop("ended")  # the file's name for it
        return {"version": VERSION, **ident, **state, "updated": time.time()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Checkpoint:
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
        captures = tuple((c["path"], c["size"], c["mtime_ns"]) for c in data["captures"])
        identity = ReplayIdentity(
            source_id=int(data["source_id"], 16),
            captures=captures,
            **{k: data[k] for k in ("loop", "limit", "pipeline", "topic", "partitions", "routing")},
        )
        state = {k: data[k] for k in ("run_id", "acked_seq", "complete")}
        return cls(identity=identity, ended=data["flushed"], **state)


def default_path(pipeline: str, source_id: int) -> Path:
    """$SNF_HOME/replay/<pipeline instance>-<source id>.json"""
    return snf_home() / "replay" / f"{pipeline}-{source_id:016x}.json"


def load(path: Path) -> Checkpoint | None:
    """The checkpoint at `path`; None when there is none."""
    try:
        return Checkpoint.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read replay checkpoint {path}: {exc}") from exc


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Atomically: write a temporary file, fsync it, rename it over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        json.dump(checkpoint.to_json(), f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a power cut
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AckTracker:
    """The contiguous prefix of acknowledged seqs, fed in any order.

    `acked` runs on the producer's I/O thread (and on the caller's when a
    future is already done), hence the lock. Acked seqs beyond a gap wait in
    a set; it holds at most the packets in flight.
    """

    def __init__(self, first_seq: int = 0) -> None:
        self._next = first_seq  # the lowest seq not acknowledged yet
        self._ahead: set[int] = set()
        self._lock = threading.Lock()

    def acked(self, seqs: np.ndarray | Iterable[int]) -> None:
        with self._lock:
            ahead = self._ahead
            ahead.update(seqs.tolist() if isinstance(seqs, np.ndarray) else seqs)
            n = self._next
            while n in ahead:
                ahead.remove(n)
                n += 1
            self._next = n

    @property
    def last(self) -> int:
        """Every packet with seq <= last is acknowledged (-1: none)."""
        return self._next - 1


class CheckpointSession:
    """One replay's checkpoint: lock it, load or start it, record acks, finish it.

    Use as a context manager around the replay; pass `tracker.acked` as the
    publisher's `on_delivered`, skip `resume_at` packets, and call `finish`
    once the producer has delivered everything (and the end marker, if any).
    """

    def __init__(
        self, path: Path, identity: ReplayIdentity, *, resume: bool, interval: float = 0.5
    ) -> None:
        self.path = path
        self.identity = identity
        self.resume = resume
        self.interval = interval
        self.notes: list[str] = []  # what happened to an existing checkpoint, for the user
        self.checkpoint = Checkpoint(identity)
        self.tracker = AckTracker()
        self._lock_file: IO[str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def resume_at(self) -> int:
        """Packets of the stream to skip: seqs 0 .. resume_at - 1 are acknowledged."""
        return self.checkpoint.acked_seq + 1

    @property
    def end_id(self) -> str:
        return f"replay-{self.identity.source_id:x}-{self.checkpoint.run_id}"

    def __enter__(self) -> CheckpointSession:
        self._lock()
        try:
            self._start()
        except BaseException:
            self._unlock()
            raise
        self._thread = threading.Thread(target=self._run, name="snf-checkpoint", daemon=True)
        self._thread.start()
        return self

    def _start(self) -> None:
        old = load(self.path)
        if self.resume and old is not None:
            diff = self.identity.differences(old.identity)
            if diff:
                raise CheckpointError(
                    f"replay checkpoint {self.path} is for another replay: {'; '.join(diff)}. "
                    "Replay without --resume to start from the first packet (this replaces "
                    "the checkpoint), or give another file with --checkpoint"
                )
            self.checkpoint = old
            self.notes.append(
                f"resuming from {self.path}: packets 0..{old.acked_seq} were acknowledged"
            )
        elif self.resume:
            self.notes.append(f"no replay checkpoint at {self.path}: starting from packet 0")
        elif old is not None and not old.complete and old.acked_seq >= 0:
            self.notes.append(
                f"replacing the unfinished replay checkpoint {self.path} "
                f"(packets 0..{old.acked_seq} acknowledged; --resume would continue it)"
            )
        self.tracker = AckTracker(self.resume_at)
        save(self.path, self.checkpoint)  # on disk before the first packet leaves

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.write()
            except OSError as exc:  # keep replaying: a resume would only resend more
                log.warning("cannot write replay checkpoint %s: %s", self.path, exc)

    def write(self) -> None:
        """Record the acknowledged prefix, if it moved."""
        last = self.tracker.last
        if last != self.checkpoint.acked_seq:
            self.checkpoint.acked_seq = last
            save(self.path, self.checkpoint)

    def finish(self, *, ended: bool) -> None:
        """Everything was delivered: mark the replay complete."""
        self._stop_thread()
        self.checkpoint.acked_seq = self.tracker.last
        self.checkpoint.complete = True
        self.checkpoint.ended = ended or self.checkpoint.ended
        save(self.path, self.checkpoint)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._stop_thread()
            self.write()  # a failed or interrupted replay keeps what was acknowledged
        finally:
            self._unlock()

    def _stop_thread(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _lock(self) -> None:
        # Two agents on one checkpoint would overwrite each other's progress.
        # flock: the kernel releases it when the holder dies, even by SIGKILL.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.with_name(self.path.name + ".lock").open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise CheckpointError(
                f"replay checkpoint {self.path} is in use by another snf replay "
                "(give concurrent replays of the same captures their own --checkpoint)"
            ) from None
        self._lock_file = f

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service stop) unwinds like Ctrl-C: what is in flight is
    delivered and recorded, so a resume resends nothing. Main thread only."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
