"""Which public ports of a partition are held, derived from the NAT's tables
(a helper of snf.functions.nat).

A new binding must find a free port at once, whether none or all of its
partition's ports are held: walking the range and reading `rev` port by port
cost ~0.1 ms per new binding at 60,000 bindings and ~0.2 s once exhausted
(issue 13, bench/nat_ports.py). So a partition keeps, per (proto, public IP,
share), a `PortSet`:

* `held`: one byte per port of the share (ports.Layout): FREE, HELD (a
  binding's rev entry points at it and the binding points back) or FORWARD.
  The first free port from a start is one bytearray.find (memchr, in C).
* `heap`: (due, port) items, for every held port one whose due is at most the
  binding's true due (the packet time from which it counts as expired).
  Refreshes move due later and push nothing; a change that brings it earlier
  (a TCP RST, FINs both ways: the transitory timeout) pushes the new due. The
  head, fixed up from the tables as it surfaces (an item whose binding moved
  on goes back at its true due), is the held port that expires first, ties
  by port.

`PortSets` holds a partition's PortSets, the held public endpoints none
covers (a public IP, port or forward's port an older config had), and the embryonic (TCP,
nothing seen inbound) bindings in a lazy heap of their own, for max_entries.
All of it is a function of the `bind` and `rev` contents: built from them on
the partition's first need after forget() (Bindings.port_sets), then kept in
step by every write of Bindings. So what is chosen from it (the first free
port from a hashed start, the holder that expires first, the embryonic
binding that expires first) does not depend on the process's history.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from heapq import heapify, heappop, heappush, heapreplace

from .config import CompiledNat
from .ports import Layout, ep_key, layout

__all__ = ["FORWARD", "FREE", "HELD", "DueOf", "PortSet", "PortSets"]

FREE, HELD, FORWARD = 0, 1, 2
_SLACK = 1024  # stale heap items tolerated beyond one per holder before compacting

# (proto, public IP, port) -> (due, embryonic) of the binding holding it; None: nobody does
DueOf = Callable[[int, bytes, int], "tuple[int, bool] | None"]


class PortSet:
    """The ports of one (proto, public IP) that land on one partition, and which are held."""

    __slots__ = ("count", "heap", "held", "layout", "partition", "proto", "pub", "share")

    def __init__(
        self, proto: int, pub: bytes, lay: Layout, partition: int, forwards: Iterable[int]
    ) -> None:
        self.proto, self.pub, self.layout, self.partition = proto, pub, lay, partition
        self.share = lay.share[partition]
        self.held = bytearray(len(self.share))
        self.heap: list[tuple[int, int]] = []
        self.count = 0  # HELD bytes
        for port in forwards:
            i = self.index(port)
            if i >= 0:
                self.held[i] = FORWARD

    def index(self, port: int) -> int:
        """The port's place in the share; -1 when it is not in it."""
        lay = self.layout
        off = port - lay.lo
        if not 0 <= off <= lay.hi - lay.lo or lay.part[off] != self.partition:
            return -1
        return lay.slot[off]

    def holds(self, port: int) -> bool:
        i = self.index(port)
        return i >= 0 and self.held[i] == HELD

    def covers(self, port: int) -> bool:
        """In the share and not a forward's: a port this set keeps count of."""
        i = self.index(port)
        return i >= 0 and self.held[i] != FORWARD

    def first_free(self, start: int) -> int | None:
        """The first free port at or after `start`, wrapping around; None when full."""
        held = self.held
        at = bisect_left(self.share, start)
        i = held.find(FREE, at)
        if i < 0:
            i = held.find(FREE, 0, at)
        return None if i < 0 else self.share[i]

    def hold(self, port: int, due: int) -> None:
        i = self.index(port)
        if self.held[i] == FREE:
            self.count += 1
        self.held[i] = HELD
        self.push(due, port)

    def release(self, port: int) -> bool:
        """Mark a held port free; False when it was not held."""
        i = self.index(port)
        if i < 0 or self.held[i] != HELD:
            return False
        self.held[i] = FREE
        self.count -= 1
        return True

    def push(self, due: int, port: int) -> None:
        heappush(self.heap, (due, port))
        if len(self.heap) > 2 * self.count + _SLACK:
            best: dict[int, int] = {}  # one item per held port, its lowest
            for d, p in self.heap:
                if self.holds(p) and best.get(p, d) >= d:
                    best[p] = d
            self.heap = [(d, p) for p, d in best.items()]
            heapify(self.heap)

    def earliest(self, due_of: DueOf, by: int) -> tuple[int, int] | None:
        """(due, port) of the held port that expires first (ties by port) if it
        expires by `by`, else None. Items above `by` need no fixing up."""
        heap, held, index = self.heap, self.held, self.index
        while heap and heap[0][0] <= by:
            d, port = heap[0]
            if held[index(port)] != HELD:
                heappop(heap)
                continue
            found = due_of(self.proto, self.pub, port)
            if found is None:  # nobody holds it after all: it is free
                heappop(heap)
                self.release(port)
            elif found[0] <= d:
                return found[0], port
            else:
                heapreplace(heap, (found[0], port))
        return None


