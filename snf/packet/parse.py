"""parse_batch: the parsed headers of a batch, by the fastest parser that applies.

Large Ethernet batches go through the vectorised Ethernet/IPv4/TCP/UDP path
(snf.packet.vectorised); everything else through the scalar parser
(snf.packet.scalar), which understands every link type. Both give identical
Headers (tests/unit/test_parse.py checks this on every capture).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.scalar import SUPPORTED_LINKTYPES, parse_packet, parse_scalar
from snf.packet.vectorised import MIN_BATCH, parse_ethernet_ipv4, parse_ethernet_ipv4_at

__all__ = [
    "SUPPORTED_LINKTYPES",
    "parse_batch",
    "parse_buffer",
    "parse_packet",
    "parse_packet_batch",
]


def parse_batch(linktype: int, packets: Sequence[bytes], *, vectorise: bool = True) -> Headers:
    """Parse every packet of a batch into one Headers (parallel lists).

    `vectorise` lets the numpy path take the Ethernet/IPv4 TCP/UDP packets of
    large batches; results are identical either way.
    """
    if vectorise and linktype == LINKTYPE_ETHERNET and len(packets) >= MIN_BATCH:
        return parse_ethernet_ipv4(packets)
    return parse_scalar(linktype, packets)


def parse_buffer(
    linktype: int, data: Any, starts: np.ndarray, lens: np.ndarray, *, vectorise: bool = True
) -> Headers:
    """parse_batch over packets in one buffer (data[starts[i]:][:lens[i]]), uncopied
    on the vectorised path."""
    if vectorise and linktype == LINKTYPE_ETHERNET and len(starts) >= MIN_BATCH:
        return parse_ethernet_ipv4_at(data, starts, lens)
    view = memoryview(data)
    cuts = map(slice, starts.tolist(), (starts + lens).tolist())
    return parse_scalar(linktype, list(map(bytes, map(view.__getitem__, cuts))))


def parse_packet_batch(batch: PacketBatch, *, vectorise: bool = True) -> Headers:
    """parse_batch over a PacketBatch's packets and link type (or the headers it
    carries already: snf.packet.batch.PacketBatch.headers)."""
    if batch.headers is not None and vectorise:
        return batch.headers
    lens = batch.records["cap_len"].astype(np.int64)
    starts = np.zeros(len(lens), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    headers = parse_buffer(batch.linktype, batch.payload, starts, lens, vectorise=vectorise)
    batch.headers = headers
    return headers
