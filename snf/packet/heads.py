"""Packet heads: a packet cut after its L4 header, its payload left behind.

Functions that only read or rewrite headers (firewall, NAT, load balancer,
policer, flow monitor) need no payload, so topics after ingress may carry
heads (docs/ARCHITECTURE.md, "Heads after ingress"). A head keeps every byte
up to the end of the TCP/UDP header, `cap_len` is the head's length and the
record's `full_len` the captured length of the whole packet; whoever has the
whole packet (the sink, from the ingress copy: snf.egress.collector) joins
the tail back. Rewrites are length-preserving and checksums are updated
incrementally (snf.packet.rewrite), so head + tail is exactly the packet a
function would have produced from the whole packet.

Only the plain cases are cut, decided on the bytes alone and vectorised:
Ethernet, at most one 802.1Q tag, IPv4 (not a fragment) or IPv6 whose next
header is TCP or UDP, a complete L4 header. Everything else travels whole.
"""

from __future__ import annotations

import numpy as np

from snf.packet.batch import PacketBatch
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.vectorised import windows

__all__ = ["HEAD_WINDOW", "cut_heads", "head_lengths"]

HEAD_WINDOW = 96  # bytes looked at: Ethernet + tag + IPv4 with options + TCP's offset byte
_IPV4, _IPV6 = 0x0800, 0x86DD
_TCP, _UDP = 6, 17


def head_lengths(batch: PacketBatch) -> np.ndarray:
    """Per packet, the length to keep: up to the end of its L4 header, or its
    whole captured length when it is not a plain TCP/UDP packet."""
    cap = batch.records["cap_len"].astype(np.int64)
    if batch.linktype != LINKTYPE_ETHERNET or not len(cap):
        return cap
    start = np.zeros(len(cap), dtype=np.int64)
    np.cumsum(cap[:-1], out=start[1:])
    # Bytes past a packet's end (the next packet's) never pass the length check
    # at the end, so what they hold does not matter; rows that would run past the
    # buffer (short last packets) stay whole.
    win, inside = windows(batch.payload, start, HEAD_WINDOW)
    rows = np.arange(len(cap))

    def byte(col: np.ndarray | int) -> np.ndarray:
        return (win[rows, col] if isinstance(col, np.ndarray) else win[:, col]).astype(np.int64)

    tagged = (byte(12) == 0x81) & (byte(13) == 0x00)
    l3 = np.where(tagged, 18, 14)
    ethertype = byte(l3 - 2) << 8 | byte(l3 - 1)
    first = byte(l3)
    v4 = (ethertype == _IPV4) & (first >> 4 == 4) & (first & 15 >= 5)
    v4 &= ((byte(l3 + 6) << 8 | byte(l3 + 7)) & 0x3FFF) == 0  # no MF, offset 0
    v6 = (ethertype == _IPV6) & (first >> 4 == 6)
    proto = np.where(v4, byte(l3 + 9), np.where(v6, byte(l3 + 6), -1))
    l4 = l3 + np.where(v4, (first & 15) * 4, 40)
    tcp_len = (byte(np.minimum(l4 + 12, HEAD_WINDOW - 1)) >> 4) * 4
    l4_len = np.where(proto == _TCP, tcp_len, 8)
    ok = inside & (v4 | v6) & ((proto == _TCP) | (proto == _UDP))
    ok &= (proto != _TCP) | (tcp_len >= 20)
    ok &= l4 + 13 <= HEAD_WINDOW  # the TCP offset byte was in the window
    end = l4 + l4_len
    return np.where(ok & (end <= cap), end, cap)


def cut_heads(batch: PacketBatch) -> PacketBatch:
    """The batch with every plain TCP/UDP packet cut to its head (full_len set)."""
    keep = head_lengths(batch)
    cap = batch.records["cap_len"].astype(np.int64)
    cut = keep < cap
    if not cut.any():
        return batch
    start = np.zeros(len(cap), dtype=np.int64)
    np.cumsum(cap[:-1], out=start[1:])
    # Heads are short: one numpy gather of their bytes beats slicing per packet.
    ends = np.cumsum(keep)
    index = np.repeat(start - (ends - keep), keep) + np.arange(int(ends[-1]))
    heads = np.frombuffer(batch.payload, dtype=np.uint8)[index].tobytes()
    rec = batch.records.copy()
    already = rec["full_len"] > 0  # a head cut again keeps the whole packet's length
    rec["full_len"] = np.where(cut & ~already, cap, rec["full_len"])
    rec["cap_len"] = keep
    return PacketBatch(batch.linktype, rec, heads, batch.sources, batch.reasons, batch.batch_id)
