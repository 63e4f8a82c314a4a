"""Attempts: the input offset each partition is on, in a file that outlives the process.

Every failure of one message is caught and dead-lettered (snf.runtime.worker.
dead_letters), but a message can still take the whole process down: memory
exhausted, a C extension crashing, the kernel's OOM killer. The restarted
worker would read it again and die again, for ever. So before a record is
handled its (offset, tries) goes into a fixed 32-byte slot of the partition
in `attempts` (one pwrite, no fsync: it must survive the process, not the
machine), and the slot is blanked when the record is done. A starting worker
reads the slots left behind: a record that was being handled when a process
died MAX_TRIES times is dead-lettered instead of tried again.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

__all__ = ["ATTEMPTS_FILE", "MAX_TRIES", "Attempts"]

log = logging.getLogger("snf.worker")
ATTEMPTS_FILE = "attempts"
MAX_TRIES = 2  # processes a record may take down before it is dead-lettered
SLOT = 32
MAX_SLOTS = 1 << 16  # partitions per topic are far fewer; a bound on the file
_BLANK = b" " * (SLOT - 1) + b"\n"


class Attempts:
    def __init__(self, path: Path | None) -> None:
        self.suspects: dict[int, tuple[int, int]] = {}  # partition -> (offset, tries)
        self.fd: int | None = None
        if path is None:
            return
        with contextlib.suppress(OSError):
            self.suspects = _read(path.read_bytes())
        if self.suspects:
            log.warning("records being handled when the last process died: %s", self.suspects)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def start(self, partition: int, offset: int) -> int:
        """Note that `offset` is being handled; return how many processes died on it."""
        died = 0
        suspect = self.suspects.get(partition)
        if suspect is not None and suspect[0] == offset:
            died = suspect[1]
            del self.suspects[partition]
        self._write(partition, f"{offset} {died + 1}".encode())
        return died

    def done(self, partition: int) -> None:
        self._write(partition, None)

    def _write(self, partition: int, text: bytes | None) -> None:
        if self.fd is None or not 0 <= partition < MAX_SLOTS:
            return
        slot = _BLANK if text is None else text.ljust(SLOT - 1)[: SLOT - 1] + b"\n"
        os.pwrite(self.fd, slot, partition * SLOT)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _read(data: bytes) -> dict[int, tuple[int, int]]:
    suspects = {}
    for partition in range(min(len(data) // SLOT, MAX_SLOTS)):
        fields = data[partition * SLOT : (partition + 1) * SLOT].split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            suspects[partition] = (int(fields[0]), int(fields[1]))
    return suspects
