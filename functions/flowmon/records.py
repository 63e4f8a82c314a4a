"""Flow records of the flow monitor: state entry + flow key -> IPFIX-named JSON.

A helper of snf.functions.flowmon. A state entry is the list

    [start_ns, last_ns, initiator, fwd_pkts, fwd_octets, rev_pkts, rev_octets,
     tcp_flags, fin_bits]

where `initiator` is the Headers.direction of the flow's first packet (0: the
flow key's low end sent it, 1: the high end). The flow key layout is
snf.packet.flowkey's: version:u8 proto:u8 lo_addr hi_addr lo_port:u16 hi_port:u16.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ACTIVE",
    "END",
    "END_REASONS",
    "FORCED",
    "IDLE",
    "LACK",
    "flow_record",
    "format_address",
    "new_entry",
]

# flowEndReason (IANA IPFIX registry, element 136): the descriptions of values 1..4.
IDLE = "idle timeout"
ACTIVE = "active timeout"
END = "end of flow detected"
FORCED = "forced end"
LACK = "lack of resources"  # value 5: evicted from a full table (max_entries)
END_REASONS = (IDLE, ACTIVE, END, FORCED, LACK)

# Indices into a state entry. An entry that counts no packet is what a sweep's
# active timeout leaves: the initiator and FINs for the flow's next record.
START, LAST, INIT, FWD_PKTS, FWD_OCTETS, REV_PKTS, REV_OCTETS, FLAGS, FINS = range(9)


def new_entry(ts: int, initiator: int, fin_bits: int = 0) -> list[int]:
    """A fresh entry: no packets counted yet."""
    return [ts, ts, initiator, 0, 0, 0, 0, 0, fin_bits]


def format_address(addr: bytes) -> str:
    """Dotted quad for 4 bytes; RFC 5952 text for 16 (lowercase, longest zero run as ::).

    Written out rather than socket.inet_ntop, whose output for some IPv6
    addresses (IPv4-mapped, IPv4-compatible) differs between C libraries:
    records must be the same bytes on every machine.
    """
    if len(addr) == 4:
        return "%d.%d.%d.%d" % tuple(addr)  # noqa: UP031 - fastest for four ints
    groups = [addr[i] << 8 | addr[i + 1] for i in range(0, 16, 2)]
    best_at, best_len, run_at, run_len = -1, 0, -1, 0
    for i, g in enumerate(groups):
        if g == 0:
            if run_len == 0:
                run_at = i
            run_len += 1
            if run_len > best_len:
                best_at, best_len = run_at, run_len
        else:
            run_len = 0
    text = [format(g, "x") for g in groups]
    if best_len < 2:  # a single zero group stays "0" (RFC 5952 4.2.2)
        return ":".join(text)
    head = ":".join(text[:best_at])
    tail = ":".join(text[best_at + best_len :])
    return f"{head}::{tail}"


def flow_record(key: bytes, entry: list[int], reason: str) -> dict[str, Any]:
    """The JSON record of one flow, oriented from its initiator (forward direction)."""
    width = 4 if key[0] == 4 else 16
    lo = key[2 : 2 + width]
    hi = key[2 + width : 2 + 2 * width]
    ports = key[2 + 2 * width :]
    lo_port = ports[0] << 8 | ports[1]
    hi_port = ports[2] << 8 | ports[3]
    if entry[INIT] == 0:
        src, dst, sport, dport = lo, hi, lo_port, hi_port
    else:
        src, dst, sport, dport = hi, lo, hi_port, lo_port
    family = "IPv4" if width == 4 else "IPv6"
    return {
        f"source{family}Address": format_address(src),
        f"destination{family}Address": format_address(dst),
        "sourceTransportPort": sport,
        "destinationTransportPort": dport,
        "protocolIdentifier": key[1],
        "flowStartNanoseconds": entry[START],
        "flowEndNanoseconds": entry[LAST],
        "packetDeltaCount": entry[FWD_PKTS],
        "octetDeltaCount": entry[FWD_OCTETS],
        "reversePacketDeltaCount": entry[REV_PKTS],
        "reverseOctetDeltaCount": entry[REV_OCTETS],
        "tcpControlBits": entry[FLAGS],
        "flowEndReason": reason,
        "ts_ns": entry[LAST],
    }
