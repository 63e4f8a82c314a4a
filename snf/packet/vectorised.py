"""Vectorised parse of the dominant case: Ethernet + IPv4 (IHL 5) + TCP/UDP.

Used by snf.packet.parse.parse_batch for Ethernet batches of at least MIN_BATCH
packets. The first 48 bytes of every packet are gathered into one (n, 48)
array; packets that are untagged IPv4 with a 20-byte header, not fragments,
TCP or UDP, and long enough for the L4 header, are decoded column-wise.
Every other packet (VLAN, IPv6, options, fragments, anything odd) goes
through snf.packet.scalar.parse_packet and overwrites its row, so the result is
identical to the scalar parser's (tests/unit/test_parse.py checks this).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from snf.packet.flowkey import cached_flow_hashes
from snf.packet.headers import FRAG_NONE, KIND_IP, Headers
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.scalar import ETH_IPV4, ROW_FIELDS, parse_packet, parse_scalar

__all__ = ["MIN_BATCH", "parse_ethernet_ipv4", "parse_ethernet_ipv4_at", "windows"]

MIN_BATCH = 64  # below this, numpy's fixed costs outweigh the per-packet savings
_WIDTH = 48  # Ethernet 14 + IPv4 20 + TCP up to the flags byte (14)


def _u16(win: np.ndarray, at: int) -> np.ndarray:
    return (win[:, at].astype(np.int64) << 8) | win[:, at + 1]


def parse_ethernet_ipv4(packets: Sequence[bytes]) -> Headers:
    lens = np.fromiter(map(len, packets), dtype=np.int64, count=len(packets))
    starts = np.zeros(len(packets), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    return parse_ethernet_ipv4_at(b"".join(packets), starts, lens)


def parse_ethernet_ipv4_at(data: Any, starts: np.ndarray, lens: np.ndarray) -> Headers:
    """The same over packets in a shared buffer: packet i is data[starts[i]:][:lens[i]]."""
    n = len(starts)
    # Row i holds the 48 bytes from packet i's start. Bytes past a packet's end
    # belong to the next one: such rows are never eligible, so what they hold
    # does not matter; a row that would run past the buffer is not eligible.
    win, inside = windows(data, starts, _WIDTH)

    proto = win[:, 23]
    tcp = proto == 6
    avail = np.minimum(_u16(win, 16), lens - 14) - 20  # L4 bytes within total length
    ok = (
        inside
        & (_u16(win, 12) == ETH_IPV4)
        & (win[:, 14] == 0x45)
        & ((_u16(win, 20) & 0x3FFF) == 0)  # neither MF nor an offset
        & (tcp | (proto == 17))
        & (avail >= np.where(tcp, 20, 8))
    )
    n_ok = int(np.count_nonzero(ok))
    if n_ok * 4 < n:  # mostly other traffic: not worth the vectorised pass
        return parse_scalar(LINKTYPE_ETHERNET, _slices(data, starts, lens))

    src4 = np.ascontiguousarray(win[:, 26:30])
    dst4 = np.ascontiguousarray(win[:, 30:34])
    sport = _u16(win, 34)
    dport = _u16(win, 36)
    s32 = src4.view(">u4").ravel()
    d32 = dst4.view(">u4").ravel()
    direction = ~((s32 < d32) | ((s32 == d32) & (sport <= dport)))
    # Key layout KEY4 of snf.packet.flowkey: version proto lo_addr hi_addr lo_port hi_port.
    flip = direction[:, None]
    key = np.empty((n, 14), dtype=np.uint8)
    key[:, 0] = 4
    key[:, 1] = proto
    key[:, 2:6] = np.where(flip, dst4, src4)
    key[:, 6:10] = np.where(flip, src4, dst4)
    ports = np.stack([win[:, 34:36], win[:, 36:38]], axis=1)  # (n, 2, 2): sport, dport
    key[:, 10:12] = np.where(flip, ports[:, 1], ports[:, 0])
    key[:, 12:14] = np.where(flip, ports[:, 0], ports[:, 1])
    key[~ok] = 0  # keep junk rows out of the hash cache
    keys = key.view("V14").ravel().tolist()
    hashes = cached_flow_hashes(keys)
    cols = {
        "kind": [KIND_IP] * n,
        "version": [4] * n,
        "proto": proto.tolist(),
        "src": src4.view("V4").ravel().tolist(),
        "dst": dst4.view("V4").ravel().tolist(),
        "sport": sport.tolist(),
        "dport": dport.tolist(),
        "tcp_flags": np.where(tcp, win[:, 47], 0).tolist(),
        "icmp_type": [-1] * n,
        "frag": [FRAG_NONE] * n,
        "ip_id": _u16(win, 18).tolist(),
        "l3_off": [14] * n,
        "l4_off": [34] * n,
        "ethertype": [ETH_IPV4] * n,
        "flow": keys,
        "flow_hash": hashes,
        "direction": direction.astype(np.int64).tolist(),
        "error": [""] * n,
    }
    lists = [cols[name] for name in ROW_FIELDS]
    if n_ok < n:
        odd = np.flatnonzero(~ok)
        for i, packet in zip(odd.tolist(), _slices(data, starts[odd], lens[odd]), strict=True):
            for col, value in zip(lists, parse_packet(LINKTYPE_ETHERNET, packet), strict=True):
                col[i] = value
    return Headers(*lists)


def windows(data: Any, starts: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, width) bytes from each start (one strided gather), and which rows lie
    wholly inside the buffer; the others are shifted and must not be used."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if len(raw) < width:
        raw = np.concatenate([raw, np.zeros(width, dtype=np.uint8)])
    last = len(raw) - width
    inside = starts <= last
    rows = np.lib.stride_tricks.sliding_window_view(raw, width)[np.minimum(starts, last)]
    return rows, inside


def _slices(data: Any, starts: np.ndarray, lens: np.ndarray) -> list[bytes]:
    view = memoryview(data)
    cuts = map(slice, starts.tolist(), (starts + lens).tolist())
    return list(map(bytes, map(view.__getitem__, cuts)))
