"""Drop reasons: declared once by each function, counted only by the engine.

A reason says why a packet left on its port ("" when there is nothing to
say). It travels with the packet (the wire format's reason table), names the
engine's counters ("drop:<reason>") and is kept in some state values (the
firewall keeps a first fragment's reason for its later fragments), so its
text never changes once released.

A function declares every reason its process() may give, on its class; the
engine refuses any other (as it refuses an undeclared port), checking each
distinct reason once. Numbered reasons are a family plus a number ("rule:2",
"sid:2001"): numbered(family) declares the family, numbered(family, n) is one
of its reasons.

    class Firewall(NetworkFunction):
        reasons = (MALFORMED, NON_IP, "default", "fragment", numbered("rule"))

        ... reason = numbered("rule", 2)    # "rule:2"
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ERROR", "MALFORMED", "NON_IP", "ReasonCheck", "numbered"]

ERROR = "error"  # the engine's own: the core raised, the batch was dropped whole
MALFORMED = "malformed"  # claims to be IP but is cut short or inconsistent
NON_IP = "non_ip"  # a frame without IP, dropped (the firewall's non_ip: drop)

_ANY = "N"  # the number of a declared family: "rule:N"


def numbered(family: str, n: int | None = None) -> str:
    """The reason `family:n` ("rule:2"); without n, the declaration of the family ("rule:N")."""
    return f"{family}:{_ANY if n is None else n}"


class ReasonCheck:
    """Tells whether a function may give a reason: "", ERROR, or one it declared.

    Each reason checked once is remembered, so a known one costs a set lookup.
    """

    def __init__(self, kind: str, declared: Iterable[str]) -> None:
        self.kind = kind
        tail = ":" + _ANY
        names = set(declared)
        families = {r for r in names if r.endswith(tail)}
        self._families = {r.removesuffix(tail) for r in families}
        self.known = {"", ERROR, *(names - families)}

    def __call__(self, reason: str) -> None:
        """Raise ValueError unless `reason` is declared (remember it when it is)."""
        if reason in self.known:
            return
        family, colon, number = reason.rpartition(":")
        if not (colon and family in self._families and number.isascii() and number.isdigit()):
            raise ValueError(f"{self.kind} gave undeclared reason {reason!r}")
        self.known.add(reason)
