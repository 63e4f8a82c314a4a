"""Public address and port choice of the NAT (a helper of functions.nat).

Pooling is paired (RFC 4787 REQ-2): an internal IP always gets
`public_ips[pool_hash(ip) % len(public_ips)]`. A public port must land on
the partition of its internal endpoint, so that the replies to it, keyed by
the public endpoint, reach the state that the outbound packets, keyed by the
internal endpoint, wrote:

    endpoint_hash(proto, pub_ip, port) % partitions
        == endpoint_hash(proto, in_ip, in_port) % partitions

`candidates()` gives, per (proto, public IP, port range, partitions), the
sorted ports of the range that land on each partition (computed once per
process and cached). The NAT probes that list from a start index derived
from the internal endpoint, so a given endpoint tends to get the same port
whatever the order in which endpoints arrive. Every hash is blake2b based
(snf.flowkey), never Python's salted hash().
"""

from __future__ import annotations

from snf.flowkey import endpoint_hash, flow_hash

__all__ = ["EndpointHasher", "candidates", "pool_index", "start_index"]

_CANDIDATES: dict[tuple[int, bytes, int, int, int], tuple[tuple[int, ...], ...]] = {}


def candidates(
    proto: int, pub_ip: bytes, lo: int, hi: int, partitions: int
) -> tuple[tuple[int, ...], ...]:
    """Per partition, the sorted ports of lo..hi whose public endpoint lands there."""
    key = (proto, pub_ip, lo, hi, partitions)
    lists = _CANDIDATES.get(key)
    if lists is None:
        if partitions == 1:
            lists = (tuple(range(lo, hi + 1)),)
        else:
            parts: list[list[int]] = [[] for _ in range(partitions)]
            for port in range(lo, hi + 1):
                parts[endpoint_hash(proto, pub_ip, port) % partitions].append(port)
            lists = tuple(tuple(p) for p in parts)
        if len(_CANDIDATES) >= 256:  # a process serves few (proto, ip, range) combinations
            _CANDIDATES.clear()
        lists = _CANDIDATES[key] = lists
    return lists


def pool_index(in_ip: bytes, n: int) -> int:
    """Index of the public IP paired with an internal IP among n public IPs."""
    return flow_hash(b"NATPOOL" + in_ip) % n


def start_index(proto: int, in_ip: bytes, in_port: int, n: int) -> int:
    """Where an internal endpoint starts probing its list of n candidate ports."""
    return flow_hash(b"NATPORT" + bytes((proto,)) + in_ip + in_port.to_bytes(2, "big")) % n


class EndpointHasher:
    """endpoint_hash through a bounded cache (blake2b costs ~0.4 us per call)."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[tuple[int, bytes, int], int] = {}

    def __call__(self, proto: int, addr: bytes, port: int) -> int:
        key = (proto, addr, port)
        h = self._cache.get(key)
        if h is None:
            if len(self._cache) >= 1 << 16:
                self._cache.clear()
            h = self._cache[key] = endpoint_hash(proto, addr, port)
        return h
