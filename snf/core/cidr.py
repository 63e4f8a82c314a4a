"""CIDR specs in function configs, parsed once into plain ints.

A spec is a CIDR string ("10.0.0.0/8", "2001:db8::/32", a bare address is a
/32 or /128) or a list of them. Parsing is strict: "10.0.0.1/8" is an error,
not silently 10.0.0.0/8; a network function should not guess what a config
meant. The result, (version, network, mask) as ints, is what per-packet
matching compares against (`addr_int & mask == network`).

`OneOrMany` annotates a config field that takes one string or a non-empty list
of them (a before-validator makes it a list): the JSON Schema then accepts both, as
the loader does.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import WithJsonSchema

__all__ = ["Net", "OneOrMany", "parse_cidrs"]

_STRINGS = {"type": "array", "items": {"type": "string"}, "minItems": 1}
OneOrMany = Annotated[list[str], WithJsonSchema({"anyOf": [{"type": "string"}, _STRINGS]})]

# (version, network as int, mask as int)
Net = tuple[int, int, int]


def _parse_cidr(text: Any) -> Net:
    if not isinstance(text, str):
        raise ValueError(f"expected a CIDR string such as 10.0.0.0/8, got {text!r}")
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(
            f"expected a CIDR such as 10.0.0.0/8 or 2001:db8::/32 (or a bare address), "
            f"got {text!r}: {exc}"
        ) from None
    return (net.version, int(net.network_address), int(net.netmask))


def parse_cidrs(value: Any) -> tuple[Net, ...]:
    """A CIDR or a list of them -> (version, net, mask) tuples. Raises ValueError."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected a CIDR or a non-empty list of CIDRs, got []")
    return tuple(_parse_cidr(item) for item in items)
