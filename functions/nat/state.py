"""What the NAT derives from its tables and keeps across batches (a helper of
snf.functions.nat).

Per partition: the PortSets of `bind` and `rev` (portsets.py: free ports,
expiry order, embryonic bindings) and an ExpiryIndex of `frag`
(snf.core.expiry). Both are functions of the table contents, built on the
partition's first need and dropped by forget(), so sweeps and port choices
come out the same whether they grew with the stream or were rebuilt after a
takeover (snf.core.contract, "Bounded state").
"""

from __future__ import annotations

from typing import Any

from snf.core.contract import SweepContext
from snf.core.expiry import ExpiryIndex, PartitionIndexes
from snf.core.tables import BatchState, TableView
from snf.packet.fragments import FRAG_TTL_NS

from .bindings import Bindings
from .config import CompiledNat
from .ports import EndpointHasher
from .portsets import PortSets

__all__ = ["Derived", "FragView"]


def _frag_due(key: bytes, value: Any) -> tuple[int, bool]:
    """A frag entry counts as absent from its first fragment's time + the TTL + 1."""
    return value[0] + FRAG_TTL_NS + 1, False


class FragView:
    """The `frag` table of one batch, keeping its partition's ExpiryIndex in step."""

    __slots__ = ("due", "view")

    def __init__(self, view: TableView, due: ExpiryIndex) -> None:
        self.view = view
        self.due = due

    def get(self, key: bytes) -> Any | None:
        return self.view.get(key)

    def set(self, key: bytes, value: list[Any]) -> None:
        self.view.set(key, value)
        self.due.set(key, _frag_due(key, value)[0])

    def delete(self, key: bytes) -> None:
        self.view.delete(key)
        self.due.discard(key)


class Derived:
    """The derived structures of every partition a core serves."""

    def __init__(self, c: CompiledNat, ep: EndpointHasher, max_entries: int) -> None:
        self.c = c
        self.ep = ep
        self.max_entries = max_entries
        self.ports: dict[int, PortSets] = {}
        self.frag_due = PartitionIndexes("frag", _frag_due)

    def forget(self, partition: int) -> None:
        self.ports.pop(partition, None)
        self.frag_due.forget(partition)

    def bindings(self, state: BatchState, partitions: int) -> Bindings:
        return Bindings(
            self.c,
            state.table("bind"),
            state.table("rev"),
            partitions,
            self.ep,
            self.ports,
            state.partition,
            self.max_entries,
        )

    def frag(self, state: BatchState) -> FragView:
        return FragView(state.table("frag"), self.frag_due.of(state))

    def sweep(self, state: BatchState, ctx: SweepContext, partitions: int) -> None:
        """Delete the bindings (bind and rev) and frag entries expired by ctx.now_ns,
        at most ctx.limit of each, earliest first."""
        self.bindings(state, partitions).sweep(ctx.now_ns, ctx.limit)
        frag = self.frag(state)
        for key in frag.due.expired(ctx.now_ns, ctx.limit):
            frag.delete(key)
