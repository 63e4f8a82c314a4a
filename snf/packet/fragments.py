"""IP fragments: one key per datagram, and the router that keeps them together.

Datagram key
    ``datagram_key(version, src, dst, proto, ip_id)`` identifies the fragments
    of one datagram (bytes: version, addresses, protocol, 4-byte IP id). It is
    the one key every function uses for its fragment state (the firewall's
    verdict of a first fragment, the NAT's and load balancer's translation).

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

from collections.abc import Sequence

from snf.packet.headers import FRAG_FIRST, FRAG_LATER, Headers

__all__ = ["FRAG_TTL_NS", "FlowRouter", "datagram_key", "datagram_key_of"]

# How long, in packet time, a datagram's later fragments follow its first one.
FRAG_TTL_NS = 30 * 1_000_000_000


def datagram_key(version: int, src: bytes, dst: bytes, proto: int, ip_id: int) -> bytes:
    """The fragments of one datagram: version, src, dst, proto, IP id (4 bytes)."""
    return bytes((version,)) + src + dst + bytes((proto,)) + ip_id.to_bytes(4, "big")


def datagram_key_of(h: Headers, i: int) -> bytes:
    """datagram_key of packet `i` of a parsed batch."""
    return datagram_key(h.version[i], h.src[i], h.dst[i], h.proto[i], h.ip_id[i])


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
