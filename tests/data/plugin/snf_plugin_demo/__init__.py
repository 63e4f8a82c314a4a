"""A third-party snf function, registered through the `snf.functions` entry point.

Summary
    Passes every packet; with `drop_udp` set, drops UDP packets (IPv4 or
    IPv6) with reason "udp".

Ports
    pass    everything else, unchanged
    drop    UDP packets when drop_udp is set; reason "udp"

Config (TaggerConfig)
    drop_udp  bool, default false

State
    none (key "any": any partition will do)

Metrics
    the engine's counters: "in", "pass", "drop:udp" (the tagger keeps none)

Example
    - {name: tag, function: tagger, config: {drop_udp: true}}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from snf.core.contract import Decisions, FunctionConfig, KeyKind, NetworkFunction
from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch
from snf.packet.headers import KIND_IP, Headers

__all__ = ["Tagger", "TaggerConfig"]

UDP = 17


class TaggerConfig(FunctionConfig):  # extra="forbid": unknown keys are errors
    drop_udp: bool = Field(default=False, description="Drop UDP packets (reason udp).")


class Tagger(NetworkFunction):
    kind: ClassVar[str] = "tagger"
    ports: ClassVar[tuple[str, ...]] = ("pass", "drop")
    reasons: ClassVar[tuple[str, ...]] = ("udp",)  # every reason process() may give
    key: KeyKind = "any"  # no per-key state: any partition will do
    Config: ClassVar[type[FunctionConfig]] = TaggerConfig

    def __init__(self, config: TaggerConfig) -> None:
        super().__init__(config)
        self.drop_udp = config.drop_udp

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        on = self.drop_udp
        udp = [
            on and k == KIND_IP and p == UDP
            for k, p in zip(headers.kind, headers.proto, strict=True)
        ]
        return Decisions(
            ports=["drop" if u else "pass" for u in udp],
            reasons=["udp" if u else "" for u in udp],
        )
