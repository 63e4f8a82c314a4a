"""Outputs: one event's output messages, each stamped with its lineage.

Packets go to every destination of their port (snf.pipeline.routing.deliveries:
another function through its StageRouter, a terminal topic on the event's
partition), records to every topic of their record port. At the end of input a
partition sends its records, an end block on every record destination, and
the end marker on to every packet destination, after its last batch there.
Packets bound where no reader needs their payload go as heads (Route.heads).
Every message carries the lineage (origin, input offset, index) by which the
next stage and the sink skip what a redo sends again (snf.guarantee.lineage),
and, with a control key, its `snf-auth` tag (snf.guarantee.control_auth).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from snf import wire
from snf.core.engine import StageOutput
from snf.guarantee.lineage import Lineage
from snf.packet.batch import PacketBatch
from snf.packet.heads import cut_heads
from snf.pipeline.model import PipelineFunction
from snf.pipeline.routing import PipelinePlan, deliveries

__all__ = ["Outputs", "Send"]

# send(topic, value, partition, headers) -> a future that resolves once Kafka acknowledged it
Send = Callable[[str, bytes, int, list[tuple[str, bytes]]], Awaitable[asyncio.Future]]


class _Event:
    """The outputs of one input event: numbered in order, their acks collected."""

    def __init__(self, send: Send, origin: str, offset: int, key: bytes | None) -> None:
        self._send = send
        self.origin = origin
        self.offset = offset
        self.key = key
        self.futures: list[asyncio.Future] = []

    async def send(self, topic: str, value: bytes, partition: int) -> None:
        headers = Lineage(self.origin, self.offset, len(self.futures)).headers(value, self.key)
        self.futures.append(await self._send(topic, value, partition, headers))


class Outputs:
    """Sends what the engine made of one input event, for one function."""

    def __init__(
        self, fn: PipelineFunction, plan: PipelinePlan, send: Send, key: bytes | None = None
    ) -> None:
        self.fn = fn
        self.key = key  # the control key (snf.guarantee.control_auth): outputs are signed
        self.plan = plan
        self.routers = plan.routers(fn.name)
        self._send = send

    async def packets(
        self, out: StageOutput, partition: int, offset: int
    ) -> tuple[int, Sequence[asyncio.Future]]:
        """Send a batch's outputs; return the packets sent and the send futures."""
        event = _Event(self._send, f"{self.fn.name}/{partition}", offset, self.key)
        sent = 0
        # A batch fanned out to several topics is cut once; holding it keeps its id unique.
        heads: dict[int, tuple[PacketBatch, PacketBatch]] = {}
        for _port, route, p, batch in deliveries(out, partition, self.fn, self.routers):
            assert route.topic is not None  # deliveries never yields a discarded port
            if route.heads:  # no reader downstream needs the payload (snf.packet.heads)
                held = heads.get(id(batch))
                if held is None:
                    held = heads[id(batch)] = (batch, cut_heads(batch))
                batch = held[1]
            await event.send(route.topic, wire.encode(batch), p)
            sent += len(batch)
        if out.records:
            await self._records(event, out, partition)
        return sent, event.futures

    async def end(
        self, marker: wire.EndMarker, out: StageOutput, partition: int, offset: int
    ) -> Sequence[asyncio.Future]:
        """A finished partition's records and end blocks, then its end markers."""
        origin = f"{self.fn.name}/{partition}"
        event = _Event(self._send, origin, offset, self.key)
        await self._records(event, out, partition, end=marker.end_id)
        passed_on = wire.encode_end_marker(
            wire.EndMarker(marker.end_id, marker.end_ts_ns, 1, origin)
        )
        for topic, targets in self.plan.marker_targets(self.fn.name, partition):
            for p in targets:
                await event.send(topic, passed_on, p)
        return event.futures

    async def _records(
        self, event: _Event, out: StageOutput, partition: int, end: str = ""
    ) -> None:
        # At the end of input every record port sends an end block, even an empty one.
        ports = self.fn.cls.record_ports if end else out.records
        origin = event.origin if end else ""
        for port in ports:
            for route in self.fn.routes[port]:
                if route.topic is None:
                    continue
                blocks = wire.encode_record_blocks(
                    out.records.get(port, []), end=end, origin=origin
                )
                for message in blocks:
                    await event.send(route.topic, message, partition % route.partitions)
