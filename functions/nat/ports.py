"""Public address and port choice of the NAT (a helper of snf.functions.nat).

Pooling is paired (RFC 4787 REQ-2): an internal IP always gets
`public_ips[pool_hash(ip) % len(public_ips)]`. A public port must land on
the partition of its internal endpoint, so that the replies to it, keyed by
the public endpoint, reach the state that the outbound packets, keyed by the
internal endpoint, wrote:

    endpoint_hash(proto, pub_ip, port) % partitions
        == endpoint_hash(proto, in_ip, in_port) % partitions

`Layout` says, for one (proto, public IP, range, partition count), which
ports land on which partition: every port is hashed once per process. The
allocator (portsets.py) then keeps, per partition, which of its ports are
held. Every hash is blake2b based (snf.packet.flowkey), never Python's
salted hash().
"""

from __future__ import annotations

from array import array

from snf.packet.flowkey import endpoint_hash, flow_hash

__all__ = ["EndpointHasher", "Layout", "ep_key", "layout", "pool_index", "start_port"]

_LAYOUTS: dict[tuple[int, bytes, int, int, int], Layout] = {}


class Layout:
    """Which ports of lo..hi land on which partition, for one (proto, public IP).

    `share[q]`: the ports of partition q, ascending; `part[port - lo]`: a
    port's partition; `slot[port - lo]`: its index in its partition's share."""

    __slots__ = ("hi", "lo", "part", "share", "slot")

    def __init__(self, proto: int, pub_ip: bytes, lo: int, hi: int, partitions: int) -> None:
        self.lo, self.hi = lo, hi
        if partitions == 1:
            self.part = array("H", bytes(2 * (hi - lo + 1)))
            self.share = [array("H", range(lo, hi + 1))]
            self.slot = array("I", range(hi - lo + 1))
            return
        self.part = array(
            "H", [endpoint_hash(proto, pub_ip, p) % partitions for p in range(lo, hi + 1)]
        )
        self.share = [array("H") for _ in range(partitions)]
        self.slot = array("I", bytes(4 * (hi - lo + 1)))
        for off, q in enumerate(self.part):
            self.slot[off] = len(self.share[q])
            self.share[q].append(lo + off)


def layout(proto: int, pub_ip: bytes, lo: int, hi: int, partitions: int) -> Layout:
    """The Layout of (proto, public IP, lo..hi, partitions), made once per process."""
    key = (proto, pub_ip, lo, hi, partitions)
    found = _LAYOUTS.get(key)
    if found is None:
        if len(_LAYOUTS) >= 256:  # a process serves few (proto, ip, range) combinations
            _LAYOUTS.clear()
        found = _LAYOUTS[key] = Layout(proto, pub_ip, lo, hi, partitions)
    return found


def ep_key(proto: int, addr: bytes, port: int) -> bytes:
    """Table key of an endpoint: proto byte, 4 address bytes, 2 port bytes."""
    return bytes((proto,)) + addr + port.to_bytes(2, "big")


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
