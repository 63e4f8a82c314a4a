"""Rate strings of the ratelimit function: "1000pps", "10Mbps", "1.5Gbps".

A rate is a decimal number followed by a unit, optionally with spaces
between them. Units (SI multipliers, powers of 1000):

    pps                 packets per second
    bps                 bits per second
    kbps / Kbps         1 000 bits per second
    Mbps                1 000 000 bits per second
    Gbps                1 000 000 000 bits per second

The value must come to a whole, positive number of packets (or bits) per
second, so that token refills are exact integers: "1.5Mbps" is 1 500 000
bits/s and fine; "1.5pps" and "0.5bps" are errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["RATE_FORMS", "Rate", "parse_rate"]

_UNITS: dict[str, tuple[bool, int]] = {  # unit -> (bits?, multiplier)
    "pps": (False, 1),
    "bps": (True, 1),
    "kbps": (True, 1_000),
    "Kbps": (True, 1_000),
    "Mbps": (True, 1_000_000),
    "Gbps": (True, 1_000_000_000),
}
RATE_FORMS = (
    "a rate such as '1000pps' or '10Mbps': a number followed by pps, bps, kbps, Kbps, "
    "Mbps or Gbps (SI multipliers of 1000)"
)
_RATE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*")


@dataclass(frozen=True, slots=True)
class Rate:
    """A parsed rate: `per_second` packets (bits False) or bits (bits True) per second."""

    per_second: int
    bits: bool

    def __str__(self) -> str:
        return f"{self.per_second}{'bps' if self.bits else 'pps'}"


def parse_rate(value: Any) -> Rate:
    """The Rate of a rate string; ValueError naming the value and the accepted forms."""
    if not isinstance(value, str):
        raise ValueError(f"expected {RATE_FORMS}, got {value!r}")
    match = _RATE_RE.fullmatch(value)
    unit = _UNITS.get(match.group(2)) if match else None
    if match is None or unit is None:
        raise ValueError(f"expected {RATE_FORMS}, got {value!r}")
    bits, multiplier = unit
    amount = Decimal(match.group(1)) * multiplier
    what = "bits" if bits else "packets"
    if amount <= 0:
        raise ValueError(f"rate {value!r} must be more than 0 {what} per second")
    if amount != amount.to_integral_value():
        raise ValueError(
            f"rate {value!r} is {amount.normalize():f} {what} per second; "
            f"expected a whole number of {what} per second"
        )
    return Rate(int(amount), bits)
