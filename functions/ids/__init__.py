"""Signature IDS/IPS: Snort/Suricata-style rules over headers and payload contents.

Summary
    Every IP packet is matched against every rule (the subset of Snort and
    Suricata syntax in docs/functions/ids.md). The header (protocol, addresses,
    ports, direction) is checked with precompiled interval sets, the payload
    contents with one Aho-Corasick pass in C (pyahocorasick) over the packet's
    L4 payload, never a Python loop over all rules. Actions follow Suricata's
    default order: a matching `pass` rule lets the packet through and silences
    every other rule; otherwise a matching `drop` rule drops it; every matching
    `alert` and `drop` rule raises an alert record. Stateless: each packet is
    judged alone (no streams, no reassembly, no flow keywords).

Ports
    pass     packets no drop rule matched (or a pass rule matched); non-IP frames
    drop     reason "sid:<sid>" (the lowest sid among the matching drop rules),
             "malformed" (snf.packet.parse says so, or a TCP data offset < 20 bytes or
             past the segment)
    alerts   (record port) one JSON object per matching alert/drop rule, EVE-like:
             ts, ts_ns, packet_id, sid, rev, msg, action, proto, src, sport,
             dst, dport; per packet in sid order

Config (IdsConfig)
    rules       list of rule strings ("rule <n>" in errors, 1-based), or
    rules_file  path of a rules file, one rule per line ("<path>:<line>" in
                errors); relative to the current directory, or to the
                validation context's "base_dir" when the loader gives one.
                Exactly one of the two. Blank lines and '#' comments are skipped.
    vars        {NAME: spec}: address or port specs used as $NAME in rules
    Rules are parsed and compiled when the config is validated, so a bad rule
    fails the load with its number or line and the reason.

State
    None (key "any": any partition will do).

Metrics
    the engine's counters: "in", "pass", "drop:<reason>", "alerts" (records).

Example
    - type: ids
      vars: {HOME_NET: "10.0.0.0/8", HTTP_PORTS: "[80,8080]"}
      rules:
        - alert tcp any any -> $HOME_NET $HTTP_PORTS (msg:"admin"; content:"/admin"; sid:1;)
        - drop udp any any -> $HOME_NET 53 (msg:"bad"; content:"|03|bad|03|com"; nocase; sid:2;)
        - pass ip 10.9.0.0/16 any <> any any (msg:"scanner"; sid:3;)
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, ClassVar

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from snf.core.contract import Decisions, FunctionConfig, NetworkFunction, Record, triage
from snf.core.limits import FileLimitError, read_text_file
from snf.core.reasons import MALFORMED, numbered
from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch, format_packet_id
from snf.packet.headers import FRAG_LATER, Headers

from .match import Matcher, payload_span
from .rules import Rule, RuleError, compile_rules
from .specs import check_var

__all__ = ["Ids", "IdsConfig"]

_PROTO_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "IPv6-ICMP"}  # as in EVE
_PORT_PROTOS = frozenset({6, 17, 33, 132, 136})  # TCP UDP DCCP SCTP UDP-Lite
SID = "sid"  # numbered: sid:<sid>, the drop rule that dropped the packet
_VAR_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("ids_rule", "{problem}", {"problem": message})


def _rule_error(loc: tuple[str | int, ...], message: str, value: Any) -> ValidationError:
    """A ValidationError at `loc` (e.g. ("rules", 2)); pydantic passes it through."""
    return ValidationError.from_exception_data(
        "IdsConfig", [InitErrorDetails(type=_problem(message), loc=loc, input=value)]
    )


class IdsConfig(FunctionConfig):
    """Config of the IDS function; exactly one of `rules` and `rules_file`."""

    vars: dict[str, str] = Field(
        default_factory=dict,
        description="Variables for rules, {NAME: spec}: an address spec such as "
        "'[10.0.0.0/8, !10.1.0.0/16]' or a port spec such as '[80,8080]' (a number or "
        "a list is accepted too); rules use them as $NAME.",
    )
    rules: list[str] | None = Field(
        default=None,
        description="Rules, one string each, in Snort/Suricata syntax "
        "(docs/functions/ids.md); blank and '#' entries are skipped.",
    )
    rules_file: str | None = Field(
        default=None,
        description="Path of a rules file, one rule per line, '#' comments and blank lines "
        "skipped; relative to the current directory (or to the loader's base_dir).",
    )
    _compiled: list[Rule] = PrivateAttr(default_factory=list)

    @field_validator("vars", mode="before")
    @classmethod
    def _vars_as_strings(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = {}
        for name, spec in value.items():
            if not isinstance(name, str) or not name or not set(name) <= _VAR_CHARS:
                raise _problem(f"bad variable name {name!r}: use letters, digits and '_'")
            if name[0].isdigit():
                raise _problem(f"bad variable name {name!r}: must not start with a digit")
            items = spec if isinstance(spec, list) else [spec]
            if not items or any(isinstance(x, bool) or not isinstance(x, str | int) for x in items):
                raise _problem(f"${name}: expected a spec string, a port or a list, got {spec!r}")
            text = ", ".join(str(x) for x in items)
            out[name] = f"[{text}]" if isinstance(spec, list) else text
        return out

    @field_validator("vars")
    @classmethod
    def _check_vars(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            try:
                check_var(name, value)
            except RuleError as exc:
                raise _problem(f"${name}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _compile(self, info: ValidationInfo) -> IdsConfig:
        if (self.rules is None) == (self.rules_file is None):
            raise _problem("give exactly one of rules (a list) or rules_file (a path)")
        if self.rules is not None:
            lines = [(f"rule {n}", text) for n, text in enumerate(self.rules, 1)]
        else:
            path = Path(self.rules_file or "")
            base = (info.context or {}).get("base_dir")
            if base is not None and not path.is_absolute():
                path = Path(base) / path
            # A regular file of at most 4 MiB. The input of an error is the path, never
            # a line of the file, so that no message quotes it.
            try:
                text = read_text_file(path, "rules file")
            except FileLimitError as exc:
                raise _rule_error(("rules_file",), str(exc), path) from None
            lines = [(f"{self.rules_file}:{n}", t) for n, t in enumerate(text.splitlines(), 1)]
        try:
            self._compiled = compile_rules(lines, self.vars, from_file=self.rules is None)
        except RuleError as exc:
            if self.rules is not None and exc.index is not None:
                loc: tuple[str | int, ...] = ("rules", exc.index)
                raise _rule_error(loc, str(exc), self.rules[exc.index]) from None
            raise _rule_error(("rules_file",), str(exc), Path(self.rules_file or "")) from None
        return self

    @property
    def compiled(self) -> list[Rule]:
        """The parsed rules, in config order."""
        return list(self._compiled)


class Ids(NetworkFunction):
    """Signature IDS/IPS core; see the module docstring."""

    kind: ClassVar[str] = "ids"
    ports: ClassVar[tuple[str, ...]] = ("pass", "drop")
    record_ports: ClassVar[tuple[str, ...]] = ("alerts",)
    reasons: ClassVar[tuple[str, ...]] = (MALFORMED, numbered(SID))
    tables: ClassVar[tuple[str, ...]] = ()
    key: ClassVar[str] = "any"
    needs_payload: ClassVar[bool] = True  # content rules match the payload
    Config: ClassVar[type[FunctionConfig]] = IdsConfig

    def __init__(self, config: IdsConfig) -> None:
        super().__init__(config)
        self.config: IdsConfig = config
        self.matcher = Matcher(config.compiled)

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        decisions, ip = triage(headers)
        rules = self.matcher.rules
        match, scans = self.matcher.match, self.matcher.scans
        buf, offsets = batch.payload, batch.offsets
        version, proto, frag = headers.version, headers.proto, headers.frag
        src, dst, sport, dport = headers.src, headers.dst, headers.sport, headers.dport
        l3_off, l4_off = headers.l3_off, headers.l4_off
        # (packet index, matching alert/drop rules, the packet's part of the alert record)
        hits: list[tuple[int, list[int], dict[str, Any]]] = []
        for i in ip:
            reason = ""
            try:
                p = proto[i]
                later = frag[i] == FRAG_LATER
                payload = b""
                if not later and (p == 6 or scans(p)):
                    base = offsets[i]
                    start, end = payload_span(
                        buf, base, offsets[i + 1] - base, version[i], p, l3_off[i], l4_off[i]
                    )
                    if end > start and scans(p):
                        payload = buf[start:end]
                found = match(version[i], p, later, src[i], dst[i], sport[i], dport[i], payload)
                if found:
                    actions = [rules[j].action for j in found]
                    if "pass" not in actions:
                        hits.append((i, found, _packet_fields(headers, i)))
                        if "drop" in actions:
                            reason = numbered(SID, rules[found[actions.index("drop")]].sid)
            except Exception:  # crafted content broke an assumption: drop, never raise
                reason = MALFORMED  # (hits gets its entry last, so it has none for i)
            if reason:
                decisions.ports[i], decisions.reasons[i] = "drop", reason
        decisions.records["alerts"] = self._alerts(batch, hits) if hits else []
        return decisions

    def _alerts(
        self, batch: PacketBatch, hits: list[tuple[int, list[int], dict[str, Any]]]
    ) -> list[Record]:
        """One record per (packet, matching alert/drop rule), rules in sid order."""
        rules = self.matcher.rules
        ts = batch.records["ts_ns"].tolist()
        ids = batch.packet_ids()
        out: list[Record] = []
        for i, found, packet in hits:
            packet_id = format_packet_id(*ids[i])
            for j in found:
                rule = rules[j]
                out.append(
                    {
                        "ts": ts[i] / 1e9,
                        "ts_ns": ts[i],
                        "packet_id": packet_id,
                        "sid": rule.sid,
                        "rev": rule.rev,
                        "msg": rule.msg,
                        "action": rule.action,
                        **packet,
                    }
                )
        return out


def _packet_fields(h: Headers, i: int) -> dict[str, Any]:
    """The packet's part of an alert record (EVE-like names)."""
    p = h.proto[i]
    ports = p in _PORT_PROTOS and h.l4_off[i] >= 0
    return {
        "proto": _PROTO_NAMES.get(p, str(p)),
        "src": str(ipaddress.ip_address(h.src[i])),
        "sport": h.sport[i] if ports else None,
        "dst": str(ipaddress.ip_address(h.dst[i])),
        "dport": h.dport[i] if ports else None,
    }
