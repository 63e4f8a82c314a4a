"""IDS rule parsing (a helper of snf.functions.ids): Suricata's rule language, in part.

    action proto src_addr src_port (-> | <>) dst_addr dst_port (option; ...)

Everything is compiled once, when the config is validated: addresses and
ports become sorted disjoint intervals of ints (the union, complement and
intersection of lists, `!` and `$VARS` are worked out here, exactly), the
payload keywords a PayloadProgram (payload.py), the header keywords a
HeaderProgram (header_keywords.py). docs/functions/ids.md has the grammar,
every keyword and every error.

A rule that is well formed but uses what this IDS does not do (a keyword, a
protocol) raises Unsupported, so that a published ruleset can load the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from .flow_keywords import (
    FLOW_KEYWORDS,
    Flowbits,
    Flowint,
    FlowSpec,
    StreamSize,
    Threshold,
    compile_flow,
    compile_flowbits,
    compile_flowint,
    compile_stream_size,
    compile_threshold,
)
from .header_keywords import (
    HEADER_KEYWORDS,
    ICMP_KEYWORDS,
    TCP_KEYWORDS,
    HeaderProgram,
    compile_header_keywords,
)
from .options import split_options, unquote
from .payload import PAYLOAD_KEYWORDS, PayloadProgram, compile_payload, fast_pattern
from .specs import PORT_ANY, RuleError, Space, parse_spec
from .stream import joinable

__all__ = ["Rule", "RuleError", "Unsupported", "compile_rules", "parse_rule"]

# reject: a drop whose answer (a TCP reset, an ICMP error) snf cannot inject.
ACTIONS = ("alert", "drop", "pass", "reject", "rejectsrc", "rejectdst", "rejectboth")
PROTOS: dict[str, tuple[int, ...] | None] = {
    "tcp": (6,), "tcp-pkt": (6,), "tcp-stream": (6,), "udp": (17,), "icmp": (1, 58), "icmpv4": (1,),
    "icmpv6": (58,), "ip": None,
}  # fmt: skip
# Suricata's application-layer protocols and stream-only matching: well formed, not done here.
_LATER_PROTOS = frozenset({
    "http", "http1", "http2", "ftp", "ftp-data", "tls", "smb", "dcerpc", "dns",
    "smtp", "imap", "ssh", "dnp3", "modbus", "enip", "nfs", "ntp", "dhcp", "krb5", "snmp",
    "sip", "rfb", "mqtt", "pgsql", "ike", "quic", "rdp", "telnet", "websocket", "ldap", "pop3",
})  # fmt: skip
_META = ("msg", "sid", "rev", "gid", "priority", "classtype", "reference", "metadata", "noalert")
_DIGITS = re.compile(r"[0-9]{1,10}")
_L4_KEYWORDS = TCP_KEYWORDS | ICMP_KEYWORDS


class Unsupported(RuleError):
    """A well-formed rule that uses a keyword or protocol this IDS does not support."""


class Rule(NamedTuple):
    where: str  # "rule 3" or "rules.txt:12", for messages
    action: str  # alert | drop | pass | reject*
    proto: str  # tcp | udp | icmp | ip | ...
    protos: tuple[int, ...] | None  # IP protocol numbers; None: any (ip)
    src: Space
    sport: Space
    dst: Space
    dport: Space
    bidirectional: bool
    sid: int
    rev: int
    msg: str
    payload: PayloadProgram | None  # None: no payload keyword
    fast: tuple[bytes, bool] | None  # the prefilter's (pattern, nocase); None: not prefiltered
    header: HeaderProgram | None  # None: no header keyword
    gid: int = 1
    priority: int | None = None
    classtype: str | None = None
    references: tuple[str, ...] = ()
    metadata: tuple[str, ...] = ()
    noalert: bool = False
    flow: FlowSpec | None = None
    flowbits: Flowbits | None = None
    threshold: Threshold | None = None  # threshold or detection_filter
    stream_size: StreamSize | None = None
    flowint: Flowint | None = None

    @property
    def stateful(self) -> bool:
        """Whether the rule reads the flow (so it never matches inside a tunnel)."""
        return any(
            x is not None for x in (self.flow, self.flowbits, self.stream_size, self.flowint)
        )

    @property
    def drops(self) -> bool:
        """Whether a match drops the packet (drop and the reject actions)."""
        return self.action != "alert" and self.action != "pass"


# -- options ---------------------------------------------------------------------


def _number(name: str, value: str | None, lo: int, hi: int) -> int:
    if value is None or not _DIGITS.fullmatch(value) or not lo <= int(value) <= hi:
        raise RuleError(f"{name} expects an integer {lo}..{hi}, got {value!r}")
    return int(value)


def _meta(
    single: dict[str, object], lists: dict[str, list[str]], name: str, value: str | None
) -> None:
    if name in ("reference", "metadata"):
        if not value:
            raise RuleError(f"{name} expects a value")
        lists[name].append(value)
        return
    if name in single:
        raise RuleError(f"duplicate option {name!r}")
    if name == "msg":
        single[name] = unquote(value or "", "msg")
    elif name == "classtype":
        if not value or not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise RuleError(f"classtype expects a name, got {value!r}")
        single[name] = value
    elif name == "noalert":
        if value is not None:
            raise RuleError(f"noalert takes no value, got {value!r}")
        single[name] = True
    elif name == "priority":
        single[name] = _number(name, value, 1, 255)
    else:
        single[name] = _number(name, value, 1, 2**32 - 1)


def _options(text: str) -> tuple[dict[str, object], dict[str, list[str]], Sequence]:
    """The meta options (msg, sid, ...), the lists (reference, metadata) and every
    (name, value) pair, in rule order, for the keyword compilers."""
    single: dict[str, object] = {}
    lists: dict[str, list[str]] = {"reference": [], "metadata": []}
    options = split_options(text)
    for name, value in options:
        if name in _META:
            _meta(single, lists, name, value)
        elif name in FLOW_KEYWORDS:
            continue
        elif name not in PAYLOAD_KEYWORDS and name not in HEADER_KEYWORDS:
            raise Unsupported(f"option {name!r} is not supported (docs/functions/ids.md)")
    if "sid" not in single:
        raise RuleError("missing sid")
    return single, lists, options


def _flow_options(
    options: Sequence[tuple[str, str | None]],
) -> tuple[FlowSpec | None, Flowbits | None, Threshold | None, StreamSize | None, Flowint | None]:
    by_name: dict[str, list[str | None]] = {}
    for name, value in options:
        if name in FLOW_KEYWORDS:
            by_name.setdefault(name, []).append(value)
    threshold = compile_threshold("threshold", by_name.get("threshold", []))
    detection = compile_threshold("detection_filter", by_name.get("detection_filter", []))
    if threshold is not None and detection is not None:
        raise RuleError("give threshold or detection_filter, not both")
    return (
        compile_flow(by_name.get("flow", [])),
        compile_flowbits(by_name.get("flowbits", [])),
        threshold or detection,
        compile_stream_size(by_name.get("stream_size", [])),
        compile_flowint(by_name.get("flowint", [])),
    )


# -- header and whole rules ----------------------------------------------------------

_HEADER_PARTS = (
    "action", "protocol", "source address", "source port", "direction",
    "destination address", "destination port",
)  # fmt: skip


def _header_tokens(text: str) -> list[str]:
    """Split on whitespace outside brackets (a [list] may contain spaces)."""
    tokens, depth, cur = [], 0, []
    for c in text:
        if c.isspace() and depth == 0:
            if cur:
                tokens.append("".join(cur))
                cur = []
            continue
        depth += (c == "[") - (c == "]")
        cur.append(c)
        if depth < 0:
            raise RuleError(f"unexpected ']' in {''.join(cur)!r}")
    if depth:
        raise RuleError(f"missing ']' in {''.join(cur)!r}")
    if cur:
        tokens.append("".join(cur))
    return tokens


def parse_rule(where: str, text: str, vars_: Mapping[str, str]) -> Rule:
    text = text.strip()
    open_at = text.find("(")
    if open_at < 0:
        raise RuleError("expected '(' and the options after the destination port")
    if not text.endswith(")"):
        raise RuleError("expected ')' at the end of the rule")
    tokens = _header_tokens(text[:open_at])
    if tokens and tokens[0].lower() not in ACTIONS:
        raise RuleError(f"unknown action {tokens[0]!r} (expected {', '.join(ACTIONS)})")
    if len(tokens) > 1 and tokens[1].lower() in _LATER_PROTOS:
        raise Unsupported(f"protocol {tokens[1]!r} is not supported (docs/functions/ids.md)")
    if len(tokens) > 1 and tokens[1].lower() not in PROTOS:
        raise RuleError(f"unknown protocol {tokens[1]!r} (expected {', '.join(PROTOS)})")
    if len(tokens) > 4 and tokens[4] not in ("->", "<>"):
        raise RuleError(f"expected '->' or '<>' after the source port, found {tokens[4]!r}")
    if len(tokens) < len(_HEADER_PARTS):
        k = len(tokens)
        after = f" after the {_HEADER_PARTS[k - 1]}" if k else ""
        raise RuleError(f"expected the {_HEADER_PARTS[k]}{after}, found '('")
    if len(tokens) > len(_HEADER_PARTS):
        raise RuleError(f"expected '(' after the destination port, found {tokens[7]!r}")
    action, proto, src, sport, arrow, dst, dport = tokens
    action, proto = action.lower(), proto.lower()
    ports = (
        parse_spec(sport, "source port", vars_, port=True),
        parse_spec(dport, "destination port", vars_, port=True),
    )
    if proto not in ("tcp", "tcp-pkt", "tcp-stream", "udp") and ports != (PORT_ANY, PORT_ANY):
        raise RuleError(f"an {proto} rule has no ports: write 'any' for both ports")
    single, lists, options = _options(text[open_at + 1 : -1])
    payload = compile_payload(options) if any(n in PAYLOAD_KEYWORDS for n, _ in options) else None
    header = compile_header_keywords(options)
    protos = PROTOS[proto]
    l4 = None if header is None else header.l4_protos
    if l4 is not None and protos is not None and not set(protos) & l4:
        first = next(k for k in header.keywords if k in _L4_KEYWORDS)  # type: ignore[union-attr]
        raise RuleError(f"{first} never matches a {proto} rule")
    flow, flowbits, threshold, stream_size, flowint = _flow_options(options)
    if (proto == "tcp-stream" or (flow is not None and flow.stream)) and not joinable(payload):
        raise Unsupported("a tcp-stream rule here needs payload keywords that are all relative")
    if stream_size is not None and protos != (6,):
        raise RuleError(f"stream_size never matches a {proto} rule (TCP only)")
    return Rule(
        where, action, proto, protos,
        parse_spec(src, "source address", vars_, port=False), ports[0],
        parse_spec(dst, "destination address", vars_, port=False), ports[1],
        arrow == "<>", single["sid"], single.get("rev", 1), single.get("msg", ""),
        payload, None if payload is None else fast_pattern(payload), header,
        single.get("gid", 1), single.get("priority"), single.get("classtype"),
        tuple(lists["reference"]), tuple(lists["metadata"]), bool(single.get("noalert")),
        flow, flowbits, threshold, stream_size, flowint,
    )  # type: ignore[arg-type]  # fmt: skip


def compile_rules(
    lines: Iterable[tuple[str, str]],
    vars_: Mapping[str, str],
    from_file: bool = False,
    skipped: list[tuple[str, str]] | None = None,
) -> list[Rule]:
    """(where, text) pairs -> rules; blank and '#' lines are skipped.

    Raises RuleError("<where>: <problem>") at the first bad rule, with `index`
    set to that rule's position in `lines`. With `from_file`, a line that does
    not start with an action is reported by its number alone: a file named by
    mistake (or on purpose, such as /etc/shadow) never has its content shown.
    Given a `skipped` list, an Unsupported rule is appended to it as (where,
    reason) and the rest load, as Suricata loads a ruleset; without, it raises.
    """
    rules: list[Rule] = []
    sids: dict[tuple[int, int], str] = {}
    for index, (where, text) in enumerate(lines):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            if from_file and text.split(None, 1)[0].lower() not in ACTIONS:
                raise RuleError("not a rule: expected it to start with alert, drop, pass or reject")
            rule = parse_rule(where, text, vars_)
            if (rule.gid, rule.sid) in sids:
                raise RuleError(f"duplicate sid {rule.sid} (also {sids[rule.gid, rule.sid]})")
        except Unsupported as exc:
            if skipped is None:
                error: RuleError = Unsupported(f"{where}: {exc}")
                error.index = index
                raise error from None
            skipped.append((where, str(exc)))
            continue
        except RuleError as exc:
            error = RuleError(f"{where}: {exc}")
            error.index = index
            raise error from None
        sids[rule.gid, rule.sid] = where
        rules.append(rule)
    return rules
