"""What the NAT knows of a packet before it reads state (a helper of snf.functions.nat).

A packet's address class, the table keys it touches and the remote that
filtering compares depend only on its 5-tuple (proto, src, sport, dst,
dport) and the config. `Flows` computes them once per 5-tuple and keeps
them, so a packet of a known flow costs one dict lookup. Caches are bounded
(cleared when full): a process sees many flows over its life.
"""

from __future__ import annotations

from typing import Any

from .bindings import ep_key, remote_key
from .config import CompiledNat

__all__ = ["IN", "NO", "OUT", "PASS", "SLOW", "Classes", "FlowFacts", "Flows"]

PASS, OUT, IN, NO = 0, 1, 2, 3  # address classes of a packet
SLOW = 4  # facts that could not be computed (odd headers): the per-packet path decides
CACHE_MAX = 1 << 16

# (PASS,) | (NO,) | (SLOW,)
# (OUT, forward's public endpoint (6 bytes) or None, bind key, remote or None)
# (IN, forward's inside endpoint (6 bytes) or None, rev key, dst hex, dport, remote or None)
FlowFacts = tuple[Any, ...]


def _six(endpoint: tuple[bytes, int] | None) -> bytes | None:
    """A forward's (address, port), validated by the config, as 6 bytes."""
    return None if endpoint is None else endpoint[0] + endpoint[1].to_bytes(2, "big")


class Classes:
    """The address class of (src, dst): inside or not, and public or not."""

    __slots__ = ("_inside", "_nets", "_public")

    def __init__(self, c: CompiledNat) -> None:
        self._nets = c.inside
        self._public = frozenset(c.public_ips)
        self._inside: dict[bytes, bool] = {}

    def is_inside(self, addr: bytes) -> bool:
        found = self._inside.get(addr)
        if found is None:
            value = int.from_bytes(addr, "big")
            found = any(value & mask == net for net, mask in self._nets)
            if len(self._inside) >= CACHE_MAX:
                self._inside.clear()
            self._inside[addr] = found
        return found

    def __call__(self, s: bytes, d: bytes) -> int:
        inside = self.is_inside
        if inside(s):
            return PASS if inside(d) else OUT
        if d in self._public:
            return IN
        return NO if inside(d) else PASS

    def is_public(self, addr: bytes) -> bool:
        return addr in self._public


class Flows:
    """5-tuple -> FlowFacts, computed on first sight."""

    __slots__ = ("_c", "_classes", "_endpoints", "_facts", "_owners", "get")

    def __init__(self, c: CompiledNat, classes: Classes) -> None:
        self._c = c
        self._classes = classes
        self._facts: dict[tuple[int, bytes, int, bytes, int], FlowFacts] = {}
        self.get = self._facts.get
        self._endpoints: dict[tuple[str, int], bytes] = {}
        self._owners: dict[tuple[int, str, int], tuple[bytes, bytes | None]] = {}

    def learn(self, key: tuple[int, bytes, int, bytes, int]) -> FlowFacts:
        """The facts of a 5-tuple not seen yet (or forgotten)."""
        try:
            facts = self._facts_of(*key)
        except Exception:  # headers no parser gives (a port out of range): no shortcut
            facts = (SLOW,)
        if len(self._facts) >= CACHE_MAX:
            self._facts.clear()
        self._facts[key] = facts
        return facts

    def _facts_of(self, p: int, s: bytes, sp: int, d: bytes, dp: int) -> FlowFacts:
        c, cls = self._c, self._classes(s, d)
        mode = c.filtering
        if cls == OUT:
            fwd = c.fwd_inside.get((p, s, sp))
            remote = remote_key(mode, p, d, dp) if mode else None
            return (OUT, _six(fwd), ep_key(p, s, sp), remote)
        if cls == IN:
            fwd = c.fwd_public.get((p, d, dp))
            remote = remote_key(mode, p, s, sp) if mode else None
            return (IN, _six(fwd), ep_key(p, d, dp), d.hex(), dp, remote)
        return (cls,)

    def endpoint(self, ip_hex: str, port: int) -> bytes | None:
        """A binding's public endpoint as stored, as 6 bytes (address, port); None
        when it is not 4 address bytes and a u16 port (state no NAT wrote)."""
        if port.__class__ is not int:
            return None
        found = self._endpoints.get((ip_hex, port))
        if found is None:
            addr = bytes.fromhex(ip_hex)
            if len(addr) != 4 or not 0 <= port <= 0xFFFF:
                return None
            found = addr + port.to_bytes(2, "big")
            if len(self._endpoints) >= CACHE_MAX:
                self._endpoints.clear()
            self._endpoints[ip_hex, port] = found
        return found

    def owner(self, p: int, ip_hex: str, port: int) -> tuple[bytes, bytes | None]:
        """A rev entry's owner: its bind key, and its endpoint as 6 bytes (None
        when the key is not proto + 4 address bytes + port)."""
        if port.__class__ is not int:  # state no NAT wrote (80.0 would find 80's entry)
            key = ep_key(p, bytes.fromhex(ip_hex), port)
            return (key, key[1:] if len(key) == 7 else None)
        found = self._owners.get((p, ip_hex, port))
        if found is None:
            key = ep_key(p, bytes.fromhex(ip_hex), port)
            found = (key, key[1:] if len(key) == 7 else None)
            if len(self._owners) >= CACHE_MAX:
                self._owners.clear()
            self._owners[p, ip_hex, port] = found
        return found
