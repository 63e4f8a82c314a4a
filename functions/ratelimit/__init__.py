"""Token-bucket policer: per flow, per source or per destination address.

Summary
    Every key (a flow, or an IP address) has a token bucket of `burst` tokens
    that refills at `rate`. A bucket starts full. A packet that finds enough
    tokens conforms: it passes and takes them (1 token per packet for a pps
    rate, its original length in bytes for a bit rate). Any other packet
    exceeds: it goes to `exceed` (action drop) or passes with its DSCP
    rewritten (action mark); an exceeding packet takes no tokens. Refill is in
    packet time (ts_ns), in exact integers: a replay polices exactly as the
    live run did, whatever the batch boundaries. A timestamp that steps back
    refills nothing and does not move the bucket's time back.

Ports
    pass    conforming packets, unchanged (reason ""); with action mark also
            exceeding packets, DSCP rewritten (reason "marked"); frames without
            IP, never policed (reason "")
    exceed  exceeding packets with action drop; reason "rate"
    drop    reason "malformed" (claims IP but is cut short or inconsistent)

Config (RateLimitConfig)
    key     flow|src|dst, default flow: what shares a bucket. flow: both
            directions of a flow (Headers.flow); src / dst: the packet's source
            / destination IP address
    rate    "<number><unit>", unit pps, bps, kbps, Kbps, Mbps or Gbps (SI,
            x1000); a whole number of packets or bits per second
    burst   bucket size, 1..1e9: packets for a pps rate, bytes for a bit rate
            (a packet longer than `burst` bytes never conforms)
    action  drop|mark, default drop
    dscp    0..63, required with action mark, rejected with action drop

State
    bucket  key: Headers.flow (key flow) or the 4/16 address bytes (src/dst)
            value: [tokens, last_ts_ns]; tokens scaled by 1e9 per packet (pps)
            or per bit (bit rates), so a refill is elapsed_ns * rate, exact
            expiry: a full bucket is not stored (absent = full), so a key whose
            bucket is full after its packet writes nothing or deletes its
            entry; the sweep deletes buckets that refilled since (bounds.py),
            and a full table (max_entries) evicts the one that refills first.
    frag    (key flow only) key: version + src + dst + proto + 4-byte IP id
            value: [first_fragment_ts_ns, flow key hex]; lets a datagram's
            later fragments (no ports) use their flow's bucket for 30 s
            (snf.packet.fragments.FRAG_TTL_NS, as the router); expiry: lazy,
            and by the sweep
    Each batch reads a key once, works on a local copy and writes it once at
    the end, and only when its value changed.

Metrics
    the engine's counters: "in", "pass", "pass:marked", "exceed:rate",
    "drop:malformed".

Example
    - type: ratelimit
      key: src
      rate: 10Mbps
      burst: 150000         # bytes
      action: mark
      dscp: 8               # CS1, "lower effort"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from snf.core.contract import (
    EVICTED,
    BoundedStateConfig,
    Decisions,
    FunctionConfig,
    NetworkFunction,
    Record,
    SweepContext,
    triage,
)
from snf.core.expiry import ExpiryIndex
from snf.core.reasons import MALFORMED
from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch
from snf.packet.flowkey import flow_hash
from snf.packet.fragments import FRAG_TTL_NS, datagram_key_of
from snf.packet.headers import FRAG_FIRST, FRAG_LATER, FRAG_NONE, KIND_IP, Headers
from snf.packet.rewrite import set_dscp

from .bounds import BucketExpiry
from .rate import RATE_FORMS, parse_rate

__all__ = ["MAX_BURST", "RateLimit", "RateLimitConfig", "address_hash"]

SCALE = 1_000_000_000  # token units per packet (pps) or per bit (bit rates)
MAX_BURST = 1_000_000_000  # keeps scaled tokens (burst * 8e9 at most) within a signed i64
_ADDR_PREFIX = b"ADDR"
RATE = "rate"  # exceeded, action drop: port exceed
MARKED = "marked"  # exceeded, action mark: port pass, DSCP rewritten


class RateLimitConfig(BoundedStateConfig):
    """Config of the ratelimit function."""

    key: Literal["flow", "src", "dst"] = Field(
        default="flow",
        description="What shares a bucket: flow (both directions of a flow), src (the "
        "packet's source IP address) or dst (its destination IP address).",
    )
    rate: str = Field(description=f"Refill rate: {RATE_FORMS}.")
    burst: int = Field(
        ge=1,
        le=MAX_BURST,
        strict=True,
        description="Bucket size: packets for a pps rate, bytes for a bit rate. A packet "
        "longer than `burst` bytes never conforms to a bit rate.",
    )
    action: Literal["drop", "mark"] = Field(
        default="drop",
        description="Exceeding packets: drop (to port exceed) or mark (pass with `dscp`).",
    )
    dscp: int | None = Field(
        default=None,
        ge=0,
        le=63,
        strict=True,
        validate_default=True,
        description="DSCP (0..63) written into exceeding packets; required with action "
        "mark, not allowed with action drop.",
    )

    @field_validator("rate", mode="before")
    @classmethod
    def _check_rate(cls, value: Any) -> Any:
        parse_rate(value)
        return value

    @field_validator("dscp")
    @classmethod
    def _check_dscp(cls, value: int | None, info: ValidationInfo) -> int | None:
        action = info.data.get("action")  # absent when action itself was invalid
        if action == "mark" and value is None:
            raise ValueError("action mark needs a dscp (0..63) to write into exceeding packets")
        if action == "drop" and value is not None:
            raise ValueError(f"dscp {value} is only used with action mark, not with action drop")
        return value


def address_hash(addr: bytes) -> int:
    """Partitioning hash of one IP address (the bucket key of key src / dst)."""
    return flow_hash(_ADDR_PREFIX + addr)


class RateLimit(NetworkFunction):
    """Token-bucket policer core; see the module docstring."""

    kind: ClassVar[str] = "ratelimit"
    ports: ClassVar[tuple[str, ...]] = ("pass", "exceed", "drop")
    reasons: ClassVar[tuple[str, ...]] = (MALFORMED, RATE, MARKED)
    metrics: ClassVar[tuple[str, ...]] = (EVICTED,)
    tables: ClassVar[tuple[str, ...]] = ("bucket", "frag")
    Config: ClassVar[type[FunctionConfig]] = RateLimitConfig

    def __init__(self, config: RateLimitConfig) -> None:
        super().__init__(config)
        self.config: RateLimitConfig = config
        rate = parse_rate(config.rate)
        self.bits = rate.bits
        self.rate_per_s = rate.per_second  # scaled tokens gained per ns of packet time
        # Bit rates count bytes of burst, 8 bits each; a pps bucket holds packets.
        self.cap = config.burst * SCALE * (8 if rate.bits else 1)
        self.mark = config.action == "mark"
        self.dscp = config.dscp if config.dscp is not None else 0
        if config.key != "flow":
            self.key = "custom"
            self.key_flow_consistent = False
        self._hashes: dict[bytes, int] = {}
        self._expiry = BucketExpiry(self.cap, self.rate_per_s, config.max_entries)

    def sweep(self, state: BatchState, ctx: SweepContext) -> dict[str, list[Record]]:
        """Delete the buckets full again by ctx.now_ns (absent = full: no verdict
        changes) and the expired fragment records."""
        self._expiry.sweep(state, ctx.now_ns, ctx.limit)
        return {}

    def forget(self, partition: int) -> None:
        self._expiry.forget(partition)

    def key_hashes(self, batch: PacketBatch, headers: Headers) -> Sequence[int | None]:
        """Key flow: the flow hash. Key src / dst: address_hash of that address for IP
        packets (later fragments too: they carry the same addresses as their first
        fragment, so they land where their bucket is either way), None otherwise."""
        if self.config.key == "flow":
            return headers.flow_hash
        addrs = headers.src if self.config.key == "src" else headers.dst
        cache = self._hashes
        if len(cache) > 65536:
            cache.clear()
        out: list[int | None] = []
        for k, addr in zip(headers.kind, addrs, strict=True):
            if k != KIND_IP:
                out.append(None)
                continue
            h = cache.get(addr)
            if h is None:
                h = cache[addr] = address_hash(addr)
            out.append(h)
        return out

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        decisions, ip = triage(headers)
        ports, reasons, replaced = decisions.ports, decisions.reasons, decisions.replaced
        n = len(headers)
        records = batch.records
        ts = records["ts_ns"].tolist()
        costs = [x * 8 * SCALE for x in records["orig_len"].tolist()] if self.bits else [SCALE] * n
        table = state.table("bucket")
        expiry = self._expiry
        index, frag_index = expiry.indexes(state)
        keys = self._bucket_keys(headers, ts, state, frag_index)
        cap, rate, mark, most = self.cap, self.rate_per_s, self.mark, expiry.max_entries
        # key -> (tokens, last_ts) or None (full); `before` holds what the store had;
        # `dirty`: keys changed since the index last heard of them.
        work: dict[bytes, tuple[int, int] | None] = {}
        before: dict[bytes, tuple[int, int] | None] = {}
        dirty: set[bytes] = set()
        evicted = 0

        for i in ip:
            try:
                bkey = keys[i]
                t = ts[i]
                if bkey in work:
                    bucket = work[bkey]
                else:
                    stored = table.get(bkey)
                    bucket = None if stored is None else (int(stored[0]), int(stored[1]))
                    before[bkey] = bucket
                if bucket is None:
                    tokens, last = cap, t
                else:
                    tokens, last = bucket
                    if t > last:  # a step back in time refills nothing
                        tokens = min(cap, tokens + (t - last) * rate)
                        last = t
                cost = costs[i]
                conform = tokens >= cost
                if conform:
                    tokens -= cost
                    port, reason = "pass", ""
                elif mark:
                    port, reason = "pass", MARKED
                    new = self._marked(batch.packet(i), headers, i)
                    if new is not None:
                        replaced[i] = new
                else:
                    port, reason = "exceed", RATE
                if tokens < cap and len(index) + len(dirty) >= most:  # maybe full
                    evicted += expiry.make_room(bkey, table, index, work, before, dirty)
                work[bkey] = None if tokens >= cap else (tokens, last)
                dirty.add(bkey)
            except Exception:  # crafted content broke an assumption: drop, never raise
                port, reason = "drop", MALFORMED
                replaced.pop(i, None)
            if reason:
                ports[i], reasons[i] = port, reason

        for bkey, bucket in work.items():
            if bucket != before[bkey]:
                if bucket is None:
                    table.delete(bkey)
                else:
                    table.set(bkey, [bucket[0], bucket[1]])
        expiry.flush(index, work, dirty)
        if evicted:
            decisions.metrics[EVICTED] = evicted
        return decisions

    def _marked(self, packet: bytes, headers: Headers, i: int) -> bytes | None:
        """The packet with its DSCP set to `dscp` (ECN kept), or None when it already has it."""
        l3, version = headers.l3_off[i], headers.version[i]
        # IPv4: top 6 bits of the TOS byte; IPv6: of the traffic class (bits 4..11).
        v6 = ((packet[l3] & 0x0F) << 2) | (packet[l3 + 1] >> 6)
        if (packet[l3 + 1] >> 2 if version == 4 else v6) == self.dscp:
            return None
        pkt = bytearray(packet)
        set_dscp(pkt, l3, version, self.dscp)
        return bytes(pkt)

    def _bucket_keys(
        self, h: Headers, ts: list[int], state: BatchState, due: ExpiryIndex
    ) -> list[bytes]:
        """The bucket key of every packet (b"" for frames without IP)."""
        key = self.config.key
        if key == "src":
            return h.src
        if key == "dst":
            return h.dst
        if not any(h.frag):
            return h.flow
        # A later fragment has no ports: it uses the flow of its datagram's first
        # fragment when that was seen within FRAG_TTL_NS (where the router sent it
        # too), else its own (proto, address pair) flow key.
        frags = state.table("frag")
        keys = list(h.flow)
        for i, f in enumerate(h.frag):
            if f == FRAG_NONE or h.kind[i] != KIND_IP:
                continue
            dgram = datagram_key_of(h, i)
            t = ts[i]
            entry = frags.get(dgram)
            if f == FRAG_FIRST:
                value = [t, keys[i].hex()]
                if entry != value:
                    frags.set(dgram, value)
                    due.set(dgram, t + FRAG_TTL_NS + 1)
            elif f == FRAG_LATER and entry is not None:
                if abs(t - entry[0]) <= FRAG_TTL_NS:
                    keys[i] = bytes.fromhex(entry[1])
                elif t - entry[0] > FRAG_TTL_NS:
                    frags.delete(dgram)  # expired
                    due.discard(dgram)
        return keys
