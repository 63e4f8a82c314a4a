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

"""

from __future__ import annotations

import hashlib
import struct

__all__ = [
    "KEY4",
    "KEY6",
    "MALFORMED_KEY",
    "NON_IP_PREFIX",
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
