"""The security policy of one ipsec function, compiled to plain ints.

`Policy.decide` answers for a cleartext packet, given its inner tuple, as
RFC 4301's SPD would: protect it with an outbound SA, pass it, or discard it.
Outbound SA selectors come first, then the inbound SAs' (traffic they cover
must arrive protected), then the `policies` entries in order, then the
default. Answers are memoised per tuple (`_Memo`, bounded): most packets
belong to a flow seen moments ago.

IP fragments are decided without their ports (`OPAQUE`, RFC 4301 §7), the
first fragment too, so every fragment of a datagram gets one answer and,
through `key_hashes`, the partition of the SA that seals it: sealing anywhere
else would draw sequence numbers from another partition's reservation. A
first-matching entry that names ports cannot tell whether a fragment is its
traffic, so the fragment is dropped (`FRAGMENT`), never sent in clear.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from snf.core.cidr import Net
from snf.packet.flowkey import flow_hash

from .config import IpsecConfig, SaConfig
from .esp import EspTransform

__all__ = [
    "BYPASS",
    "DISCARD",
    "FRAGMENT",
    "NO_POLICY",
    "OPAQUE",
    "UNPROTECTED",
    "Policy",
    "Sa",
    "sa_hash",
]

# Verdicts for cleartext besides "protect with this SA": (port, reason).
BYPASS = ("pass", "")
DISCARD = ("drop", "discard")  # a discard policy entry
NO_POLICY = ("drop", "no_policy")  # no SA nor policy covers it, default discard
UNPROTECTED = ("drop", "unprotected")  # an inbound SA's traffic, arriving in clear
FRAGMENT = ("drop", "fragment")  # a fragment whose first-matching entry names ports
OPAQUE = -1  # a fragment's ports: not known, whatever the fragment holds
_ALL_PORTS = (0, 65535)
_CACHE_MAX = 1 << 16
_SPI = struct.Struct("!I")

# (local nets, remote nets, proto or -1, (lo, hi) local ports, (lo, hi) remote ports)
Compiled = tuple[tuple[Net, ...], tuple[Net, ...], int, tuple[int, int], tuple[int, int]]


@dataclass(frozen=True, slots=True)
class Sa:
    """One SA as the per-packet path uses it."""

    index: int  # position in the config: the metric and record name use `name`
    name: str
    out: bool
    spi: int
    spi_bytes: bytes
    version: int  # of the outer header (transport mode: of the packets themselves)
    transport: bool  # RFC 4303 §3.1.1 transport mode, else tunnel mode
    local: bytes
    peer: bytes
    esp: EspTransform
    esn: bool
    window: int
    selectors: tuple[Compiled, ...]
    config: SaConfig
    hash: int  # partitioning hash: every packet of the SA goes to one partition
    limited: bool  # has a lifetime limit: its packets are checked and counted


def sa_hash(out: bool, spi: int) -> int:
    """The partitioning hash of an SA's packets (same family as flow_hash)."""
    return flow_hash(b"ESP" + (b"o" if out else b"i") + _SPI.pack(spi))


def _sa(index: int, sa: SaConfig) -> Sa:
    local, peer = ipaddress.ip_address(sa.local), ipaddress.ip_address(sa.peer)
    out = sa.direction == "out"
    return Sa(
        index=index,
        name=sa.name,
        out=out,
        spi=sa.spi,
        spi_bytes=_SPI.pack(sa.spi),
        version=local.version,
        transport=sa.mode == "transport",
        local=local.packed,
        peer=peer.packed,
        esp=EspTransform(sa.cipher, sa.key, sa.spi, esn=sa.esn),
        esn=sa.esn,
        window=sa.replay_window,
        selectors=tuple(s.compiled() for s in sa.selectors),
        config=sa,
        hash=sa_hash(out, sa.spi),
        limited=any(v is not None for v in sa.lifetime.model_dump().values()),
    )


def _in(nets: tuple[Net, ...], version: int, addr: int) -> bool:
    return any(v == version and addr & mask == net for v, net, mask in nets)


