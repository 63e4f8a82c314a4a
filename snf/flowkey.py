"""Flow keys, flow hashes and the partition router.

Flow key
    Every packet gets one canonical, direction-free key (bytes):

    * IP (``KIND_IP``)::

          version:u8 proto:u8 lo_addr hi_addr lo_port:u16be hi_port:u16be

      Addresses are 4 (IPv4) or 16 (IPv6) bytes. ``(lo_addr, lo_port)`` is the
      lexicographically smaller of ``(src, sport)`` and ``(dst, dport)``
      (address bytes first, then port), so both directions of a flow share
      one key. ``direction`` is 0 when the packet's ``(src, sport)`` is the
      low end, else 1. Ports are the TCP/UDP/SCTP/UDP-Lite/DCCP ports, the
      ICMP/ICMPv6 echo identifier (in both port slots, so request and reply
      match), else 0.
    * Non-first IP fragments (``FRAG_LATER``) carry no L4 header: their key
      has ports 0. First fragments carry the ports and get the full key.
    * Non-IP frames (``KIND_NON_IP``: ARP, LLDP, 802.3/LLC, ...)::

          b"\\x00L2" ethertype:u16be

      So all frames of one non-IP protocol share a key and a partition, and
      stay in order relative to each other. ``direction`` is 0.
    * Malformed packets (``KIND_MALFORMED``): the fixed key
      ``b"\\xffmalformed"``, so they all go to one partition. ``direction`` 0.

Flow hash
    ``flow_hash(key)`` is the first 8 bytes of ``blake2b(key, digest_size=8)``
    read little-endian: a 64-bit value, the same in every process and on
    every machine (unlike ``hash()``, which PYTHONHASHSEED salts).
    ``partition_for(h, n)`` is ``h % n``.

Router
    ``FlowRouter.route(headers, ts_ns, partitions)`` gives each packet of a
    batch its partition: ``partition_for(flow_hash, partitions)``, except for
    fragments. A first fragment (``FRAG_FIRST``) routes by its full flow key,
    and the router remembers ``(version, src, dst, proto, ip_id)`` -> that
    flow hash for ``FRAG_TTL_NS`` (30 s) of *packet* time (``ts_ns``, never
    the wall clock), keeping at most ``max_entries`` (65536) datagrams and
    evicting the oldest. A non-first fragment (``FRAG_LATER``) goes where its
    remembered first fragment went; when the first fragment was not seen
    (yet) it routes by its own key, i.e. the (proto, address pair) key with
    ports 0. So every fragment of a datagram lands on the partition that
    holds its flow's state, as long as the first fragment passes the same
    router first. The router is deterministic for a given packet sequence;
    fragments split across several routers (producers) do not share memory.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from snf.headers import FRAG_FIRST, FRAG_LATER, Headers

__all__ = [
    "FRAG_TTL_NS",
    "KEY4",
    "KEY6",
    "MALFORMED_KEY",
    "NON_IP_PREFIX",
    "FlowRouter",
    "cached_flow_hash",
    "cached_flow_hashes",
    "endpoint_hash",
    "flow_hash",
    "flow_key",
    "non_ip_key",
    "partition_for",
]

# The two IP key layouts; the parser packs these directly (same layout).
KEY4 = struct.Struct("!BB4s4sHH")
KEY6 = struct.Struct("!BB16s16sHH")
NON_IP_PREFIX = b"\x00L2"
MALFORMED_KEY = b"\xffmalformed"
FRAG_TTL_NS = 30 * 1_000_000_000

_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes


def flow_key(
    version: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int
) -> tuple[bytes, int]:
    """The canonical key of an IP packet and its direction (0: src is the low end)."""
    pack = KEY4.pack if version == 4 else KEY6.pack
    if src < dst or (src == dst and sport <= dport):
        return pack(version, proto, src, dst, sport, dport), 0
    return pack(version, proto, dst, src, dport, sport), 1


def non_ip_key(ethertype: int) -> bytes:
    """The key shared by every non-IP frame of one EtherType."""
    return NON_IP_PREFIX + (ethertype & 0xFFFF).to_bytes(2, "big")


def endpoint_hash(proto: int, addr: bytes, port: int) -> int:
    """Stable 64-bit hash of one transport endpoint (proto, address, port).

    The partitioning key of functions whose state belongs to an endpoint
    rather than a flow (nat: the internal or public endpoint; loadbalancer:
    the client endpoint). Same hash family as flow_hash.
    """
    return flow_hash(b"EP" + bytes((proto & 0xFF,)) + addr + (port & 0xFFFF).to_bytes(2, "big"))


def flow_hash(key: bytes) -> int:
    """Stable 64-bit hash of a flow key (blake2b-64, little-endian)."""
    return _from_bytes(_blake2b(key, digest_size=8).digest(), "little")


# flow key -> flow hash. blake2b costs ~0.35 us; most packets belong to a
# flow seen moments ago, so a bounded cache makes hashing nearly free.
_HASH_CACHE: dict[bytes, int] = {}
_HASH_CACHE_MAX = 1 << 16


def cached_flow_hash(key: bytes) -> int:
    """flow_hash(key), through a bounded process-wide cache."""
    h = _HASH_CACHE.get(key)
    if h is None:
        if len(_HASH_CACHE) >= _HASH_CACHE_MAX:
            _HASH_CACHE.clear()
        h = _HASH_CACHE[key] = flow_hash(key)
    return h


def cached_flow_hashes(keys: list[bytes]) -> list[int]:
    """cached_flow_hash of every key (one C-level pass when all are cached)."""
    hashes = list(map(_HASH_CACHE.get, keys))
    if None in hashes:
        hashes = [
            cached_flow_hash(k) if h is None else h for h, k in zip(hashes, keys, strict=True)
        ]
    return hashes


def partition_for(flow_hash: int, partitions: int) -> int:
    """The partition of a flow hash among `partitions`: plain modulo."""
    return flow_hash % partitions


class FlowRouter:
    """Partition chooser that keeps IP fragments with their first fragment."""

    def __init__(self, ttl_ns: int = FRAG_TTL_NS, max_entries: int = 65536) -> None:
        self.ttl_ns = ttl_ns
        self.max_entries = max_entries
        # datagram id -> (partition of its first fragment, ts of that fragment).
        # Insertion order is age order: first fragments are (re)inserted at the end.
        self._first: dict[tuple[int, bytes, bytes, int, int], tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._first)

    def route(
        self,
        headers: Headers,
        ts_ns: Sequence[int],
        partitions: int,
        hashes: Sequence[int | None] | None = None,
        current: int | None = None,
    ) -> list[int]:
        """The partition of every packet.

        By default a packet goes to its flow hash's partition. `hashes` (one
        per packet, e.g. a function's key_hashes) overrides that; a None in it
        means "no preference": stay on `current`, or at ingress (current None)
        use the flow hash. Fragments follow their first fragment either way.
        """
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        flow_hashes = headers.flow_hash
        if hashes is None:
            want = [h % partitions for h in flow_hashes]
        else:
            want = [
                h % partitions
                if h is not None
                else current
                if current is not None
                else fh % partitions
                for h, fh in zip(hashes, flow_hashes, strict=True)
            ]
        frags = headers.frag
        if not any(frags):  # common case: no fragments in the batch
            return want
        ts_list = ts_ns.tolist() if hasattr(ts_ns, "tolist") else list(ts_ns)
        first = self._first
        ttl = self.ttl_ns
        version, src, dst = headers.version, headers.src, headers.dst
        proto, ip_id = headers.proto, headers.ip_id
        for i, f in enumerate(frags):
            if f == FRAG_FIRST:
                dgram = (version[i], src[i], dst[i], proto[i], ip_id[i])
                first.pop(dgram, None)
                first[dgram] = (want[i], ts_list[i])
                self._expire(ts_list[i])
            elif f == FRAG_LATER:
                seen = first.get((version[i], src[i], dst[i], proto[i], ip_id[i]))
                if seen is not None and abs(ts_list[i] - seen[1]) <= ttl:
                    want[i] = seen[0]
        return want

    def _expire(self, now_ns: int) -> None:
        """Drop entries older than the TTL from the old end, and any above the cap."""
        first = self._first
        horizon = now_ns - self.ttl_ns
        while first:
            oldest = next(iter(first))
            if len(first) <= self.max_entries and first[oldest][1] >= horizon:
                break
            del first[oldest]
