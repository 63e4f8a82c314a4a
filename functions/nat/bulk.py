"""Rewrites of a batch's translated packets at once (a helper of snf.functions.nat).

The NAT's fast path (fastpath.py) decides every packet of an established
binding first and only notes what to write: packet index, which end ("src"
or "dst"), the new IPv4 address and port. `Rewrites.apply` then writes them
all. From MIN_BULK packets on it does so with numpy over a copy of the
batch's payload (RFC 1624 eqn. 3 on rows of 16-bit words, carries folded);
below that, one packet at a time with snf.packet.rewrite. Both give exactly
the bytes of set_ipv4_endpoint (TCP, UDP) and of set_ipv4_addr then
set_l4_port (ICMP echo), which the per-packet path calls:

* nothing changes when the address and port are already the new ones;
* the IPv4 header checksum is adjusted over the two address words, only when
  the address changes;
* TCP/UDP: the L4 checksum over the three address and port words, when it is
  within the captured bytes; a zero UDP checksum stays zero and a computed
  zero UDP checksum is written as 0xFFFF;
* ICMP echo: the identifier at l4 + 4, the ICMP checksum over that one word
  (ICMP has no pseudo-header), only when the identifier changes.

Callers add only packets whose offsets hold those fields (fastpath.py checks
them: l3 + 20 <= l4, l4 + 4 <= length, l4 + 8 <= length for ICMP), so
nothing here can fail on packet content.
"""

from __future__ import annotations

import numpy as np

from snf.packet.bulk_rewrite import EndpointRewrites
from snf.packet.rewrite import set_ipv4_endpoint

__all__ = ["MIN_BULK", "Rewrites"]

# Fewer rewrites than this go packet by packet: numpy's fixed cost per batch
# (~130 us here) beats the ~5 us of one packet rewritten alone from about here.
MIN_BULK = 24
_WHICH = ("src", "dst")


class Rewrites(EndpointRewrites):
    """The NAT's rewrites of one batch (snf.packet.bulk_rewrite.EndpointRewrites)."""

    __slots__ = ()
    min_bulk = MIN_BULK

    def one(self, i: int, which: int, addr: bytes, port: int) -> None:
        """Rewrite packet i now, exactly as the per-packet path does (may raise)."""
        h = self.h
        pkt = bytearray(self.batch.packet(i))
        set_ipv4_endpoint(pkt, h.l3_off[i], h.l4_off[i], h.proto[i], _WHICH[which], addr, port)
        self.replaced[i] = bytes(pkt)

    def rewrite_one(self, i: int, which: int, new: bytes) -> None:
        self.one(i, which, new[:4], int.from_bytes(new[4:], "big"))

    def rewrite_rows(
        self,
        buf: np.ndarray,
        l3: np.ndarray,
        l4: np.ndarray,
        end: np.ndarray,
        proto: np.ndarray,
        which: np.ndarray,
        new: np.ndarray,
    ) -> None:
        _rewrite_fields(buf, l3, l4, end, _KIND[proto & 0xFF] + which, new)


# A rewrite's kind: 0/1 TCP source/destination, 2/3 UDP, 4/5 ICMP echo (either).
_KIND = np.full(256, 4, dtype=np.int64)
_KIND[6], _KIND[17] = 0, 2
# Byte offsets of the fields a rewrite reads and writes, five 16-bit words:
# from l3, the IPv4 checksum and the address (by end); from l4, the port or
# echo identifier and the L4 checksum (by kind).
_FROM_L3 = np.array([[10, 11, 12, 13, 14, 15], [10, 11, 16, 17, 18, 19]])
_FROM_L4 = np.array(
    [[0, 1, 16, 17], [2, 3, 16, 17], [0, 1, 6, 7], [2, 3, 6, 7], [4, 5, 2, 3], [4, 5, 2, 3]]
)
_MAX = 0xFFFF


def _rewrite_fields(
    buf: np.ndarray,
    l3: np.ndarray,
    l4: np.ndarray,
    end: np.ndarray,
    kind: np.ndarray,
    new: np.ndarray,
) -> None:
    """Set each row's address and port (or echo id) in `buf`, checksums adjusted.

    Offsets are absolute in buf, whose last 2 bytes are spare; `new` holds the
    new address and port as three words per row. Every field of a row is read
    with one gather and written back with one scatter (unchanged ones as they
    were): few numpy calls, whatever the batch size."""
    n = len(kind)
    at = np.empty((n, 10), dtype=np.int64)
    at[:, :6] = l3[:, None] + _FROM_L3[kind & 1]
    at[:, 6:] = l4[:, None] + _FROM_L4[kind]
    lost = at[:, 9] >= end  # the L4 checksum was not captured: read and write spare bytes
    at[lost, 8:] = len(buf) - 2 + np.arange(2)
    old = buf[at].view(">u2").astype(np.int64)  # checksum, address, address, port, checksum
    icmp, udp = kind >= 4, (kind >> 1) == 1
    addr_moved = (old[:, 1] != new[:, 0]) | (old[:, 2] != new[:, 1])
    port_moved = old[:, 3] != new[:, 2]
    # RFC 1624 eqn. 3: ~HC + the sum of ~m + m' over the changed words
    d_addr = 2 * _MAX - old[:, 1] - old[:, 2] + new[:, 0] + new[:, 1]
    d_port = _MAX - old[:, 3] + new[:, 2]
    total = np.empty((n, 2), dtype=np.int64)
    total[:, 0] = (~old[:, 0] & _MAX) + d_addr
    total[:, 1] = (~old[:, 4] & _MAX) + np.where(icmp, d_port, d_addr + d_port)
    for _ in range(3):  # below 2^20: three folds leave 16 bits
        total = (total & _MAX) + (total >> 16)
    fixed = ~total & _MAX
    fixed[udp & (fixed[:, 1] == 0), 1] = _MAX  # a computed zero UDP sum is sent as all ones
    # The IPv4 sum when the address moved; the L4 sum when a covered word moved
    # and it was captured, but a zero UDP checksum (none) stays zero.
    moved = addr_moved | port_moved
    l4_due = np.where(icmp, port_moved, moved & ~lost & ~(udp & (old[:, 4] == 0)))
    out = np.empty((n, 5), dtype=np.int64)
    out[:, 0] = np.where(addr_moved, fixed[:, 0], old[:, 0])
    out[:, 1:4] = new
    out[:, 4] = np.where(l4_due, fixed[:, 1], old[:, 4])
    buf[at] = out.astype(">u2").view(np.uint8).reshape(n, 10)