def matches(
    sel: Compiled, version: int, proto: int, src: int, dst: int, sport: int, dport: int
) -> bool | None:
    """Whether a packet from `src` (local side) to `dst` (remote side) is in `sel`;
    None when its ports are OPAQUE and `sel` names ports (it cannot be told)."""
    local, remote, want, lports, rports = sel
    if not ((want < 0 or want == proto) and _in(local, version, src) and _in(remote, version, dst)):
        return False
    if sport == OPAQUE:
        return True if lports == rports == _ALL_PORTS else None
    return lports[0] <= sport <= lports[1] and rports[0] <= dport <= rports[1]


class Policy:
    """The SAs and the cleartext policy of one function (module docstring)."""

    def __init__(self, config: IpsecConfig) -> None:
        sas = [_sa(i, sa) for i, sa in enumerate(config.sas)]
        self.direction = config.direction
        self.out_sas = [sa for sa in sas if sa.out]
        # inbound SAs by (our tunnel address, SPI): what an arriving ESP packet names
        self.in_sas = {(sa.local, sa.spi): sa for sa in sas if not sa.out}
        self.local_addrs = frozenset(sa.local for sa in self.in_sas.values())
        self.entries = [
            (p.compiled(), BYPASS if p.action == "bypass" else DISCARD) for p in config.policies
        ]
        self.default = BYPASS if config.default == "bypass" else NO_POLICY
        self._sas = sas
        # Per tuple, memoised: most packets belong to a flow seen moments ago.
        self._decisions = _Memo(self._decide)
        self._replies = _Memo(self._reply_sa)
        self._inner = _Memo(self._inner_allowed)

    def decide(
        self, version: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int
    ) -> Sa | tuple[str, str]:
        """An outbound SA to protect the packet with, or (port, reason)."""
        return self._decisions[version, proto, src, dst, sport, dport]

    def _decide(
        self, version: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int
    ) -> Sa | tuple[str, str]:
        s, d = int.from_bytes(src, "big"), int.from_bytes(dst, "big")
        for sa in self.out_sas:
            hit = _first(matches(sel, version, proto, s, d, sport, dport) for sel in sa.selectors)
            if hit is not False:
                return FRAGMENT if hit is None else BYPASS if self.direction == "inbound" else sa
        for sa in self.in_sas.values():
            hit = _first(matches(sel, version, proto, d, s, dport, sport) for sel in sa.selectors)
            if hit is not False:
                unprotected = BYPASS if self.direction == "outbound" else UNPROTECTED
                return FRAGMENT if hit is None else unprotected
        for sel, verdict in self.entries:
            hit = _first(
                (matches(sel, version, proto, s, d, sport, dport),
                 matches(sel, version, proto, d, s, dport, sport))
            )  # fmt: skip
            if hit is not False:
                return FRAGMENT if hit is None else verdict
        return self.default

    def reply_sa(
        self, version: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int
    ) -> Sa | None:
        """The first inbound SA whose traffic answers this packet from our side
        (its selectors cover the packet as local to remote); None if none does."""
        return self._replies[version, proto, src, dst, sport, dport]

    def _reply_sa(
        self, version: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int
    ) -> Sa | None:
        s, d = int.from_bytes(src, "big"), int.from_bytes(dst, "big")
        for sa in self.in_sas.values():
            if any(matches(sel, version, proto, s, d, sport, dport) for sel in sa.selectors):
                return sa
        return None

    def inner_allowed(
        self, sa: Sa, version: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int
    ) -> bool:
        """Whether a packet decrypted with inbound `sa` is traffic that SA carries
        (RFC 4301 §5.2: the remote side to ours)."""
        return self._inner[sa.index, version, proto, src, dst, sport, dport]

    def _inner_allowed(
        self, index: int, version: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int
    ) -> bool:
        s, d = int.from_bytes(src, "big"), int.from_bytes(dst, "big")
        sels = self._sas[index].selectors
        return any(matches(sel, version, proto, d, s, dport, sport) for sel in sels)


class _Memo(dict[tuple[Any, ...], Any]):
    """`fn(*key)` per key, computed on first use; emptied when full (a bounded cache)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def __missing__(self, key: tuple[Any, ...]) -> Any:
        if len(self) >= _CACHE_MAX:
            self.clear()
        value = self[key] = self.fn(*key)
        return value


def _first(answers: Iterable[bool | None]) -> bool | None:
    """True if any answer is; else None if any cannot be told; else False."""
    unknown = False
    for a in answers:
        if a:
            return True
        unknown = unknown or a is None
    return None if unknown else False