class PortSets:
    """Every PortSet of one partition, the holders none covers, the embryonic ones."""

    __slots__ = ("c", "embryonic", "other_heap", "others", "partitions", "sets")

    def __init__(self, c: CompiledNat, partitions: int) -> None:
        self.c = c
        self.partitions = partitions
        self.sets: dict[tuple[int, bytes, int], PortSet] = {}
        self.others: dict[bytes, int] = {}  # rev key -> lowest due pushed
        self.other_heap: list[tuple[int, bytes]] = []
        self.embryonic: list[tuple[int, bytes]] = []  # (due, rev key), lazy like PortSet.heap

    def __len__(self) -> int:
        """Bindings held here: what max_entries caps."""
        return sum(s.count for s in self.sets.values()) + len(self.others)

    def get(self, proto: int, pub: bytes, partition: int) -> PortSet:
        key = (proto, pub, partition)
        found = self.sets.get(key)
        if found is None:
            c = self.c
            lay = layout(proto, pub, c.lo, c.hi, self.partitions)
            fwd = [port for (p, ip, port) in c.fwd_public if p == proto and ip == pub]
            found = self.sets[key] = PortSet(proto, pub, lay, partition, fwd)
        return found

    def find(self, proto: int, pub: bytes, port: int) -> PortSet | None:
        """The PortSet a public endpoint belongs to; None outside the config."""
        c = self.c
        if pub not in c.public_ips or not c.lo <= port <= c.hi:
            return None
        part = layout(proto, pub, c.lo, c.hi, self.partitions).part[port - c.lo]
        return self.get(proto, pub, part)

    def hold(self, proto: int, pub: bytes, port: int, due: int, embryonic: bool) -> None:
        """A binding now holds (proto, pub, port), expiring at `due`."""
        s = self.find(proto, pub, port)
        if s is not None and s.covers(port):  # a forward's port stays one (older config)
            s.hold(port, due)
        else:
            self._other(ep_key(proto, pub, port), due)
        if embryonic:
            self._embryo(due, ep_key(proto, pub, port))

    def release(self, proto: int, pub: bytes, port: int) -> None:
        """Nobody holds (proto, pub, port) any more."""
        s = self.find(proto, pub, port)
        if s is None or not s.release(port):
            self.others.pop(ep_key(proto, pub, port), None)

    def retime(self, proto: int, pub: bytes, port: int, due: int, embryonic: bool) -> None:
        """The holder's due moved earlier, or it became embryonic."""
        s = self.find(proto, pub, port)
        rkey = ep_key(proto, pub, port)
        if s is not None and s.holds(port):
            s.push(due, port)
        elif rkey in self.others:
            self._other(rkey, due)
        if embryonic:
            self._embryo(due, rkey)

    def _other(self, rkey: bytes, due: int) -> None:
        self.others[rkey] = min(due, self.others.get(rkey, due))
        heappush(self.other_heap, (due, rkey))
        if len(self.other_heap) > 2 * len(self.others) + _SLACK:
            self.other_heap = [(d, k) for k, d in self.others.items()]
            heapify(self.other_heap)

    def _embryo(self, due: int, rkey: bytes) -> None:
        heappush(self.embryonic, (due, rkey))
        if len(self.embryonic) > 2 * len(self) + _SLACK:
            best: dict[bytes, int] = {}  # one item per held endpoint, its lowest
            for d, k in self.embryonic:
                if self._held(k) and best.get(k, d) >= d:
                    best[k] = d
            self.embryonic = [(d, k) for k, d in best.items()]
            heapify(self.embryonic)

    def _held(self, rkey: bytes) -> bool:
        port = int.from_bytes(rkey[5:7], "big")
        s = self.find(rkey[0], rkey[1:5], port)
        return (s is not None and s.holds(port)) or rkey in self.others

    def first(self, due_of: DueOf, by: int) -> tuple[int, bytes] | None:
        """(due, rev key) of the binding that expires first (ties by rev key) if it
        expires by `by`, else None."""
        best: tuple[int, bytes] | None = None
        for s in self.sets.values():
            head = s.earliest(due_of, by)
            if head is not None:
                mine = head[0], ep_key(s.proto, s.pub, head[1])
                if best is None or mine < best:
                    best = mine
        top = _lazy_first(self.other_heap, due_of, lambda k, _: k in self.others, by)
        if top is not None and (best is None or top < best):
            best = top
        return best

    def victim(self, due_of: DueOf) -> bytes | None:
        """Rev key of the embryonic binding that expires first (ties by rev key), or None."""
        top = _lazy_first(
            self.embryonic, due_of, lambda k, found: found[1] and self._held(k), 1 << 64
        )
        return None if top is None else top[1]


def _lazy_first(
    heap: list[tuple[int, bytes]],
    due_of: DueOf,
    keep: Callable[[bytes, tuple[int, bool]], bool],
    by: int,
) -> tuple[int, bytes] | None:
    """The head of a heap of lowest dues by rev key, fixed up from the tables, if
    it is due by `by`."""
    while heap and heap[0][0] <= by:
        d, rkey = heap[0]
        found = due_of(rkey[0], rkey[1:5], int.from_bytes(rkey[5:7], "big"))
        if found is None or not keep(rkey, found):
            heappop(heap)
        elif found[0] <= d:
            return found[0], rkey
        else:
            heapreplace(heap, (found[0], rkey))
    return None
