"""Arms: which interface a live packet came in by, carried in its source id.

The low 8 bits of a live source id are the capturing interface's index in
the pipeline's `egress.inline` (NO_ARM for any other interface); the bits
above are random per run, so a restarted capture agent never reuses a packet
id. The capture agent writes it (snf.ingress.live), the sink reads it to send
a packet out of the other arm (snf.egress.transmit).
"""

from __future__ import annotations

import secrets

__all__ = ["ARM_MASK", "NO_ARM", "arm_of", "live_source_id"]

ARM_MASK = 0xFF
NO_ARM = 0xFF  # an interface that is not one of `egress.inline`


def live_source_id(arm: int, nonce: int | None = None) -> int:
    """A 63-bit source id: a random nonce above, the arm in the low 8 bits."""
    nonce = secrets.randbits(55) if nonce is None else nonce
    return (nonce << 8) | (arm & ARM_MASK)


def arm_of(source_id: int) -> int:
    return source_id & ARM_MASK
