"""The inbound anti-replay window of one SA (RFC 4303 §3.4.3 and Appendix A).

`top` is the highest sequence number authenticated so far (0: none yet), and
bit i of `bits` says that `top - i` was received. A packet is checked before
its ICV (cheap rejection), and the window moves only after the ICV matched,
so a forged packet cannot move it. With extended sequence numbers only the
low 32 bits travel; `infer` recovers the high half from the window
(Appendix A2.2). A whole window is one table value, written once per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NEW", "OUTSIDE", "REPLAY", "ReplayWindow"]

NEW, REPLAY, OUTSIDE = "new", "replay", "outside_window"
_LOW = 1 << 32


@dataclass(slots=True)
class ReplayWindow:
    size: int  # W, in packets
    top: int = 0  # T: the highest authenticated sequence number (64-bit with ESN)
    bits: int = 0  # bit i: T - i was received

    @classmethod
    def load(cls, size: int, value: list[int | str] | None) -> ReplayWindow:
        """From a table value [top, bits as hex] (None: a fresh SA)."""
        if value is None:
            return cls(size)
        return cls(size, int(value[0]), int(str(value[1]), 16))

    def dump(self) -> list[int | str]:
        return [self.top, format(self.bits, "x")]

    def infer(self, low: int) -> int:
        """The full sequence number of a packet whose wire value is `low` (ESN)."""
        top, size = self.top, self.size
        th, tl = top >> 32, top & (_LOW - 1)
        if tl >= size - 1:  # case A: the window is within one 2^32 epoch
            hi = th if low >= tl - size + 1 else th + 1
        else:  # case B: the window straddles the start of this epoch
            hi = th - 1 if low >= (tl - size + 1) % _LOW else th
        return max(hi, 0) << 32 | low

    def check(self, seq: int) -> str:
        """NEW, REPLAY or OUTSIDE (too old, or 0, which no sender uses)."""
        if seq > self.top:
            return NEW
        if seq == 0 or seq + self.size <= self.top:
            return OUTSIDE
        return REPLAY if self.bits >> (self.top - seq) & 1 else NEW

    def accept(self, seq: int) -> None:
        """Mark `seq` received (after its ICV matched and check() said NEW)."""
        if seq > self.top:
            shift = seq - self.top
            self.bits = (
                ((self.bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            )
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)
