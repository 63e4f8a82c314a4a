"""Admission: what of one input record a worker may trust, checked before anything runs.

A function's input topic can be written by anyone with access to it, so every
part of a record is checked here, in one place, and a record that fails any
check raises (DeadLetter, wire.WireError, LineageError) and is dead-lettered
by the Processor:

- the value decodes as a packet batch or an end marker (snf.wire bounds the
  control JSON: size, depth, finite integers in range);
- the lineage header is well formed and bounded (snf.guarantee.lineage), and
  names an origin that can write here: a partition of an upstream function,
  or, on the entry function only, a capture session; a capture batch's
  lineage is its highest packet seq, as the capture agent stamps it;
- with a control key (snf.guarantee.control_auth), lineage and end markers
  count only with a valid `snf-auth` tag: a forged watermark or end marker
  never drops or ends anything.
"""

from __future__ import annotations

from snf import wire
from snf.guarantee.lineage import CAPTURE_ORIGIN, Lineage, lineage_value, signed
from snf.packet.batch import PacketBatch
from snf.pipeline.model import Pipeline, PipelineFunction
from snf.runtime.worker.dead_letters import DeadLetter

__all__ = ["Admission", "Admitted"]

Admitted = tuple[Lineage | None, PacketBatch | wire.EndMarker]


class Admission:
    def __init__(self, fn: PipelineFunction, pipeline: Pipeline, key: bytes | None) -> None:
        self.fn = fn
        self.key = key
        ups = {name for name, _ in fn.inputs}
        self.upstream = {name: pipeline.function(name).partitions for name in ups}

    def admit(self, value: bytes | None, headers: object) -> Admitted:
        """The record's trusted lineage (None: none) and its decoded message."""
        message = wire.decode_any(value)  # type: ignore[arg-type]
        if isinstance(message, wire.RecordBlock):
            raise wire.WireError("a records message on a packet topic")
        raw = lineage_value(headers)  # type: ignore[arg-type]
        lineage = None if raw is None else Lineage.parse(raw)
        if self.key is not None:
            self._authenticate(raw is not None, value, headers, message)  # type: ignore[arg-type]
        if lineage is not None:
            self._check_origin(lineage, message)
        if isinstance(message, wire.EndMarker) and lineage is not None:
            if message.origin and message.origin != lineage.origin:
                raise DeadLetter(
                    "Untrusted", f"end marker of {message.origin!r} sent as {lineage.origin!r}"
                )
            # Counted under the origin that signed it, not the one it names.
            message = wire.EndMarker(
                message.end_id, message.end_ts_ns, message.expected, lineage.origin
            )
        return lineage, message

    def _authenticate(
        self, has_lineage: bool, value: bytes, headers: object, message: object
    ) -> None:
        if not has_lineage:
            if isinstance(message, wire.EndMarker):
                raise DeadLetter("Untrusted", "an end marker without lineage")
            return  # packets from a foreign producer: processed, never deduplicated
        if not signed(headers, value, self.key):  # type: ignore[arg-type]
            raise DeadLetter("Untrusted", "lineage without a valid snf-auth tag")

    def _check_origin(self, lineage: Lineage, message: PacketBatch | wire.EndMarker) -> None:
        origin = lineage.origin
        if origin.startswith(CAPTURE_ORIGIN):
            if not self.fn.entry:
                raise DeadLetter("Untrusted", f"capture lineage {origin!r} past the entry function")
            if isinstance(message, PacketBatch) and len(message):
                top = int(message.records["seq"].max())
                if top != lineage.offset:
                    raise DeadLetter(
                        "Untrusted", f"capture lineage at seq {lineage.offset}, batch up to {top}"
                    )
            return
        name, _, partition = origin.rpartition("/")
        if int(partition) >= self.upstream.get(name, 0):
            raise DeadLetter(
                "Untrusted", f"lineage origin {origin!r} is not upstream of {self.fn.name}"
            )
