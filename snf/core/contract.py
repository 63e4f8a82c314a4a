"""The contract of a network function core.

A core is a pure class: a batch of packets and its parsed headers in, one
output port (and a reason) per packet out, plus JSON records on record ports,
state through BatchState. It never imports Faust or Kafka; snf.runtime and
snf.runtime.local run the same core.

Ports, reasons (snf.core.reasons) and metrics are declared on the class; the
engine counts them all and refuses undeclared ones. A core keeps no counters
of its own: per-packet counts come from its ports and reasons, anything else
(the load balancer's new flows) from `Decisions.metrics` and, in finish(),
`FinishContext.metrics`.

Every core starts with the same prelude, `triage()`: frames without IP pass
(or, on request, drop with NON_IP), malformed packets drop with MALFORMED,
and the core decides the IP packets.

Partitioning (docs/ARCHITECTURE.md, "Partitioning across functions"): `key`
says what the core needs from the partitioning of its input.

    "any"     no per-key state: any partition will do (never re-split for it)
    "flow"    state per bidirectional flow: both directions of every flow
              must reach one partition (any flow-consistent key will do)
    "custom"  key_hashes() decides, packet by packet; `key_flow_consistent`
              says whether that key also keeps every flow together

Bounded state (docs/ARCHITECTURE.md, "Bounded state"): a core whose entries
expire sets `sweep_interval_ns` (BoundedStateConfig.sweep_interval does it)
and implements sweep(). The engine keeps, per partition, the next point of a
fixed grid of packet time (multiples of the interval) in the control table;
when the running maximum of the packets' timestamps reaches it, the engine
cuts the batch there: process() the packets before, sweep() at that grid
point, process() the rest. A packet that jumps over several grid points
sweeps once, at the last. Sweeps therefore depend on the packets alone, never
on how they were cut into batches, and a takeover (which restores the tables
and the control table) sweeps exactly as the first owner did.

    sweep(state, ctx)  remove the entries expired as of packet time ctx.now_ns
                       (the lazy path would treat them as absent at that
                       time), at most ctx.limit per table, the earliest
                       (expiry, key) first; the rest go at the next grid
                       point. All writes of one input message are one
                       journal entry, hence the limit. May emit records (a
                       flow monitor's exports) and count metrics.
    forget(partition)  drop every in-memory structure derived from this
                       partition's tables. The shell calls it when the tables
                       may have changed beneath the core (a new assignment,
                       a recovery's undo); the engine calls it when a batch
                       fails. A derived index (snf.core.expiry) must be a
                       deterministic function of the table contents, rebuilt
                       lazily on the next batch of the partition.

Reserved tables (`reserved_tables`, a subset of `tables`) hold promises
that must outlive any crash, such as "every outbound sequence number below
this one may have been used": the journal keeps no before-image of them (a
recovery never rolls them back), and the worker makes a batch's writes to
them durable in Kafka before it sends any of the batch's outputs. A core
therefore writes a reservation before the first output that relies on it,
and after `forget()` starts from what the table says, never from memory.

`BoundedStateConfig.max_entries` caps a table per partition. When an insert
finds it full, a core evicts (embryonic entries first, e.g. half-open TCP,
then the entry closest to expiry; counted in its metric "evicted") or, where
evicting would be wrong, drops the packet with reason TABLE_FULL. Either is
decided per packet, from the table alone, so it is deterministic too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from snf.core.reasons import MALFORMED, NON_IP
from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch
from snf.packet.headers import KIND_IP, KIND_NON_IP, Headers

__all__ = [
    "EVICTED",
    "SWEEP_LIMIT",
    "TABLE_FULL",
    "BoundedStateConfig",
    "Decisions",
    "FinishContext",
    "FunctionConfig",
    "KeyKind",
    "NetworkFunction",
    "Record",
    "SweepContext",
    "triage",
]

KeyKind = Literal["any", "flow", "custom"]
Record = dict[str, Any]  # one JSON object on a record port


_NS = 1_000_000_000
# At most this many expiries per table per sweep: a sweep's deletes (and their
# before-images) share the journal entry of the input message that crossed the
# grid point, and a Kafka message holds ~1 MB.
SWEEP_LIMIT = 4000
TABLE_FULL = "table_full"  # reason: the table is at max_entries and this core does not evict
EVICTED = "evicted"  # metric: entries removed to make room for a new one


class FunctionConfig(BaseModel, extra="forbid"):
    """Base of every function's config model: unknown fields are errors."""


class BoundedStateConfig(FunctionConfig):
    """Config of a function whose tables expire and are capped (module docstring)."""

    max_entries: int = Field(
        default=1_000_000,
        ge=1,
        description="Most entries of the function's main table per partition; when an insert "
        "finds it full, embryonic entries (half-open TCP) are evicted first, then the entry "
        "closest to its expiry.",
    )
    sweep_interval: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        description="Seconds of packet time between sweeps of expired entries (0: no sweeps, "
        "expiry only when a later packet of the same key finds its entry).",
    )


