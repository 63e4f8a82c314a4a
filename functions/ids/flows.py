"""Per-flow state of the IDS (a helper of snf.functions.ids): who the client is,
whether the flow is established, and its flowbits.

One entry per flow in the function's `flow` table, keyed by the canonical
bidirectional flow key (Headers.flow), so it lives in the changelog like every
other state and a takeover finds it. The value is a JSON list:

    [last_ns, client_direction, state, bits, directions_seen, streams, ints]

- client_direction: the Headers.direction of the client's packets (the sender
  of the first SYN, or of the flow's first packet).
- state (TCP): SYN_SENT, SYN_RECV, ESTABLISHED, CLOSED after a RST, or
  UNTRACKED for a flow picked up without its handshake (unless `midstream`,
  which treats it as established, as Suricata's stream.midstream does).
  Other protocols are established once both directions have been seen.
- bits: the flow's flowbits, sorted.
- ints: the flow's flowints, {name: value}.
- streams: per direction (to server, to client) None or [next sequence
  number, the last bytes of in-order payload] (stream.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from snf.core.expiry import ExpiryIndex
from snf.core.tables import TableView
from snf.packet.headers import Headers

from .flow_keywords import FlowVars

__all__ = ["FlowInfo", "FlowTimeouts", "FlowView", "due_of", "track"]

SYN_SENT, SYN_RECV, ESTABLISHED, CLOSED, UNTRACKED = range(5)
_SYN, _RST, _ACK = 0x02, 0x04, 0x10
_NS = 1_000_000_000


class FlowInfo(NamedTuple):
    to_server: bool
    established: bool


class FlowTimeouts(NamedTuple):
    """Seconds of packet time without a packet before a flow is forgotten
    (Suricata's flow-timeouts: new, established, closed)."""

    new: int = 60
    established: int = 600
    closed: int = 60


def _established(proto: int, state: int, seen: int) -> bool:
    return state == ESTABLISHED if proto == 6 else seen == 3


def track(
    entry: list[Any] | None, now: int, direction: int, proto: int, flags: int, midstream: bool
) -> tuple[list[Any], FlowInfo]:
    """The flow's entry after this packet, and what the packet's rules see of it.

    `entry` is not changed (a table value may be shared with the cache)."""
    if entry is None:
        if proto != 6:
            state = SYN_SENT  # unused for other protocols
        elif flags & (_SYN | _ACK) == _SYN:
            state = SYN_SENT
        else:
            state = ESTABLISHED if midstream else UNTRACKED
        entry = [now, direction, state, [], 0, [None, None], {}]
    last, client, state, bits, seen, streams, ints = entry
    seen |= 1 << direction
    to_server = direction == client
    if proto == 6:
        state = _tcp_state(state, to_server, flags)
    new = [max(last, now), client, state, bits, seen, list(streams), ints]
    return new, FlowInfo(to_server, _established(proto, state, seen))


def _tcp_state(state: int, to_server: bool, flags: int) -> int:
    if flags & _RST and state != UNTRACKED:
        return CLOSED
    if state == SYN_SENT and not to_server and flags & (_SYN | _ACK) == _SYN | _ACK:
        return SYN_RECV
    if state == SYN_RECV and to_server and flags & (_SYN | _ACK) == _ACK:
        return ESTABLISHED
    return state


def due_of(timeouts: FlowTimeouts) -> Any:
    """The ExpiryIndex due function of flow entries: last packet + the timeout of
    its state. The key's second byte is the IP protocol (Headers.flow)."""
    new, est, closed = (t * _NS for t in timeouts)

    def due(key: bytes, value: list[Any]) -> tuple[int, bool]:
        last, state, seen = value[0], value[2], value[4]
        established = _established(key[1] if len(key) > 1 else 0, state, seen)
        timeout = closed if state == CLOSED else est if established else new
        return last + timeout + 1, not established  # not established: evicted first

    return due


class FlowView:
    """A batch's view of the partition's flows: tracked per packet, kept once each."""

    def __init__(
        self, view: TableView, due: ExpiryIndex, due_of: Any, midstream: bool, max_flows: int
    ) -> None:
        self.view, self.due, self.due_of = view, due, due_of
        self.midstream, self.max_flows = midstream, max_flows
        self.evicted = 0

    def track(self, h: Headers, i: int, now: int) -> tuple[list[Any], FlowInfo]:
        """Packet i's flow entry after it, and what its rules see of the flow."""
        key = h.flow[i]
        entry = self.view.get(key)
        if entry is not None and now >= self.due_of(key, entry)[0]:
            entry = None  # expired: the lazy path sees a new flow
        return track(entry, now, h.direction[i], h.proto[i], h.tcp_flags[i], self.midstream)

    def keep(self, key: bytes, entry: list[Any], flowvars: FlowVars) -> None:
        """Write the flow's entry (with its variables); a full table evicts first."""
        entry[3], entry[6] = sorted(flowvars.bits), dict(sorted(flowvars.ints.items()))
        if self.view.get(key) is None and len(self.due) >= self.max_flows:
            victim = self.due.victim()  # full: not established first, then the oldest
            if victim is not None:
                self.view.delete(victim)
                self.due.discard(victim)
                self.evicted += 1
        self.view.set(key, entry)
        self.due.set(key, *self.due_of(key, entry))
