"""Bounded state of the load balancer: due times of `conn` and `frag`, sweeps, eviction.

A helper of snf.functions.loadbalancer (docs/functions/loadbalancer.md,
"Bounded state"; snf.core.contract, "Bounded state"). A `conn` entry counts
as absent from its due time, last_seen + timeout(proto, bits) + 1 (packet
time); a sweep deletes it there, with the `back` entry that points at it, so
`back` never outgrows `conn`. A `frag` entry is due 30 s after its first
fragment. A full `conn` (max_entries) evicts, before a new flow is stored,
the unanswered flow (nothing from its backend yet: half-open TCP, unanswered
UDP) due first, else the flow due first; ties by key.

The `conn` index is lazy about refreshes. Nearly every packet moves its
flow's last_seen on, and a heap push per packet would cost ~0.8 us of the
~3 us a packet takes. So `ConnDue` holds per key a due time never later than
the entry's: a write that creates an entry or brings its due earlier (a FIN
both ways, a RST) sets it exactly; a refresh that moves it on (last_seen, the
backend's first answer) leaves it, and when such a stale due reaches the top
of its heap the index reads the entry and pushes it again at its true due.
Likewise the unanswered keys are a superset, checked against the entry. What
the index answers (the count, the earliest (due, key), the victim) is
therefore a function of the table alone, as snf.core.expiry's is, however it
got there: grown with the stream or rebuilt after forget().
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

from snf.core.contract import SweepContext
from snf.core.expiry import ExpiryIndex, PartitionIndexes
from snf.core.tables import BatchState, TableView
from snf.packet.fragments import FRAG_TTL_NS

from .net import side_key

__all__ = ["HALF_OPEN", "UNANSWERED", "Bounds", "ConnDue", "back_link"]

TCP = 6
# conn bits beyond the FIN bits 0 (client) and 1 (backend); a reply clears both.
HALF_OPEN = 0x04  # TCP flow opened by a bare SYN: timeout tcp_syn
UNANSWERED = 0x08  # no packet from the backend yet: evicted first
_SLACK = 1024  # stale heap items tolerated beyond the live ones before a rebuild

Read = Callable[[bytes], Any]  # a conn view's get


class _Hints:
    """Keys by (due, key), each due never later than the entry's (module docstring)."""

    __slots__ = ("due", "heap")

    def __init__(self, due: dict[bytes, int]) -> None:
        self.due = due
        self.heap = [(d, k) for k, d in due.items()]
        heapq.heapify(self.heap)

    def set(self, key: bytes, due: int) -> None:
        if self.due.get(key) != due:
            self.due[key] = due
            heapq.heappush(self.heap, (due, key))
            if len(self.heap) > 2 * len(self.due) + _SLACK:
                self.heap = [(d, k) for k, d in self.due.items()]
                heapq.heapify(self.heap)

    def top(self, truth: Callable[[bytes], tuple[int, bool] | None]) -> tuple[int, bytes] | None:
        """The earliest (due, key) whose due is the entry's own; stale dues are
        re-pushed at the entry's, keys without an entry dropped."""
        heap, hints = self.heap, self.due
        while heap:
            d, key = heap[0]
            if hints.get(key) != d:
                heapq.heappop(heap)  # superseded
                continue
            found = truth(key)
            if found is None:
                heapq.heappop(heap)
                del hints[key]
            elif found[0] == d:
                return d, key
            else:
                hints[key] = found[0]
                heapq.heapreplace(heap, (found[0], key))
        return None


class ConnDue:
    """Due times of one partition's `conn` entries, refreshes read lazily."""

    __slots__ = ("_all", "_unanswered", "due_of")

    def __init__(self, due_of: Callable[[bytes, Any], tuple[int, bool]]) -> None:
        self.due_of = due_of
        self._all = _Hints({})
        self._unanswered = _Hints({})

    @classmethod
    def build(
        cls, items: Iterable[tuple[bytes, Any]], due_of: Callable[[bytes, Any], tuple[int, bool]]
    ) -> ConnDue:
        """The index of a table's contents (after forget(), or on first sight)."""
        every: dict[bytes, int] = {}
        unanswered: dict[bytes, int] = {}
        for key, value in items:
            due, embryonic = due_of(key, value)
            every[key] = due
            if embryonic:
                unanswered[key] = due
        index = cls(due_of)
        index._all, index._unanswered = _Hints(every), _Hints(unanswered)
        return index

    def __len__(self) -> int:
        return len(self._all.due)

    def set(self, key: bytes, value: Any) -> None:
        """`key` was written with `value` (a new entry, new bits, a re-pick)."""
        due, embryonic = self.due_of(key, value)
        self._all.set(key, due)
        if embryonic:
            self._unanswered.set(key, due)
        else:
            self._unanswered.due.pop(key, None)

    def discard(self, key: bytes) -> None:
        self._all.due.pop(key, None)
        self._unanswered.due.pop(key, None)

    def first(self, read: Read) -> tuple[int, bytes] | None:
        """The earliest (due, key) of the table read through `read`."""
        return self._all.top(lambda key: self._truth(read, key, False))

    def victim(self, read: Read) -> bytes | None:
        """The entry to evict: the unanswered one due first, else the one due first."""
        top = self._unanswered.top(lambda key: self._truth(read, key, True)) or self.first(read)
        return None if top is None else top[1]

    def _truth(self, read: Read, key: bytes, unanswered: bool) -> tuple[int, bool] | None:
        value = read(key)
        if value is None:
            return None
        found = self.due_of(key, value)
        return None if unanswered and not found[1] else found


