"""Partitioning across functions: how packets enter each stage of a chain.

Each function declares what its state needs (NetworkFunction.key): "any",
"flow" (both directions of a flow on one partition) or "custom" (its own
key_hashes). `plan()` turns a chain into one Hop per stage:

    keep   the packets are already where the stage needs them: the batch
           goes to the same partition number, unsplit
    flow   route by the bidirectional flow hash
    key    route by functions' key_hashes: the stage's own key and, ahead of
           it, the custom keys that every stage up to them accepts (a packet
           follows the first of them that has a preference for it)

So a chain such as firewall -> nat is partitioned at ingress by the NAT's
key (flow-consistent, so the firewall is served too) and the batches pass
from the firewall to the NAT without a split. A StageRouter applies a hop to
an output batch: it splits the batch only when some packet must move.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from snf.batch import PacketBatch
from snf.engine import StageOutput
from snf.flowkey import FlowRouter
from snf.function import NetworkFunction
from snf.headers import Headers
from snf.parse import parse_packet_batch
from snf.pipeline import Pipeline

__all__ = [
    "Hop",
    "StageRouter",
    "chain",
    "deliveries",
    "flush_expected",
    "key_hashes",
    "plan",
    "stage_router",
]


@dataclass(frozen=True)
class Hop:
    mode: Literal["keep", "flow", "key"]
    # "key": the functions whose key_hashes route, in chain order: a packet goes
    # by the first one that has a preference for it. "keep": the keys the
    # packets already follow (empty: the flow hash).
    keyers: tuple[NetworkFunction, ...] = ()
    indices: tuple[int, ...] = ()  # the keyers' positions in the chain

    def describe(self, names: Sequence[str]) -> str:
        if self.mode == "key":
            return "partitioned by the key of " + ", then ".join(names[i] for i in self.indices)
        return "keeps its partition (no re-split)" if self.mode == "keep" else "partitioned by flow"


def _composite(functions: Sequence[NetworkFunction], j: int) -> list[int]:
    """Custom keys, from stage j on, that can partition stage j's input together.

    Flow-consistent keys combine: packets one function has no preference for
    follow the next one's (the NAT does not care where a VIP's traffic goes,
    the load balancer does), so one partitioning serves them all and the
    batches need not be split between them. A key that splits flows (ratelimit
    by src) serves only itself and "any" stages before it.
    """
    keyers: list[int] = []
    only_any = True
    for k in range(j, len(functions)):
        g = functions[k]
        if g.key == "custom":
            if g.key_flow_consistent:
                keyers.append(k)
                continue
            if not keyers and only_any:
                return [k]
            break
        if g.key == "flow":
            only_any = False
    return keyers


def plan(functions: Sequence[NetworkFunction]) -> list[Hop]:
    """One Hop per stage; hops[0] is how the capture agent partitions ingress."""
    hops: list[Hop] = []
    flow_consistent: bool | None = None  # None: nothing partitioned yet (ingress)
    for j, f in enumerate(functions):
        if (
            f.key != "custom"
            and flow_consistent is not None
            and (f.key == "any" or flow_consistent)
        ):
            # Carry the keys the packets are partitioned by, for the next hop's check.
            hops.append(Hop("keep", hops[-1].keyers, hops[-1].indices))
            continue
        ks = _composite(functions, j)
        if ks:
            keyers = tuple(functions[k] for k in ks)
            hops.append(Hop("key", keyers, tuple(ks)))
            flow_consistent = all(g.key_flow_consistent for g in keyers)
        else:
            hops.append(Hop("flow"))
            flow_consistent = True
    return hops


class StageRouter:
    """Applies one hop to the batches a stage's upstream emits."""

    def __init__(self, hop: Hop, partitions: int, previous: Hop | None = None) -> None:
        self.hop = hop
        self.partitions = partitions
        # Same key as the hop before and nothing rewritten since: packets are in place.
        self.same_as_previous = (
            previous is not None
            and hop.mode == "key"
            and previous.mode != "flow"
            and previous.indices == hop.indices
        )
        self.router = FlowRouter()
        self.split_batches = 0

    def route(
        self, batch: PacketBatch, partition: int, rewritten: bool = True
    ) -> list[tuple[int, PacketBatch]]:
        """(partition, batch) pairs: the batch whole when it may stay, else its parts."""
        hop = self.hop
        if hop.mode == "keep" or (self.same_as_previous and not rewritten) or not len(batch):
            return [(partition, batch)]
        headers = parse_packet_batch(batch)
        hashes = key_hashes(hop.keyers, batch, headers) if hop.mode == "key" else None
        parts = self.router.route(
            headers, batch.records["ts_ns"], self.partitions, hashes, partition
        )
        if all(p == partition for p in parts):
            return [(partition, batch)]
        self.split_batches += 1
        by_part: dict[int, list[int]] = {}
        for i, p in enumerate(parts):
            by_part.setdefault(p, []).append(i)
        return [(p, batch.select(idx)) for p, idx in sorted(by_part.items())]


def deliveries(
    out: StageOutput, partition: int, router: StageRouter | None
) -> Iterator[tuple[str, int, PacketBatch]]:
    """(port, partition, batch) for each packet output of a stage, in both shells:
    `pass` through the stage's router (when a stage follows), every other port on
    the event's partition."""
    for port, batch in out.packets.items():
        if port == "pass" and router is not None:
            for p, part in router.route(batch, partition, out.rewritten):
                yield port, p, part
        else:
            yield port, partition, batch


def key_hashes(
    keyers: Sequence[NetworkFunction], batch: PacketBatch, headers: Headers
) -> list[int | None]:
    """Per packet, the first keyer's hash that is not None (None when none cares)."""
    merged = list(keyers[0].key_hashes(batch, headers))
    for g in keyers[1:]:
        if None not in merged:
            break
        merged = [
            h if h is not None else o
            for h, o in zip(merged, g.key_hashes(batch, headers), strict=True)
        ]
    return merged


def chain(pipeline: Pipeline) -> tuple[list[NetworkFunction], list[Hop]]:
    """The pipeline's function cores (one instance each) and their hops."""
    functions = [pf.create(pipeline.partitions) for pf in pipeline.functions]
    return functions, plan(functions)


def stage_router(hops: Sequence[Hop], stage: int, partitions: int) -> StageRouter | None:
    """The router for the `pass` output of `stage` (None for the last stage)."""
    if stage + 1 >= len(hops):
        return None
    return StageRouter(hops[stage + 1], partitions, hops[stage])


def flush_expected(hop: Hop, partitions: int) -> int:
    """Markers a partition of the stage behind `hop` receives per flush."""
    return 1 if hop.mode == "keep" else partitions
