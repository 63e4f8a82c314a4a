"""Weighted Maglev lookup tables (a helper of snf.functions.loadbalancer).

Maglev (Eisenbud et al., NSDI 2016, section 3.4) gives every backend a
permutation of the table's slots, ``(offset + j * skip) mod M`` for
j = 0, 1, ..., with M prime so that every skip in 1..M-1 visits every slot.
Backends then take turns claiming the next free slot of their permutation
until the table is full. Weights follow Katran's MaglevV2: in every round each
backend adds its weight to a running total and takes a turn only when the
total reaches the largest weight (then subtracts it), so a backend of weight
w claims about w / sum(weights) of the slots.

Everything here is a stable function of its inputs (blake2b, never hash()),
so every worker on every machine builds the same table and picks the same
backend for a flow:

    id(backend)  = address bytes (4 or 16) + port (u16 big-endian)
    offset       = H(id, "maglev-offset") mod M
    skip         = H(id, "maglev-skip") mod (M - 1) + 1
    turn order   = backends sorted by id (config order does not matter)
    flow hash    = H(proto u8 + src + sport u16be + dst + dport u16be, "maglev-flow")
    backend      = table[flow hash mod M]

where H(data, person) is blake2b(data, digest_size=8, person=person) read as
a little-endian unsigned 64-bit integer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from math import gcd

__all__ = [
    "MAX_TABLE_SIZE",
    "build_table",
    "flow5_hash",
    "is_prime",
    "maglev_hash",
    "permutation",
]

MAX_TABLE_SIZE = 1_000_003  # a prime; larger tables take seconds to build in Python

_blake2b = hashlib.blake2b
# (address bytes, port, weight)
BackendSpec = tuple[bytes, int, int]


def is_prime(n: int) -> bool:
    """Trial division; table sizes are at most MAX_TABLE_SIZE."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def maglev_hash(data: bytes, person: bytes) -> int:
    """blake2b-64 of `data` personalised with `person`, little-endian."""
    return int.from_bytes(_blake2b(data, digest_size=8, person=person).digest(), "little")


def backend_id(addr: bytes, port: int) -> bytes:
    return addr + port.to_bytes(2, "big")


def permutation(addr: bytes, port: int, size: int) -> tuple[int, int]:
    """(offset, skip) of a backend's slot permutation in a table of `size` slots."""
    ident = backend_id(addr, port)
    offset = maglev_hash(ident, b"maglev-offset") % size
    skip = maglev_hash(ident, b"maglev-skip") % (size - 1) + 1
    return offset, skip


def flow5_hash(proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> int:
    """The hash of a client flow's 5-tuple that picks its table slot."""
    data = bytes((proto,)) + src + sport.to_bytes(2, "big") + dst + dport.to_bytes(2, "big")
    return maglev_hash(data, b"maglev-flow")


def build_table(backends: Sequence[BackendSpec], size: int) -> list[int]:
    """The lookup table: slot -> index into `backends` (empty list when no backends).

    `size` must be a prime >= len(backends) (checked by the config). Results
    are cached, so rebuilding a LoadBalancer with the same pool is cheap.
    """
    if not backends:
        return []
    order = sorted(range(len(backends)), key=lambda i: backend_id(*backends[i][:2]))
    spec = tuple((backends[i][0], backends[i][1], backends[i][2]) for i in order)
    table = _build_sorted(spec, size)
    return [order[slot] for slot in table]


@lru_cache(maxsize=64)
def _build_sorted(backends: tuple[BackendSpec, ...], size: int) -> tuple[int, ...]:
    """Population over backends already in turn order; slot -> position in `backends`."""
    n = len(backends)
    if size < n or not is_prime(size):
        raise ValueError(f"table size must be a prime >= {n}, got {size}")
    g = 0
    for _, _, w in backends:
        g = gcd(g, w)
    weights = [w // g for _, _, w in backends]  # same turns, fewer idle rounds
    top = max(weights)
    perms = [permutation(a, p, size) for a, p, _ in backends]
    cur = [off for off, _ in perms]  # next candidate slot of each backend
    skips = [skip for _, skip in perms]
    credit = [0] * n
    entry = [-1] * size
    filled = 0
    while True:
        for i in range(n):
            credit[i] += weights[i]
            if credit[i] < top:
                continue
            credit[i] -= top
            c, skip = cur[i], skips[i]
            while entry[c] >= 0:
                c += skip
                if c >= size:
                    c -= size
            entry[c] = i
            c += skip
            cur[i] = c - size if c >= size else c
            filled += 1
            if filled == size:
                return tuple(entry)
