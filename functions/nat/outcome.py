"""A packet's outcome in the NAT (a helper of snf.functions.nat): its drop reasons
and what the per-packet path returns."""

from __future__ import annotations

__all__ = [
    "FILTERED",
    "FRAGMENT",
    "NO_BINDING",
    "PASSED",
    "PORTS_EXHAUSTED",
    "UNSUPPORTED",
    "Outcome",
    "drop",
]

NO_BINDING = "no_binding"
FILTERED = "filtered"
PORTS_EXHAUSTED = "ports_exhausted"
UNSUPPORTED = "unsupported"
FRAGMENT = "fragment"
# (reason, rewritten packet or None, rewritten field "src"/"dst"/"", new address)
Outcome = tuple[str, bytearray | None, str, bytes]
PASSED: Outcome = ("", None, "", b"")


def drop(reason: str) -> Outcome:
    return (reason, None, "", b"")
