"""Dynamic NAT bindings over the `bind` and `rev` tables (a helper of snf.functions.nat).

    bind  key: proto byte + internal IPv4 (4 bytes) + internal port (2 bytes, BE)
          value: [public IP hex, public port, last_seen_ns, tcp_bits, remotes]
    rev   key: proto byte + public IPv4 + public port
          value: [internal IP hex, internal port]

`rev` only points at `bind`; a `rev` entry whose binding is missing, expired
or points elsewhere is stale and its port is free. `remotes` lists, oldest
first, the remotes the internal endpoint sent to (at most MAX_REMOTES): the
address hex (address-dependent filtering) or address hex + 4 hex digits of
port (address-and-port-dependent); empty with endpoint-independent filtering.
ICMP echo remotes are addresses only (a query has no remote port).

TCP bits: OUT/IN (a packet seen that way), FIN_OUT/FIN_IN, RST. A binding is
"established" (timeout `tcp`) once packets went both ways, until FINs went
both ways or a RST was seen; otherwise "transitory" (`tcp_transitory`). A
bare SYN after FIN both ways or a RST starts over. A TCP binding that has
seen nothing inbound is embryonic (half-open): max_entries evicts those.

Port choice, expiry by sweep and max_entries go through the partition's
PortSets (portsets.py), which every write here keeps in step.
"""

from __future__ import annotations

from typing import Any

from snf.core.contract import TABLE_FULL
from snf.core.tables import TableView

from .config import CompiledNat
from .outcome import PORTS_EXHAUSTED
from .ports import EndpointHasher, ep_key, pool_index, start_port
from .portsets import PortSets

__all__ = ["MAX_REMOTES", "Bindings", "ep_key", "remote_key", "tcp_bits"]

MAX_REMOTES = 64
OUT, IN, FIN_OUT, FIN_IN, RST = 1, 2, 4, 8, 16
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10


def remote_key(mode: int, proto: int, addr: bytes, port: int) -> str:
    """How a binding's `remotes` lists a remote under filtering `mode` (1 ADF, 2 APDF)."""
    return addr.hex() if mode == 1 or proto == 1 else addr.hex() + f"{port:04x}"


def tcp_bits(bits: int, flags: int, outbound: bool) -> int:
    """The TCP bits after a packet with `flags` went out (or in)."""
    way = OUT if outbound else IN
    if flags & _RST:
        return bits | way | RST
    if flags & (_SYN | _ACK) == _SYN and (
        bits & RST or bits & (FIN_OUT | FIN_IN) == FIN_OUT | FIN_IN
    ):
        bits = 0  # a new connection on the same binding
    bits |= way
    if flags & _FIN:
        bits |= FIN_OUT if outbound else FIN_IN
    return bits


