"""--unique-ip: new addresses on every loop of a replay, as tcpreplay does.

Pass k of a looped replay (k = 0 for the first, which goes out unchanged)
shifts two 32-bit numbers per packet by k, modulo 2**32, as tcpreplay's
fast_edit_packet does: the IPv4 source and destination, or the last 32 bits
of the IPv6 ones. Of the two, the greater number gets +k and the other -k
(equal ones: the source +k, the destination -k). Both directions of a flow
therefore map to the same new pair, so a connection stays a connection, and
each pass's flows are new to every stateful function (firewall state, NAT
bindings, flow records).

Checksums stay valid: the IPv4 header checksum and every L4 checksum whose
pseudo-header covers the addresses (TCP, UDP, UDP-Lite, DCCP, ICMPv6) are
updated incrementally (RFC 1624, eqn. 3), so a packet valid in the capture is
valid after (+k and -k keep the one's-complement sum of the addresses, so
the checksums only change when exactly one of them wraps around 2**32). A
UDP checksum of 0 ("none") stays 0. Fragments are all shifted alike; the
first one carries the L4 checksum of the whole datagram.

Offsets come from the project's parser (snf.packet.parse), so every link type
and encapsulation it understands works: Ethernet with VLAN tags and MPLS,
Linux SLL/SLL2, raw IP, NULL/LOOP. Left alone: frames without IP, packets the
parser calls malformed (cut short before the end of their headers), and the
L4 checksum when the capture cut it off. Not rewritten (nor by tcpreplay):
addresses quoted inside ICMP errors and inner headers of IP-in-IP tunnels; an
IPv6 routing header's final destination (its L4 checksum then goes wrong).
"""

from __future__ import annotations

import numpy as np

from snf.packet.capture_chunk import CaptureChunk
from snf.packet.headers import FRAG_LATER, KIND_IP
from snf.packet.parse import parse_buffer

__all__ = ["unique_ip"]

# L4 checksum offset of the protocols whose checksum covers the addresses.
_L4_CSUM = {6: 16, 17: 6, 136: 6, 33: 6}
_ICMPV6, _UDP = 58, 17
_WORD = 0xFFFF


def unique_ip(chunk: CaptureChunk, k: int) -> CaptureChunk:
    """The chunk as pass k sends it: over a rewritten copy of its bytes (k = 0: itself)."""
    k %= 1 << 32
    if k == 0 or not len(chunk):
        return chunk
    lens = chunk.cap_len
    starts = np.zeros(len(chunk), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    payload = chunk.payload()
    buf = np.frombuffer(payload, dtype=np.uint8).copy()
    changed = False
    kinds = chunk.linktype
    for linktype in np.unique(kinds).tolist():
        rows = np.flatnonzero(kinds == linktype)
        changed |= _rewrite(buf, linktype, payload, starts[rows], lens[rows], k)
    if not changed:
        return chunk
    return CaptureChunk(buf.tobytes(), starts, lens, chunk.orig_len, chunk.ts_ns, kinds)


def _rewrite(
    buf: np.ndarray, linktype: int, data: bytes, starts: np.ndarray, lens: np.ndarray, k: int
) -> bool:
    """Shift the addresses of the IP packets among these (one link type) in buf."""
    h = parse_buffer(linktype, data, starts, lens)
    n = len(h)
    kind = np.fromiter(h.kind, dtype=np.int64, count=n)
    ok = kind == KIND_IP
    if not ok.any():
        return False
    version = np.fromiter(h.version, dtype=np.int64, count=n)[ok]
    l3 = starts[ok] + np.fromiter(h.l3_off, dtype=np.int64, count=n)[ok]
    v4 = version == 4
    # The 32 bits shifted: IPv4 addresses, or the last 32 bits of the IPv6 ones.
    src_at = l3 + np.where(v4, 12, 20)
    dst_at = l3 + np.where(v4, 16, 36)
    old = np.concatenate([_words(buf, src_at), _words(buf, dst_at)], axis=1)
    src = old[:, 0] << 16 | old[:, 1]
    dst = old[:, 2] << 16 | old[:, 3]
    up = np.where(dst > src, -k, k)  # the source's shift; the destination's is -up
    src = (src + up) % (1 << 32)
    dst = (dst - up) % (1 << 32)
    new = np.stack([src >> 16, src & _WORD, dst >> 16, dst & _WORD], axis=1)
    _put(buf, src_at, new[:, :2])
    _put(buf, dst_at, new[:, 2:])
    _adjust(buf, l3[v4] + 10, old[v4], new[v4])

    # The L4 checksums over the addresses, where captured (non-first fragments have none).
    proto = np.fromiter(h.proto, dtype=np.int64, count=n)[ok]
    l4_off = np.fromiter(h.l4_off, dtype=np.int64, count=n)[ok]
    frag = np.fromiter(h.frag, dtype=np.int64, count=n)[ok]
    at = np.full(len(l3), -1, dtype=np.int64)
    for number, off in _L4_CSUM.items():
        at[proto == number] = off
    at[(proto == _ICMPV6) & ~v4] = 2
    csum = starts[ok] + l4_off + at
    fix = (at >= 0) & (l4_off >= 0) & (frag != FRAG_LATER) & (csum + 2 <= (starts + lens)[ok])
    current = _words(buf, csum[fix], 1)[:, 0]
    keep_zero = (proto[fix] == _UDP) & (current == 0)  # UDP without a checksum
    fix[np.flatnonzero(fix)[keep_zero]] = False
    _adjust(buf, csum[fix], old[fix], new[fix], udp=proto[fix] == _UDP)
    return True


def _words(buf: np.ndarray, at: np.ndarray, count: int = 2) -> np.ndarray:
    """(rows, count) big-endian 16-bit words from each offset."""
    index = at[:, None] + np.arange(2 * count)
    raw = buf[index].astype(np.int64)
    return raw[:, 0::2] << 8 | raw[:, 1::2]


def _put(buf: np.ndarray, at: np.ndarray, words: np.ndarray) -> None:
    """Write (rows, count) 16-bit words big-endian at each offset."""
    index = at[:, None] + np.arange(2 * words.shape[1])
    raw = np.empty((len(at), 2 * words.shape[1]), dtype=np.uint8)
    raw[:, 0::2] = words >> 8
    raw[:, 1::2] = words & 0xFF
    buf[index] = raw


def _adjust(
    buf: np.ndarray,
    at: np.ndarray,
    old: np.ndarray,
    new: np.ndarray,
    udp: np.ndarray | None = None,
) -> None:
    """HC' = ~(~HC + ~m + m') over the changed words (RFC 1624 eqn. 3), per row."""
    if not len(at):
        return
    hc = _words(buf, at, 1)[:, 0]
    # The sum of ~m over the words is n * 0xFFFF - sum(m): no per-word complement.
    total = (~hc & _WORD) + old.shape[1] * _WORD - old.sum(axis=1) + new.sum(axis=1)
    for _ in range(3):  # at most ~20 bits: three folds reach 16
        total = (total & _WORD) + (total >> 16)
    fixed = ~total & _WORD
    if udp is not None:
        fixed = np.where(udp & (fixed == 0), _WORD, fixed)  # UDP sends a zero as all ones
    _put(buf, at, fixed[:, None])
