"""Public address and port choice of the NAT (a helper of snf.functions.nat).

Pooling is paired (RFC 4787 REQ-2): an internal IP always gets
`public_ips[pool_hash(ip) % len(public_ips)]`. A public port must land on
the partition of its internal endpoint, so that the replies to it, keyed by
the public endpoint, reach the state that the outbound packets, keyed by the
internal endpoint, wrote:

    endpoint_hash(proto, pub_ip, port) % partitions
        == endpoint_hash(proto, in_ip, in_port) % partitions

`probe()` walks the range from a start port derived from the internal
endpoint, wrapping around, and yields the ports that land on the endpoint's
partition. So a given endpoint tends to get the same port whatever the order
in which endpoints arrive, an allocation hashes about `partitions` ports, and
only a full range (exhaustion) costs a walk over all of it. Each port's
partition is remembered per process. Every hash is blake2b based
(snf.packet.flowkey), never Python's salted hash().
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

from snf.packet.flowkey import endpoint_hash, flow_hash

__all__ = ["EndpointHasher", "pool_index", "probe", "start_port"]

# (proto, public IP, lo, hi, partitions) -> per port of lo..hi: its partition + 1 (0: not yet)
_PARTITION_OF: dict[tuple[int, bytes, int, int, int], array[int]] = {}


def probe(
    proto: int, pub_ip: bytes, lo: int, hi: int, partitions: int, target: int, start: int
) -> Iterator[int]:
    """Ports of lo..hi whose public endpoint lands on `target`, from lo + start, wrapping."""
    size = hi - lo + 1
    if partitions == 1:
        for k in range(size):
            yield lo + (start + k) % size
        return
    key = (proto, pub_ip, lo, hi, partitions)
    known = _PARTITION_OF.get(key)
    if known is None:
        if len(_PARTITION_OF) >= 256:  # a process serves few (proto, ip, range) combinations
            _PARTITION_OF.clear()
        known = _PARTITION_OF[key] = array("H", bytes(2 * size))
    want = target + 1
    for k in range(size):
        i = (start + k) % size
        part = known[i]
        if not part:
            part = known[i] = endpoint_hash(proto, pub_ip, lo + i) % partitions + 1
        if part == want:
            yield lo + i


def pool_index(in_ip: bytes, n: int) -> int:
    """Index of the public IP paired with an internal IP among n public IPs."""
    return flow_hash(b"NATPOOL" + in_ip) % n


def start_port(proto: int, in_ip: bytes, in_port: int, size: int) -> int:
    """Where an internal endpoint starts probing a range of `size` ports (an offset)."""
    return flow_hash(b"NATPORT" + bytes((proto,)) + in_ip + in_port.to_bytes(2, "big")) % size


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