def back_link(key: bytes, value: Any) -> tuple[bytes, list[Any]] | None:
    """(back key, back value) of a conn entry: the back entry that is its own."""
    n = (len(key) - 5) // 2
    if n not in (4, 16) or len(key) != 2 * n + 5:
        return None
    try:
        cport = int.from_bytes(key[1 + n : 3 + n], "big")
        bk = side_key(key[0], bytes.fromhex(value[0]), value[1], key[1 : 1 + n], cport)
    except Exception:  # a value we did not write: no back entry is its own
        return None
    return bk, [key[3 + n : 3 + 2 * n].hex(), int.from_bytes(key[3 + 2 * n :], "big")]


def _frag_due(key: bytes, value: Any) -> tuple[int, bool]:
    try:
        first = value[0]
    except Exception:
        return 0, False
    return (first + FRAG_TTL_NS + 1 if first.__class__ is int else 0), False


class Bounds:
    """The load balancer's timeouts, its indexes per partition, sweeps and eviction."""

    def __init__(self, timeout_ns: tuple[int, int, int, int], max_entries: int) -> None:
        self.tcp_ns, self.fin_ns, self.udp_ns, self.syn_ns = timeout_ns
        self.max_entries = max_entries
        self._conn = PartitionIndexes("conn", self.conn_due, ConnDue)
        self._frag = PartitionIndexes("frag", _frag_due)

    def timeout(self, proto: int, bits: int) -> int:
        """Idle timeout of a conn entry (raises on bits we did not write)."""
        if proto != TCP:
            return self.udp_ns
        if bits & 3 == 3:
            return self.fin_ns
        return self.syn_ns if bits & HALF_OPEN else self.tcp_ns

    def conn_due(self, key: bytes, value: Any) -> tuple[int, bool]:
        """(due, unanswered) of a conn entry; a value we did not write is due at 0."""
        try:
            last, bits = value[2], value[3]
            if last.__class__ is int and bits.__class__ is int:
                return last + self.timeout(key[0], bits) + 1, bool(bits & UNANSWERED)
        except Exception:
            pass
        return 0, False

    def indexes(self, state: BatchState) -> tuple[ConnDue, ExpiryIndex]:
        """This partition's indexes, built from its tables after forget()."""
        return self._conn.of(state), self._frag.of(state)

    def forget(self, partition: int) -> None:
        self._conn.forget(partition)
        self._frag.forget(partition)

    @staticmethod
    def frag_due(key: bytes, value: Any) -> int:
        return _frag_due(key, value)[0]

    def drop(self, conn: TableView, back: TableView, due: ConnDue, key: bytes) -> None:
        """Delete a conn entry, and its back entry when that still points at it."""
        value = conn.get(key)
        conn.delete(key)
        due.discard(key)
        link = None if value is None else back_link(key, value)
        if link is not None and back.get(link[0]) == link[1]:
            back.delete(link[0])

    def make_room(self, conn: TableView, back: TableView, due: ConnDue) -> int:
        """Before a new conn key is stored: evict one entry if the table is full.
        Returns the number evicted (0 or 1)."""
        if len(due) < self.max_entries:
            return 0
        victim = due.victim(conn.get)
        if victim is None:
            return 0
        self.drop(conn, back, due, victim)
        return 1

    def sweep(self, state: BatchState, ctx: SweepContext) -> None:
        """Delete the conn (and back) and frag entries expired by ctx.now_ns, at most
        ctx.limit of each table, earliest (due, key) first."""
        conn_due, frag_due = self.indexes(state)
        conn, back = state.table("conn"), state.table("back")
        for _ in range(ctx.limit):
            top = conn_due.first(conn.get)
            if top is None or top[0] > ctx.now_ns:
                break
            self.drop(conn, back, conn_due, top[1])
        frag = state.table("frag")
        for key in frag_due.expired(ctx.now_ns, ctx.limit):
            frag.delete(key)
            frag_due.discard(key)
