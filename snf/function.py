"""The contract of a network function core.

A core is a pure class: a batch of packets and its parsed headers in, one
output port (and a reason) per packet out, state through BatchState. It never
imports Faust or Kafka; snf.runtime and snf.local run the same core.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import BaseModel

from snf.batch import PacketBatch
from snf.headers import Headers
from snf.state import BatchState

__all__ = ["FunctionConfig", "NetworkFunction", "Verdicts"]


class FunctionConfig(BaseModel, extra="forbid"):
    """Base of every function's config model: unknown fields are errors."""


@dataclass(slots=True)
class Verdicts:
    """Where each packet of a batch goes, in batch order."""

    ports: list[str] = field(default_factory=list)  # output port per packet
    reasons: list[str] = field(default_factory=list)  # "" or why (e.g. "rule:2", "malformed")
    replaced: dict[int, bytes] = field(default_factory=dict)  # rewritten packets by index


class NetworkFunction(ABC):
    """Subclass this, set the class attributes, implement process()."""

    kind: ClassVar[str]  # registry name used in pipeline files, e.g. "firewall"
    ports: ClassVar[tuple[str, ...]] = ("pass", "drop")  # "pass" continues the chain
    key: ClassVar[str] = "flow"  # how the input must be partitioned
    tables: ClassVar[tuple[str, ...]] = ()  # state tables; names are part of the changelog names
    Config: ClassVar[type[FunctionConfig]]

    def __init__(self, config: FunctionConfig) -> None:
        self.config = config

    @abstractmethod
    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Verdicts:
        """Decide every packet of `batch`. Must not raise on any packet content."""
