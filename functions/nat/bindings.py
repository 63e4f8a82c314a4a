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
bare SYN after FIN both ways or a RST starts over.
"""

from __future__ import annotations

from typing import Any

from snf.core.tables import TableView

from .config import CompiledNat
from .ports import EndpointHasher, pool_index, probe, start_port

__all__ = ["MAX_REMOTES", "Bindings", "ep_key", "remote_key", "tcp_bits"]

MAX_REMOTES = 64
OUT, IN, FIN_OUT, FIN_IN, RST = 1, 2, 4, 8, 16
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10


def ep_key(proto: int, addr: bytes, port: int) -> bytes:
    """Table key of an endpoint: proto byte, 4 address bytes, 2 port bytes."""
    return bytes((proto,)) + addr + port.to_bytes(2, "big")


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
    """Lookups, allocation and refresh of dynamic bindings for one batch."""

    def __init__(
        self, c: CompiledNat, bind: TableView, rev: TableView, partitions: int, ep: EndpointHasher
    ) -> None:
        self.c = c
        self.bind = bind
        self.rev = rev
        self.partitions = partitions
        self.ep = ep
        self.mode = c.filtering  # 0 EIF, 1 ADF, 2 APDF

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
        if last != entry[2] or bits != entry[3] or remotes is not entry[4]:
            self.bind.set(key, [entry[0], entry[1], last, bits, remotes])

    # -- outbound -----------------------------------------------------------

    def outbound(
        self, p: int, s: bytes, sp: int, d: bytes, dp: int, flags: int, t: int
    ) -> tuple[bytes, int] | None:
        """The public endpoint of internal (p, s, sp), allocating it when needed;
        None when no port is free. Writes the binding."""
        key = ep_key(p, s, sp)
        entry = self.bind.get(key)
        remote = self.remote(p, d, dp) if self.mode else None
        if entry is not None and self.live(entry, p, t):
            self._refresh(key, entry, p, t, flags, True, remote)
            return bytes.fromhex(entry[0]), entry[1]
        found = self._allocate(p, s, sp, key, t)
        if found is None:
            if entry is not None:
                self._forget(key, entry, p)
            return None
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
        return pub_ip, port

    def _forget(self, key: bytes, entry: list[Any], p: int) -> None:
        """Delete an expired binding and its rev entry (when it still points here)."""
        self.bind.delete(key)
        rkey = ep_key(p, bytes.fromhex(entry[0]), entry[1])
        owner = self.rev.get(rkey)
        if owner is not None and ep_key(p, bytes.fromhex(owner[0]), owner[1]) == key:
            self.rev.delete(rkey)

    def _allocate(
        self, p: int, s: bytes, sp: int, key: bytes, t: int
    ) -> tuple[bytes, int, bytes | None] | None:
        """(public IP, free port, expired binding to delete or None), or None."""
        c = self.c
        pub_ip = c.public_ips[pool_index(s, len(c.public_ips))]
        target = self.ep(p, s, sp) % self.partitions
        start = start_port(p, s, sp, c.hi - c.lo + 1)
        fwd, pub_hex = c.fwd_public, pub_ip.hex()
        rev_get, bind_get = self.rev.get, self.bind.get
        for port in probe(p, pub_ip, c.lo, c.hi, self.partitions, target, start):
            if (p, pub_ip, port) in fwd:
                continue
            owner = rev_get(ep_key(p, pub_ip, port))
            if owner is None:
                return pub_ip, port, None
            okey = ep_key(p, bytes.fromhex(owner[0]), owner[1])
            if okey == key:
                return pub_ip, port, None  # our own expired binding's port
            other = bind_get(okey)
            if other is None or other[0] != pub_hex or other[1] != port:
                return pub_ip, port, None  # a stale rev entry
            if not self.live(other, p, t):
                return pub_ip, port, okey
        return None

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
            self.rev.delete(rkey)
            return None
        if not self.live(entry, p, t):
            self.rev.delete(rkey)
            self.bind.delete(key)
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