@dataclass(slots=True)
class Decisions:
    """Where each packet of a batch goes, in batch order, plus records per record port."""

    ports: list[str] = field(default_factory=list)  # output port per packet
    reasons: list[str] = field(default_factory=list)  # "" or a declared reason ("rule:2")
    replaced: dict[int, bytes] = field(default_factory=dict)  # rewritten packets by index
    # record port -> JSON objects. Each must be a deterministic function of the
    # packets (the sink deduplicates identical records after a replay) and carry
    # an integer "ts_ns" (packet time) by which outputs are ordered.
    records: dict[str, list[Record]] = field(default_factory=dict)
    # declared metric -> how much this batch adds (the engine counts it)
    metrics: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SweepContext:
    """A sweep of one partition at a grid point of packet time (module docstring)."""

    partition: int
    now_ns: int
    limit: int = SWEEP_LIMIT
    # declared metric -> count: sweep() adds to it, the engine counts it
    metrics: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class FinishContext:
    """End of input on one partition: the packet time of the replay's last packet."""

    partition: int
    partitions: int
    end_ts_ns: int
    # declared metric -> count: finish() adds to it, the engine counts it
    metrics: Counter[str] = field(default_factory=Counter)


class NetworkFunction(ABC):
    """Subclass this, set the class attributes, implement process()."""

    kind: ClassVar[str]  # registry name used in pipeline files, e.g. "firewall"
    ports: ClassVar[tuple[str, ...]] = ("pass", "drop")  # packet ports; "pass" continues the chain
    record_ports: ClassVar[tuple[str, ...]] = ()  # ports that carry JSON records, not packets
    # Every reason process() may give (snf.core.reasons: MALFORMED, numbered("rule"), ...).
    reasons: ClassVar[tuple[str, ...]] = ()
    # Counters beyond ports and reasons, e.g. "new" (flows picked); not "in" nor a port's.
    metrics: ClassVar[tuple[str, ...]] = ()
    tables: ClassVar[tuple[str, ...]] = ()  # state tables; names are part of the changelog names
    # Tables of reservations (ipsec's sequence-number blocks): a recovery never
    # undoes their writes, and over Kafka the worker sends a batch's outputs only
    # once its writes to them are acknowledged. See the module docstring.
    reserved_tables: ClassVar[tuple[str, ...]] = ()
    # True when process() reads bytes past the TCP/UDP header (content matching):
    # topics into it, and before it, then carry whole packets (snf.packet.heads).
    needs_payload: ClassVar[bool] = False
    # True when a rewrite may change a packet's length or payload (ipsec seals and
    # opens): everything after it then travels whole, since the ingress copy no
    # longer completes a head of its output.
    rewrites_payload: ClassVar[bool] = False
    Config: ClassVar[type[FunctionConfig]]
    # Partitioning of the input (see the module docstring). Instances may
    # override both in __init__ when the key depends on the config.
    key: KeyKind = "flow"
    key_flow_consistent: bool = True
    # The pipeline's partition count, set by the pipeline before the first
    # batch (PipelineFunction.create); a core that picks keys (the NAT's
    # public ports) uses it to land them on the right partition.
    partitions: int = 1
    # Packet time between sweeps (0: never swept); set from the config's
    # sweep_interval when it has one.
    sweep_interval_ns: int = 0

    def __init__(self, config: FunctionConfig) -> None:
        self.config = config
        if isinstance(config, BoundedStateConfig):
            self.sweep_interval_ns = round(config.sweep_interval * _NS)

    @abstractmethod
    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        """Decide every packet of `batch`. Must not raise on any packet content."""

    def key_hashes(self, batch: PacketBatch, headers: Headers) -> Sequence[int | None]:
        """64-bit partitioning hash per packet, when key == "custom".

        None means "no preference": the packet stays on the partition it is on
        (at ingress: its flow's partition). Non-first fragments should return
        None; the router sends them after their first fragment.
        """
        return headers.flow_hash

    def partition_problem(self, partitions: int) -> str | None:
        """Why this config cannot run on `partitions` partitions (None: it can)."""
        return None

    def finish(self, state: BatchState, ctx: FinishContext) -> dict[str, list[Record]]:
        """End of input on ctx.partition: emit what is still pending (records only)."""
        return {}

    def sweep(self, state: BatchState, ctx: SweepContext) -> dict[str, list[Record]]:
        """Remove what expired by ctx.now_ns on state.partition (module docstring)."""
        return {}

    def forget(self, partition: int) -> None:
        """Drop any in-memory structure derived from this partition's tables: the
        shell calls it when the partition's tables may have changed beneath the core
        (a new assignment, a recovery's undo). Rebuild lazily, from the tables."""
        return None  # a core without derived structures has nothing to drop


def triage(headers: Headers, *, drop_non_ip: bool = False) -> tuple[Decisions, Sequence[int]]:
    """The prelude of every core: decide the packets that carry no IP.

    Returns Decisions with every packet on "pass" (reason ""), except malformed
    packets, on "drop" with MALFORMED, and, with drop_non_ip, frames without
    IP, on "drop" with NON_IP; and the indices of the IP packets, which the
    core decides, setting only what differs:

        decisions, ip = triage(headers)
        for i in ip:
            ...
            decisions.ports[i], decisions.reasons[i] = "drop", reason
    """
    kind = headers.kind
    n = len(kind)
    ports = ["pass"] * n
    reasons = [""] * n
    if kind.count(KIND_IP) == n:
        return Decisions(ports, reasons), range(n)
    ip: list[int] = []
    for i, k in enumerate(kind):
        if k == KIND_IP:
            ip.append(i)
        elif k != KIND_NON_IP:
            ports[i], reasons[i] = "drop", MALFORMED
        elif drop_non_ip:
            ports[i], reasons[i] = "drop", NON_IP
    return Decisions(ports, reasons), ip
