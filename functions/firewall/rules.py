"""Firewall rule parsing, compilation and matching (a helper of snf.functions.firewall).

Rules are validated once by the config model and compiled once, when the
firewall is built, into tuples of plain ints. Matching then needs no
ipaddress objects and no string work: it runs only for packets without a
live connection entry, but a flood of new flows still goes through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from snf.core.cidr import Net, parse_cidrs

__all__ = [
    "PORT_PROTOS",
    "PROTO_NAMES",
    "CompiledRule",
    "compile_rule",
    "match_rules",
    "parse_ports",
    "parse_proto",
]

# Rule proto names; "any" (like a missing proto) matches every protocol.
PROTO_NAMES: dict[str, int] = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}

# Protocols whose headers carry source and destination ports. A rule with
# sport/dport only matches these (ICMP echo identifiers are not ports).
PORT_PROTOS: frozenset[int] = frozenset({6, 17, 33, 132, 136})  # TCP UDP DCCP SCTP UDP-Lite

# (lo, hi) inclusive
PortRange = tuple[int, int]


def parse_proto(value: Any) -> int:
    """A proto spec -> protocol number, or -1 for any. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"expected a protocol name or number, got {value!r}")
    if isinstance(value, int):
        if not 0 <= value <= 255:
            raise ValueError(f"expected a protocol number 0..255, got {value}")
        return value
    if isinstance(value, str):
        name = value.strip().lower()
        if name == "any":
            return -1
        if name in PROTO_NAMES:
            return PROTO_NAMES[name]
    names = ", ".join([*PROTO_NAMES, "any"])
    raise ValueError(f"expected one of {names} or a number 0..255, got {value!r}")


def _parse_port_item(item: Any) -> PortRange:
    if isinstance(item, bool):
        raise ValueError(f"expected a port 0..65535 or a range 'lo-hi', got {item!r}")
    if isinstance(item, int):
        lo = hi = item
    elif isinstance(item, str):
        lo_text, dash, hi_text = item.strip().partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if dash else lo
        except ValueError:
            raise ValueError(f"expected a port 0..65535 or a range 'lo-hi', got {item!r}") from None
    else:
        raise ValueError(f"expected a port 0..65535 or a range 'lo-hi', got {item!r}")
    for port in (lo, hi):
        if not 0 <= port <= 65535:
            where = "" if isinstance(item, int) else f" in {item!r}"
            raise ValueError(f"expected a port in 0..65535, got {port}{where}")
    if lo > hi:
        raise ValueError(f"expected a range 'lo-hi' with lo <= hi, got {item!r}")
    return (lo, hi)


def parse_ports(value: Any) -> tuple[PortRange, ...]:
    """A port, 'lo-hi' or a list of those -> (lo, hi) ranges. Raises ValueError."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected a port, a range or a non-empty list of them, got []")
    return tuple(_parse_port_item(item) for item in items)


class CompiledRule(NamedTuple):
    """One rule as plain data; None means "matches anything"."""

    allow: bool
    proto: int  # -1: any
    src: tuple[Net, ...] | None
    dst: tuple[Net, ...] | None
    sport: tuple[PortRange, ...] | None
    dport: tuple[PortRange, ...] | None


def compile_rule(
    action: str, proto: Any, src: Any, dst: Any, sport: Any, dport: Any
) -> CompiledRule:
    """Compile the (already validated) fields of one rule."""
    return CompiledRule(
        allow=action == "allow",
        proto=-1 if proto is None else parse_proto(proto),
        src=None if src is None else parse_cidrs(src),
        dst=None if dst is None else parse_cidrs(dst),
        sport=None if sport is None else parse_ports(sport),
        dport=None if dport is None else parse_ports(dport),
    )


def _in_nets(nets: tuple[Net, ...], version: int, addr: int) -> bool:
    # A v4 network never matches a v6 packet (and vice versa): compare versions first.
    # Plain loops, not any(generator): ~30% faster on the rule path (measured).
    for v, net, mask in nets:  # noqa: SIM110
        if v == version and addr & mask == net:
            return True
    return False


def _in_ports(ranges: tuple[PortRange, ...], port: int) -> bool:
    for lo, hi in ranges:  # noqa: SIM110
        if lo <= port <= hi:
            return True
    return False


def match_rules(
    rules: Sequence[CompiledRule],
    version: int,
    proto: int,
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
) -> int:
    """Index of the first rule matching the packet, or -1 when none does."""
    has_ports = proto in PORT_PROTOS
    src_int = dst_int = -1  # converted on first use only
    # Tuple unpacking is cheaper than NamedTuple attribute access, per rule.
    for index, (_, rproto, srcs, dsts, sports, dports) in enumerate(rules):
        if rproto >= 0 and rproto != proto:
            continue
        if sports is not None and not (has_ports and _in_ports(sports, sport)):
            continue
        if dports is not None and not (has_ports and _in_ports(dports, dport)):
            continue
        if srcs is not None:
            if src_int < 0:
                src_int = int.from_bytes(src, "big")
            if not _in_nets(srcs, version, src_int):
                continue
        if dsts is not None:
            if dst_int < 0:
                dst_int = int.from_bytes(dst, "big")
            if not _in_nets(dsts, version, dst_int):
                continue
        return index
    return -1
