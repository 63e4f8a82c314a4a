"""The contract of a network function core.

A core is a pure class: a batch of packets and its parsed headers in, one
output port (and a reason) per packet out, plus JSON records on record ports,
state through BatchState. It never imports Faust or Kafka; snf.runtime and
snf.runtime.local run the same core.

Partitioning (docs/ARCHITECTURE.md, "Partitioning across functions"): `key`
says what the core needs from the partitioning of its input.

    "any"     no per-key state: any partition will do (never re-split for it)
    "flow"    state per bidirectional flow: both directions of every flow
              must reach one partition (any flow-consistent key will do)
    "custom"  key_hashes() decides, packet by packet; `key_flow_consistent`
              says whether that key also keeps every flow together
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers

__all__ = ["Decisions", "FinishContext", "FunctionConfig", "KeyKind", "NetworkFunction", "Record"]

KeyKind = Literal["any", "flow", "custom"]
Record = dict[str, Any]  # one JSON object on a record port


class FunctionConfig(BaseModel, extra="forbid"):
    """Base of every function's config model: unknown fields are errors."""


@dataclass(slots=True)
class Decisions:
    """Where each packet of a batch goes, in batch order, plus records per record port."""

    ports: list[str] = field(default_factory=list)  # output port per packet
    reasons: list[str] = field(default_factory=list)  # "" or why (e.g. "rule:2", "malformed")
    replaced: dict[int, bytes] = field(default_factory=dict)  # rewritten packets by index
    # record port -> JSON objects. Each must be a deterministic function of the
    # packets (the sink deduplicates identical records after a replay) and carry
    # an integer "ts_ns" (packet time) by which outputs are ordered.
    records: dict[str, list[Record]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FinishContext:
    """End of input on one partition: the packet time of the replay's last packet."""

    partition: int
    partitions: int
    end_ts_ns: int


class NetworkFunction(ABC):
    """Subclass this, set the class attributes, implement process()."""

    kind: ClassVar[str]  # registry name used in pipeline files, e.g. "firewall"
    ports: ClassVar[tuple[str, ...]] = ("pass", "drop")  # packet ports; "pass" continues the chain
    record_ports: ClassVar[tuple[str, ...]] = ()  # ports that carry JSON records, not packets
    tables: ClassVar[tuple[str, ...]] = ()  # state tables; names are part of the changelog names
    Config: ClassVar[type[FunctionConfig]]
    # Partitioning of the input (see the module docstring). Instances may
    # override both in __init__ when the key depends on the config.
    key: KeyKind = "flow"
    key_flow_consistent: bool = True
    # The pipeline's partition count, set by the pipeline before the first
    # batch (PipelineFunction.create); a core that picks keys (the NAT's
    # public ports) uses it to land them on the right partition.
    partitions: int = 1

    def __init__(self, config: FunctionConfig) -> None:
        self.config = config

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
