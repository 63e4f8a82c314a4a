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

__all__ = ["SEQ_TABLE", "SequenceSpace"]

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

    def take(self, partition: int, table: TableView, key: bytes, last: int) -> int | None:
        """The next number of SA `key` (None: all up to `last` are used), reserving
        a new block in `table` first when the number is not reserved yet."""
        counters = self._next.setdefault(partition, {})
        reserved = table.get(key)
        seq = counters.get(key)
        if seq is None:  # a new owner: nothing below the reservation is safe
            seq = _FIRST if reserved is None else int(reserved)
        if seq > last:
            counters[key] = seq
            return None
        if reserved is None or seq >= int(reserved):
            table.set(key, min(seq + self.block, last + 1))
            self.reservations += 1
        counters[key] = seq + 1
        return seq
