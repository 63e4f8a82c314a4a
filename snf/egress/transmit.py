"""Interfaces: the sink's egress packets sent out of network interfaces (live mode).

One interface takes every egress packet. Two arms (the pipeline's
`egress.inline: [A, B]`) make snf a bump in the wire: a packet goes out of
the arm it did not come in by, read from its source id (snf.live.arms:
the capturing arm is in its low 8 bits). A packet from any other source
(a replayed file, an agent capturing elsewhere) has no arm to leave by and
is counted `unrouted`, not guessed.

Frames leave in the order the sink writes them: a flow's packets in order
(snf.egress.stream), each direction out of its own arm. The time from
capture to transmit is kept per packet (snf.egress.latency).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from snf.egress.latency import LatencyHistogram
from snf.live.arms import ARM_MASK
from snf.live.transmit import Transmitter

__all__ = ["Interfaces"]


class Interfaces:
    def __init__(self, interface: str | None = None, inline: Sequence[str] | None = None) -> None:
        if (interface is None) == (inline is None):
            raise ValueError("one of interface or inline")
        names = [interface] if interface is not None else list(inline or ())
        self.transmitters = {name: Transmitter(name) for name in names}
        # arm index (where a packet came in) -> the transmitter it leaves by
        self.by_arm = (
            {0: self.transmitters[names[1]], 1: self.transmitters[names[0]]}
            if inline is not None
            else {}
        )
        self.single = self.transmitters[names[0]] if interface is not None else None
        self.unrouted = 0
        self.latency = LatencyHistogram()

    @classmethod
    def of(cls, egress: Any, interface: str | None) -> Interfaces | None:
        """From `snf sink --interface` or else the pipeline's `egress` (an EgressSpec)."""
        if interface is not None:
            return cls(interface=interface)
        if egress is None:
            return None
        return cls(interface=egress.interface, inline=egress.inline)

    def send(self, frames: Sequence[bytes], sources: np.ndarray, ts_ns: np.ndarray) -> None:
        self.latency.add(ts_ns)  # capture to (just before) transmit
        if self.single is not None:
            self.single.send(frames)
            return
        arms = np.asarray(sources, dtype=np.uint64) & np.uint64(ARM_MASK)
        for arm, out in self.by_arm.items():
            picked = np.flatnonzero(arms == arm)
            if len(picked) == len(frames):
                out.send(frames)
            elif len(picked):
                out.send([frames[i] for i in picked])
        self.unrouted += int(np.count_nonzero(arms > 1))

    def counts(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: {"sent": t.sent, "failed": t.failed, "too_big": t.too_big}
            for name, t in self.transmitters.items()
        }
        if self.by_arm:
            out["unrouted"] = self.unrouted
        out["latency"] = self.latency.summary()
        return out

    def close(self) -> None:
        for t in self.transmitters.values():
            t.close()
