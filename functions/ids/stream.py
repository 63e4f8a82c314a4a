"""TCP stream matching for the IDS (a helper of snf.functions.ids): contents
split across segments.

Per flow and direction the function keeps, in the flow's entry, the next
expected sequence number and the last `stream_window` bytes of in-order
payload (the carry). An in-order segment is inspected twice: its payload
alone, as every packet is, and the carry followed by its payload. A rule
that matches the joined buffer but neither the payload nor the carry alone
matched across the segment boundary, so it fires once, on the segment that
completes it. Out-of-order segments, retransmissions and gaps are not joined
(a gap restarts the carry). The carry is state like the rest of the flow, so
`--local`, Kafka and a takeover join the same bytes.

Only rules whose payload keywords are all relative (contents without offset,
depth or startswith; pcre with /R; relative isdataat and byte_*) take part:
absolute positions in a joined buffer would not be stream positions.
"""

from __future__ import annotations

import base64
from typing import Any

from .payload import PayloadProgram
from .payload_steps import (
    ByteExtractStep,
    ByteJumpStep,
    ByteMathStep,
    ByteTestStep,
    ContentStep,
    IsdataatStep,
    PcreStep,
)

__all__ = ["joinable", "stream_sizes", "stream_step"]

_SYN, _FIN, _RST = 0x02, 0x01, 0x04
_MOD = 1 << 32
_HALF = 1 << 31


def joinable(program: PayloadProgram | None) -> bool:
    """Whether a rule's payload part means the same on a joined buffer."""
    if program is None or not program.steps or program.dsize is not None:
        return False
    for step in program.steps:
        if isinstance(step, ContentStep):
            if step.offset is not None or step.depth is not None:
                return False
        elif isinstance(step, PcreStep | IsdataatStep):
            if not step.relative:
                return False
        elif isinstance(step, ByteTestStep | ByteJumpStep | ByteExtractStep | ByteMathStep):
            if not step.read.relative:
                return False
        else:
            return False  # bsize: the length of a joined buffer is no stream length
    return True


def stream_step(
    entry: list[Any], side: int, seq: int, flags: int, payload: bytes, window: int
) -> bytes | None:
    """Advance one direction's stream state (entry[5][side]: [next sequence number,
    carry, ISN]) past this segment; return the carry to join in front of its payload:
    b"" when the stream starts with this segment (its first, or after a gap), None when
    the segment is no new stream data (a retransmission, no payload, no window).
    `window` 0 keeps no carry (stream_size alone)."""
    streams = entry[5]
    if flags & _RST:
        streams[side] = None
        return None
    state = streams[side]
    n = len(payload)
    after = (seq + n + (1 if flags & (_SYN | _FIN) else 0)) % _MOD
    if state is None or flags & _SYN:
        isn = seq if flags & _SYN else (seq - 1) % _MOD  # picked up midstream: as Suricata
        streams[side] = [after, _encode(payload[-window:] if n and window else b""), isn]
        return b"" if n and window else None
    expected, carry_text, isn = state
    ahead = (seq - expected) % _MOD
    if ahead >= _HALF:  # before what we have: a retransmission or an overlap
        return None
    if ahead:  # a gap: the bytes between are missing, start again here
        streams[side] = [after, _encode(payload[-window:] if window else b""), isn]
        return b"" if n and window else None
    if not n or not window:
        streams[side] = [after, carry_text, isn]
        return None
    carry = _decode(carry_text)
    streams[side] = [after, _encode((carry + payload)[-window:]), isn]
    return carry


def stream_sizes(entry: list[Any]) -> tuple[int, int]:
    """(client, server): the bytes each side sent by its sequence numbers (next - ISN,
    the SYN included), as Suricata's stream_size counts them; 0 for a side not seen."""
    return tuple(  # type: ignore[return-value]
        0 if state is None else (state[0] - state[2]) % _MOD for state in entry[5]
    )


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")  # tables hold JSON


def _decode(text: str) -> bytes:
    return base64.b64decode(text)
