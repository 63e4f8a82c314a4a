"""Rewrites of a batch's translated packets at once (a helper of snf.functions.nat).

The NAT's fast path (fastpath.py) decides every packet of an established
binding first and only notes what to write: packet index, which end ("src"
or "dst"), the new IPv4 address and port. `Rewrites.apply` then writes them
all. From MIN_BULK packets on it does so with numpy over a copy of the
batch's payload (RFC 1624 eqn. 3 on arrays of 16-bit words, carries folded);
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

from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers
from snf.packet.rewrite import set_ipv4_endpoint

__all__ = ["MIN_BULK", "Rewrites"]

# Fewer rewrites than this go packet by packet: numpy's fixed cost per batch
# (some 40 array operations) beats ~2 us per packet only from about here.
MIN_BULK = 24
_WHICH = ("src", "dst")


class Rewrites:
    """The rewrites of one batch: per end ("src", "dst") the packet indices and
    their new endpoints (address and port, 6 bytes); rewritten packets land in
    `replaced`."""

    __slots__ = ("batch", "h", "index", "new", "replaced")

    def __init__(self, batch: PacketBatch, h: Headers, replaced: dict[int, bytes]) -> None:
        self.batch = batch
        self.h = h
        self.replaced = replaced
        self.index: tuple[list[int], list[int]] = ([], [])
        self.new: tuple[list[bytes], list[bytes]] = ([], [])

    def __len__(self) -> int:
        return len(self.index[0]) + len(self.index[1])

    def one(self, i: int, which: int, addr: bytes, port: int) -> None:
        """Rewrite packet i now, exactly as the per-packet path does (may raise)."""
        h = self.h
        pkt = bytearray(self.batch.packet(i))
        set_ipv4_endpoint(pkt, h.l3_off[i], h.l4_off[i], h.proto[i], _WHICH[which], addr, port)
        self.replaced[i] = bytes(pkt)

    def apply(self) -> list[int]:
        """Write every noted rewrite; return the packets that failed (none unless
        the batch's offsets overrun its payload)."""
        if len(self) >= MIN_BULK:
            try:
                self._bulk()
                return []
            except Exception:  # a damaged batch: packet by packet, each on its own
                pass
        failed = []
        for which in (0, 1):
            for i, new in zip(self.index[which], self.new[which], strict=True):
                try:
                    self.one(i, which, new[:4], int.from_bytes(new[4:], "big"))
                except Exception:
                    failed.append(i)
        return failed

    def _bulk(self) -> None:
        batch, h = self.batch, self.h
        n = len(h)
        index = self.index[0] + self.index[1]
        idx = np.fromiter(index, dtype=np.int64, count=len(index))
        offsets = np.asarray(batch.offsets, dtype=np.int64)
        start, end = offsets[idx], offsets[idx + 1]
        new = np.frombuffer(b"".join(self.new[0]) + b"".join(self.new[1]), dtype=">u2")
        new = new.reshape(-1, 3).astype(np.int64)
        buf = np.frombuffer(batch.payload, dtype=np.uint8).copy()
        _rewrite_words(
            buf,
            start + np.fromiter(h.l3_off, dtype=np.int64, count=n)[idx],
            start + np.fromiter(h.l4_off, dtype=np.int64, count=n)[idx],
            end,
            np.fromiter(h.proto, dtype=np.int64, count=n)[idx],
            (np.arange(len(index)) >= len(self.index[0])).astype(np.int64),
            new,
        )
        out = buf.tobytes()
        replaced = self.replaced
        for i, a, b in zip(index, start.tolist(), end.tolist(), strict=True):
            replaced[i] = out[a:b]


def _word(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The big-endian 16-bit words at absolute offsets `at`."""
    return (buf[at].astype(np.int64) << 8) | buf[at + 1]


def _put(buf: np.ndarray, at: np.ndarray, value: np.ndarray) -> None:
    buf[at] = (value >> 8).astype(np.uint8)  # cast first: a casting scatter is slow
    buf[at + 1] = (value & 0xFF).astype(np.uint8)


def _adjusted(
    cur: np.ndarray, old: np.ndarray, new: np.ndarray, words: int | np.ndarray
) -> np.ndarray:
    """csum_adjust on arrays: ~(~HC + sum(~m) + sum(m')), sum(~m) = words*0xFFFF - sum(m)."""
    total = (~cur & 0xFFFF) + words * 0xFFFF - old + new
    for _ in range(3):  # at most 2^20 before: three folds leave 16 bits
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _rewrite_words(
    buf: np.ndarray,
    l3: np.ndarray,
    l4: np.ndarray,
    end: np.ndarray,
    proto: np.ndarray,
    which: np.ndarray,
    new: np.ndarray,
) -> None:
    """Set each packet's address and port (or echo id) in `buf`, checksums adjusted.

    Offsets are absolute in buf; `new` holds the address and port as three
    words per row."""
    new_a1, new_a2, port = new[:, 0], new[:, 1], new[:, 2]
    at = l3 + 12 + 4 * which
    icmp = proto == 1
    port_at = l4 + np.where(icmp, 4, 2 * which)
    old_a1, old_a2, old_p = _word(buf, at), _word(buf, at + 2), _word(buf, port_at)
    old_a, new_a = old_a1 + old_a2, new_a1 + new_a2
    addr_moved = (old_a1 != new_a1) | (old_a2 != new_a2)
    port_moved = old_p != port
    # IPv4 header checksum: the address words, when the address changes.
    ip_sum = (l3 + 10)[addr_moved]
    _put(buf, ip_sum, _adjusted(_word(buf, ip_sum), old_a[addr_moved], new_a[addr_moved], 2))
    # L4 checksum: TCP/UDP over address and port (when either changed and the
    # field was captured), ICMP over the identifier (when it changed).
    udp = proto == 17
    sum_at = l4 + np.where(proto == 6, 16, np.where(udp, 6, 2))
    due = np.where(icmp, port_moved, (addr_moved | port_moved) & (sum_at + 2 <= end))
    rows = np.flatnonzero(due)
    cur = _word(buf, sum_at[rows])
    keep = ~(udp[rows] & (cur == 0))  # UDP without checksum stays without
    rows, cur = rows[keep], cur[keep]
    echo = icmp[rows]
    old = np.where(echo, 0, old_a[rows]) + old_p[rows]
    fixed = _adjusted(cur, old, np.where(echo, 0, new_a[rows]) + port[rows], np.where(echo, 1, 3))
    fixed[udp[rows] & (fixed == 0)] = 0xFFFF  # a computed zero is sent as all ones
    _put(buf, sum_at[rows], fixed)
    # The fields last: the sums above read the old ones. Same bytes are harmless.
    _put(buf, at, new_a1)
    _put(buf, at + 2, new_a2)
    _put(buf, port_at, port)
