"""Headers: the parsed fields of every packet in a batch, as parallel lists.

Produced once per batch by snf.packet.parse.parse_batch and read by functions in
their per-packet loops (plain Python lists index fast; numpy scalars do not).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

__all__ = [
    "FRAG_FIRST",
    "FRAG_LATER",
    "FRAG_NONE",
    "KIND_IP",
    "KIND_MALFORMED",
    "KIND_NON_IP",
    "Headers",
]

KIND_IP = 0  # an IPv4 or IPv6 packet whose headers parsed
KIND_NON_IP = 1  # a frame that carries no IP (ARP, LLDP, STP, ...)
KIND_MALFORMED = 2  # claims to be IP (or a known link type) but is cut short or inconsistent

FRAG_NONE = 0  # not a fragment
FRAG_FIRST = 1  # first fragment (offset 0, more-fragments set): has the L4 header
FRAG_LATER = 2  # non-first fragment: no L4 header


@dataclass(slots=True)
class Headers:
    """One entry per packet in every list, in batch order."""

    kind: list[int] = field(default_factory=list)
    version: list[int] = field(default_factory=list)  # 4, 6, or 0 when not IP
    proto: list[int] = field(default_factory=list)  # L4 protocol number (after IPv6 ext headers)
    src: list[bytes] = field(default_factory=list)  # 4 or 16 bytes; b"" when not IP
    dst: list[bytes] = field(default_factory=list)
    sport: list[int] = field(default_factory=list)  # TCP/UDP port, ICMP echo identifier, else 0
    dport: list[int] = field(default_factory=list)  # same; echo request and reply both carry the id
    tcp_flags: list[int] = field(default_factory=list)  # 0 unless TCP
    icmp_type: list[int] = field(default_factory=list)  # -1 unless ICMP/ICMPv6
    frag: list[int] = field(default_factory=list)  # FRAG_*
    ip_id: list[int] = field(default_factory=list)  # IPv4 id or IPv6 fragment id, 0 otherwise
    l3_off: list[int] = field(default_factory=list)  # offset of the IP header, -1 when none
    l4_off: list[int] = field(default_factory=list)  # offset of the L4 header, -1 when none
    ethertype: list[int] = field(default_factory=list)  # innermost EtherType (0 when unknown)
    flow: list[bytes] = field(default_factory=list)  # canonical bidirectional flow key
    flow_hash: list[int] = field(default_factory=list)  # stable 64-bit hash of flow
    direction: list[int] = field(default_factory=list)  # 0: src is the key's low end, 1: high end
    error: list[str] = field(default_factory=list)  # why malformed ("" when fine)

    def __len__(self) -> int:
        return len(self.kind)

    def take(self, index: Sequence[int]) -> Headers:
        """The rows at `index`, in that order (one C-level pass per column)."""
        if not len(index):
            return Headers()
        pick = operator.itemgetter(*index)
        if len(index) == 1:
            return Headers(*([pick(getattr(self, f))] for f in _FIELDS))
        return Headers(*(list(pick(getattr(self, f))) for f in _FIELDS))

    @classmethod
    def concat(cls, parts: Sequence[Headers]) -> Headers:
        if len(parts) == 1:
            return parts[0]
        return cls(
            *(list(itertools.chain.from_iterable(getattr(h, f) for h in parts)) for f in _FIELDS)
        )


_FIELDS = tuple(f.name for f in fields(Headers))
