"""Outbound sequence numbers that never repeat, reserved a block at a time.

A number may be used only once under one key: a repeat under AES-GCM gives
away the key stream and the authentication key. Writing the counter per
packet would cost a changelog record per packet, so the `seq` table holds a
*reservation* per outbound SA: every number below it may have been used.
The counter of numbers actually used lives in the process. When a packet
needs a number at or beyond the reservation, the batch raises it by
`block`; `seq` is one of the core's reserved tables
(NetworkFunction.reserved_tables), so the worker sends the batch's packets
only after Kafka acknowledged that write, and a recovery never undoes it.

A process that starts on a partition, or takes one over after a crash, or
had the partition's state change beneath it (`forget`), knows no counter:
it starts at the reservation, so a crash leaves unused at most the rest of
one block (plus the numbers the old owner took for packets that never reached
Kafka), and never reuses a number. Without ESN the last number is 2^32 - 1, with ESN 2^64 - 1;
beyond it there is no wrap, only `seq_exhausted`.
"""

from __future__ import annotations

from snf.core.tables import TableView

__all__ = ["SEQ_TABLE", "Numbers", "SequenceSpace"]

SEQ_TABLE = "seq"
_FIRST = 1  # RFC 4303 §3.3.3: the first packet sent on an SA has sequence number 1


class SequenceSpace:
    """The in-process counters of one core, per partition and outbound SA."""

    def __init__(self, block: int) -> None:
        self.block = block
        self.reservations = 0  # blocks reserved by this process (the core's metric)
        self._next: dict[int, dict[bytes, int]] = {}  # partition -> SA key -> next number

    def forget(self, partition: int) -> None:
        self._next.pop(partition, None)

    def numbers(self, partition: int, table: TableView, key: bytes, last: int) -> Numbers:
        """SA `key`'s numbers for one batch (the table is read once)."""
        return Numbers(self, self._next.setdefault(partition, {}), table, key, last)


class Numbers:
    """One SA's sequence numbers within one batch."""

    __slots__ = ("counters", "key", "last", "next", "reserved", "space", "table")

    def __init__(
        self,
        space: SequenceSpace,
        counters: dict[bytes, int],
        table: TableView,
        key: bytes,
        last: int,
    ) -> None:
        self.space, self.counters, self.table, self.key, self.last = (
            space,
            counters,
            table,
            key,
            last,
        )
        stored = table.get(key)
        self.reserved = 0 if stored is None else int(stored)  # 0: nothing reserved yet
        seq = counters.get(key)
        # A new owner knows no counter: nothing below the reservation is safe.
        self.next = seq if seq is not None else max(_FIRST, self.reserved)

    def take(self) -> int | None:
        """The next number (None: all up to `last` are used), reserving a new block
        in the table first when the number is not reserved yet."""
        seq = self.next
        if seq > self.last:
            return None
        if seq >= self.reserved:
            self.reserved = min(seq + self.space.block, self.last + 1)
            self.table.set(self.key, self.reserved)
            self.space.reservations += 1
        self.next = self.counters[self.key] = seq + 1
        return seq