class Bindings:
    """Lookups, allocation and refresh of dynamic bindings for one batch of one partition.

    `sets` holds each partition's PortSets (the core keeps it across batches);
    this partition's is built from the tables when first needed."""

    def __init__(
        self,
        c: CompiledNat,
        bind: TableView,
        rev: TableView,
        partitions: int,
        ep: EndpointHasher,
        sets: dict[int, PortSets] | None = None,
        partition: int = 0,
        max_entries: int = 0,
    ) -> None:
        self.c = c
        self.bind = bind
        self.rev = rev
        self.partitions = partitions
        self.ep = ep
        self.mode = c.filtering  # 0 EIF, 1 ADF, 2 APDF
        self.sets: dict[int, PortSets] = {} if sets is None else sets
        self.partition = partition
        self.max_entries = max_entries  # 0: no cap
        self.evicted = 0

    def timeout(self, proto: int, bits: int) -> int:
        c = self.c
        if proto == 6:
            est = bits & (OUT | IN) == OUT | IN and not bits & RST
            return (
                c.tcp_ns
                if est and bits & (FIN_OUT | FIN_IN) != FIN_OUT | FIN_IN
                else c.transitory_ns
            )
        return c.udp_ns if proto == 17 else c.icmp_ns

    def live(self, entry: list[Any], proto: int, t: int) -> bool:
        return t - entry[2] <= self.timeout(proto, entry[3])

    def remote(self, proto: int, addr: bytes, port: int) -> str:
        return remote_key(self.mode, proto, addr, port)

    # -- the port sets --------------------------------------------------------

    def port_sets(self) -> PortSets:
        """This partition's PortSets, built from `rev` and `bind` after forget()."""
        sets = self.sets.get(self.partition)
        if sets is None:
            sets = self.sets[self.partition] = PortSets(self.c, self.partitions)
            for rkey, owner in self.rev.items():
                p, pub, port = rkey[0], rkey[1:5], int.from_bytes(rkey[5:7], "big")
                found = self._held_by(p, pub, port, owner)
                if found is not None:
                    sets.hold(p, pub, port, *self._due(p, found[1]))
        return sets

    def _due(self, p: int, entry: list[Any]) -> tuple[int, bool]:
        """(due, embryonic): from `due` on (packet time) the binding counts as expired."""
        return entry[2] + self.timeout(p, entry[3]) + 1, p == 6 and not entry[3] & IN

    def _held_by(
        self, p: int, pub: bytes, port: int, owner: list[Any] | None
    ) -> tuple[bytes, list[Any]] | None:
        """(bind key, entry) of the binding holding (p, pub, port) when `owner` (its
        rev value) points at a binding that points back; else None."""
        if owner is None:
            return None
        key = ep_key(p, bytes.fromhex(owner[0]), owner[1])
        entry = self.bind.get(key)
        if entry is None or entry[0] != pub.hex() or entry[1] != port:
            return None
        return key, entry

    def holder(self, p: int, pub: bytes, port: int) -> tuple[bytes, list[Any]] | None:
        return self._held_by(p, pub, port, self.rev.get(ep_key(p, pub, port)))

    def due_of(self, p: int, pub: bytes, port: int) -> tuple[int, bool] | None:
        found = self.holder(p, pub, port)
        return None if found is None else self._due(p, found[1])

    def retimed(self, p: int, entry: list[Any], last: int, bits: int) -> None:
        """A TCP binding's bits change: tell the port sets when that brings its due
        earlier or makes it embryonic (refreshes alone only move it later)."""
        sets = self.sets.get(self.partition)
        if sets is None:
            return
        due = last + self.timeout(p, bits) + 1
        embryonic = not bits & IN
        if due < entry[2] + self.timeout(p, entry[3]) + 1 or (embryonic and entry[3] & IN):
            sets.retime(p, bytes.fromhex(entry[0]), entry[1], due, embryonic)

    def _release(self, p: int, pub: bytes, port: int) -> None:
        sets = self.sets.get(self.partition)
        if sets is not None:
            sets.release(p, pub, port)

    def _refresh(
        self,
        key: bytes,
        entry: list[Any],
        proto: int,
        t: int,
        flags: int,
        outbound: bool,
        remote: str | None,
    ) -> None:
        """Write the entry after a packet, only when it changed."""
        last = entry[2] if entry[2] > t else t
        bits = tcp_bits(entry[3], flags, outbound) if proto == 6 else 0
        remotes = entry[4]
        if remote is not None and remote not in remotes:
            remotes = [*remotes[-(MAX_REMOTES - 1) :], remote]
        if bits != entry[3]:
            self.retimed(proto, entry, last, bits)
        if last != entry[2] or bits != entry[3] or remotes is not entry[4]:
            self.bind.set(key, [entry[0], entry[1], last, bits, remotes])

    # -- outbound -----------------------------------------------------------

    def outbound(
        self, p: int, s: bytes, sp: int, d: bytes, dp: int, flags: int, t: int
    ) -> tuple[bytes, int] | str:
        """The public endpoint of internal (p, s, sp), allocating it when needed;
        else the drop reason (PORTS_EXHAUSTED, TABLE_FULL). Writes the binding."""
        key = ep_key(p, s, sp)
        entry = self.bind.get(key)
        remote = self.remote(p, d, dp) if self.mode else None
        if entry is not None and self.live(entry, p, t):
            self._refresh(key, entry, p, t, flags, True, remote)
            return bytes.fromhex(entry[0]), entry[1]
        found = self._allocate(p, s, sp, key, entry, t)
        if found is None or (entry is None and found[2] is None and not self._room()):
            if entry is not None:
                self._forget(key, entry, p)
            return PORTS_EXHAUSTED if found is None else TABLE_FULL
        pub_ip, port, victim = found
        if victim is not None:
            self.bind.delete(victim)
        if entry is not None and (entry[0] != pub_ip.hex() or entry[1] != port):
            self._forget(key, entry, p)
        rkey = ep_key(p, pub_ip, port)
        owner = [s.hex(), sp]
        if self.rev.get(rkey) != owner:
            self.rev.set(rkey, owner)
        bits = tcp_bits(0, flags, True) if p == 6 else 0
        fresh = [pub_ip.hex(), port, t, bits, [] if remote is None else [remote]]
        if fresh != entry:
            self.bind.set(key, fresh)
        self.port_sets().hold(p, pub_ip, port, *self._due(p, fresh))
        return pub_ip, port

    def _room(self) -> bool:
        """Room for one more binding under max_entries, evicting the embryonic binding
        that expires first when full; False: full and nothing to evict."""
        sets = self.port_sets()
        if not self.max_entries or len(sets) < self.max_entries:
            return True
        rkey = sets.victim(self.due_of)
        if rkey is None:
            return False
        p, pub, port = rkey[0], rkey[1:5], int.from_bytes(rkey[5:7], "big")
        found = self.holder(p, pub, port)
        if found is not None:
            self.bind.delete(found[0])
        self.rev.delete(rkey)
        sets.release(p, pub, port)
        self.evicted += 1
        return True

    def _forget(self, key: bytes, entry: list[Any], p: int) -> None:
        """Delete an expired binding and its rev entry (when it still points here)."""
        self.bind.delete(key)
        pub, port = bytes.fromhex(entry[0]), entry[1]
        rkey = ep_key(p, pub, port)
        owner = self.rev.get(rkey)
        if owner is not None and ep_key(p, bytes.fromhex(owner[0]), owner[1]) == key:
            self.rev.delete(rkey)
            self._release(p, pub, port)

    def _allocate(
        self, p: int, s: bytes, sp: int, key: bytes, entry: list[Any] | None, t: int
    ) -> tuple[bytes, int, bytes | None] | None:
        """(public IP, port, expired binding to delete or None), or None when every
        port of the partition is held by a live binding. In order: the endpoint's own
        expired binding's port; the first free port from a hashed start; the port of
        the binding that expired first."""
        c = self.c
        pub_ip = c.public_ips[pool_index(s, len(c.public_ips))]
        ports = self.port_sets().get(p, pub_ip, self.ep(p, s, sp) % self.partitions)
        if entry is not None and entry[0] == pub_ip.hex() and ports.holds(entry[1]):
            found = self.holder(p, pub_ip, entry[1])
            if found is not None and found[0] == key:
                return pub_ip, entry[1], None
        port = ports.first_free(c.lo + start_port(p, s, sp, c.hi - c.lo + 1))
        if port is not None:
            if self.holder(p, pub_ip, port) is None:
                return pub_ip, port, None
            # Held, yet free here: the tables changed beneath the port sets without a
            # forget(). Rebuild them from the tables, once, and choose again.
            del self.sets[self.partition]
            return self._allocate(p, s, sp, key, entry, t)
        top = ports.earliest(self.due_of, t)
        if top is None:
            return None
        found = self.holder(p, pub_ip, top[1])
        return pub_ip, top[1], None if found is None else found[0]

    def sweep(self, now: int, limit: int) -> int:
        """Delete up to `limit` bindings expired by `now`, earliest (due, rev key) first."""
        sets = self.port_sets()
        n = 0
        while n < limit:
            top = sets.first(self.due_of, now)
            if top is None:
                break
            rkey = top[1]
            p, pub, port = rkey[0], rkey[1:5], int.from_bytes(rkey[5:7], "big")
            found = self.holder(p, pub, port)
            if found is not None:
                self.bind.delete(found[0])
            self.rev.delete(rkey)
            sets.release(p, pub, port)
            n += 1
        return n

    # -- inbound ------------------------------------------------------------

    def public(self, p: int, pub_ip: bytes, port: int, t: int) -> tuple[bytes, list[Any]] | None:
        """(bind key, entry) of the live binding owning a public endpoint, else None.
        Deletes what it finds stale or expired."""
        rkey = ep_key(p, pub_ip, port)
        owner = self.rev.get(rkey)
        if owner is None:
            return None
        key = ep_key(p, bytes.fromhex(owner[0]), owner[1])
        entry = self.bind.get(key)
        if entry is None or entry[0] != pub_ip.hex() or entry[1] != port:
            self.rev.delete(rkey)  # stale: its port was free already
            return None
        if not self.live(entry, p, t):
            self.rev.delete(rkey)
            self.bind.delete(key)
            self._release(p, pub_ip, port)
            return None
        return key, entry

    def admits(self, entry: list[Any], p: int, s: bytes, sp: int) -> bool:
        """Does the binding's filter let a packet from remote (s, sp) in?"""
        return not self.mode or self.remote(p, s, sp) in entry[4]

    def inbound(self, key: bytes, entry: list[Any], p: int, flags: int, t: int) -> None:
        """Refresh a binding after an admitted inbound packet."""
        self._refresh(key, entry, p, t, flags, False, None)

    def internal(self, p: int, s: bytes, sp: int, t: int) -> tuple[bytes, int] | None:
        """The public endpoint of a live binding of internal (p, s, sp), no refresh."""
        entry = self.bind.get(ep_key(p, s, sp))
        if entry is None or not self.live(entry, p, t):
            return None
        return bytes.fromhex(entry[0]), entry[1]
