"""The ids function's config (a helper of snf.functions.ids): IdsConfig and its parts.

Rules are parsed and compiled when the config is validated (rules.py), so a
bad rule fails the load with its number or line and the reason; a ruleset
that is not `strict` loads what it supports and lists the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from snf.core.contract import FunctionConfig
from snf.core.limits import FileLimitError, read_text_file

from .flow_keywords import Threshold
from .judge import DEFAULT_ACTION_ORDER, RateFilter, Suppression
from .rules import Rule, RuleError, compile_rules
from .specs import check_var, parse_spec

__all__ = ["IdsConfig", "IdsFlowTimeouts", "IdsRateFilter", "IdsSuppress", "IdsThreshold"]

_SKIPS_SHOWN = 20  # skipped rules named in the log; the rest are counted
log = logging.getLogger("snf.functions.ids")
# What a file may give for vars (a before-validator joins numbers and lists into specs).
_SPEC = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
_VARS_SCHEMA = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [*_SPEC["anyOf"], {"type": "array", "items": _SPEC, "minItems": 1}]
    },
}
_VAR_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("ids_rule", "{problem}", {"problem": message})


def _rule_error(loc: tuple[str | int, ...], message: str, value: Any) -> ValidationError:
    """A ValidationError at `loc` (e.g. ("rules", 2)); pydantic passes it through."""
    return ValidationError.from_exception_data(
        "IdsConfig", [InitErrorDetails(type=_problem(message), loc=loc, input=value)]
    )


class IdsFlowTimeouts(BaseModel):
    """Flow timeouts in seconds of packet time (Suricata's flow-timeouts)."""

    model_config = ConfigDict(extra="forbid")
    new: int = Field(default=60, ge=1, description="a flow not established (yet)")
    established: int = Field(default=600, ge=1, description="an established flow")
    closed: int = Field(default=60, ge=1, description="a TCP flow after a RST")


class IdsSuppress(BaseModel):
    """A suppress entry, named as in Suricata's threshold.config."""

    model_config = ConfigDict(extra="forbid")
    gen_id: int = Field(default=1, ge=0, description="the rule's gid")
    sig_id: int = Field(ge=1, description="the rule's sid")
    track: Literal["by_src", "by_dst", "by_either"] | None = Field(
        default=None, description="which address `ip` is matched against; none: every alert"
    )
    ip: str | None = Field(
        default=None, description="an address spec (with $VARS), required with `track`"
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> IdsSuppress:
        if (self.track is None) != (self.ip is None):
            raise _problem("give track and ip together, or neither (suppress every alert)")
        return self


_TRACK = Literal["by_src", "by_dst", "by_rule", "by_both"]


class IdsThreshold(BaseModel):
    """A threshold or event_filter line of Suricata's threshold.config: it becomes the
    rule's own threshold (replacing one the rule has)."""

    model_config = ConfigDict(extra="forbid")
    gen_id: int = Field(default=1, ge=0, description="the rule's gid")
    sig_id: int = Field(ge=1, description="the rule's sid")
    type: Literal["limit", "threshold", "both"] = Field(description="as the rule keyword's")
    track: _TRACK = Field(description="what is counted apart")
    count: int = Field(ge=1, description="matches")
    seconds: int = Field(ge=1, description="the window, in seconds of packet time")


class IdsRateFilter(BaseModel):
    """A rate_filter line of Suricata's threshold.config: more than `count` matches
    within `seconds` switch the rule's action to `new_action` for `timeout` seconds."""

    model_config = ConfigDict(extra="forbid")
    gen_id: int = Field(default=1, ge=0, description="the rule's gid")
    sig_id: int = Field(ge=1, description="the rule's sid")
    track: _TRACK = Field(description="what is counted apart")
    count: int = Field(ge=1, description="matches tolerated per window")
    seconds: int = Field(ge=1, description="the window, in seconds of packet time")
    new_action: Literal["alert", "drop", "pass", "reject"] = Field(description="the action then")
    timeout: int = Field(ge=1, description="how long the new action holds, in seconds")


class IdsConfig(FunctionConfig):
    """Config of the IDS function; exactly one of `rules` and `rules_file`."""

    vars: Annotated[dict[str, str], WithJsonSchema(_VARS_SCHEMA)] = Field(
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
    strict: bool | None = Field(
        default=None,
        description="Whether a rule this IDS does not support (a keyword, a protocol) fails "
        "the load. Default: yes for `rules`, no for `rules_file` (a published ruleset "
        "loads the rest; the skipped rules and why are listed in the log and in "
        "`skipped`, as Suricata does).",
    )
    packet_alert_max: int = Field(
        default=15,
        ge=1,
        le=1000,
        description="Alerts recorded per packet at most, lowest (gid, sid) first "
        "(Suricata's packet-alert-max).",
    )
    midstream: bool = Field(
        default=False,
        description="Treat a TCP flow first seen without its handshake as established "
        "(Suricata's stream.midstream); otherwise `flow:established` never matches it.",
    )
    flow_timeouts: IdsFlowTimeouts = Field(
        default_factory=lambda: IdsFlowTimeouts(),
        description="Seconds of packet time without a packet before a flow and its "
        "flowbits are forgotten, by state (Suricata's flow-timeouts).",
    )
    action_order: list[Literal["pass", "drop", "reject", "alert"]] = Field(
        default_factory=lambda: list(DEFAULT_ACTION_ORDER),
        description="Which matching action wins (Suricata's action-order): a pass stops "
        "the actions after it in this list. Each of pass, drop, reject, alert once.",
    )
    suppress: list[IdsSuppress] = Field(
        default_factory=list,
        description="Alerts to suppress (Suricata's threshold.config suppress lines): the "
        "rule still acts (a drop drops); only its alert record is left out.",
    )
    thresholds: list[IdsThreshold] = Field(
        default_factory=list,
        description="threshold.config's threshold and event_filter lines: each becomes "
        "its rule's threshold.",
    )
    rate_filter: list[IdsRateFilter] = Field(
        default_factory=list,
        description="threshold.config's rate_filter lines: a rule's action changes while "
        "it matches too often.",
    )
    stream_window: int = Field(
        default=512,
        ge=0,
        le=65536,
        description="Bytes of each TCP direction's in-order payload kept to match contents "
        "split across segments (0: off); a match spanning more is not seen.",
    )
    max_flows: int = Field(
        default=1_000_000,
        ge=1,
        description="Flow entries per partition at most; a full table evicts flows that "
        "are not established first, then the oldest (metric `evicted`).",
    )
    _compiled: list[Rule] = PrivateAttr(default_factory=list)
    _suppressions: list[Suppression] = PrivateAttr(default_factory=list)
    _rate_filters: list[RateFilter] = PrivateAttr(default_factory=list)
    _skipped: list[tuple[str, str]] = PrivateAttr(default_factory=list)

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
        if sorted(self.action_order) != sorted(DEFAULT_ACTION_ORDER):
            raise _problem("action_order must list pass, drop, reject and alert once each")
        self._suppressions = [self._suppression(k, s) for k, s in enumerate(self.suppress)]
        strict = self.strict if self.strict is not None else self.rules is not None
        skipped: list[tuple[str, str]] | None = None if strict else []
        try:
            self._compiled = compile_rules(lines, self.vars, self.rules is None, skipped)
        except RuleError as exc:
            if self.rules is not None and exc.index is not None:
                loc: tuple[str | int, ...] = ("rules", exc.index)
                raise _rule_error(loc, str(exc), self.rules[exc.index]) from None
            raise _rule_error(("rules_file",), str(exc), Path(self.rules_file or "")) from None
        self._skipped = skipped or []
        self._apply_threshold_lines()
        if self._skipped:
            shown = "; ".join(f"{where}: {why}" for where, why in self._skipped[:_SKIPS_SHOWN])
            more = len(self._skipped) - _SKIPS_SHOWN
            log.warning(
                "ids: %d rules loaded, %d skipped (unsupported): %s%s",
                len(self._compiled), len(self._skipped), shown,
                f"; and {more} more" if more > 0 else "",
            )  # fmt: skip
        return self

    def _apply_threshold_lines(self) -> None:
        """thresholds replace their rules' own; rate_filter entries are compiled. Each
        must name a rule of the set (a skipped one too: nothing to apply it to)."""
        index = {(r.gid, r.sid): k for k, r in enumerate(self._compiled)}
        for field, entries in (("thresholds", self.thresholds), ("rate_filter", self.rate_filter)):
            for k, e in enumerate(entries):
                if (e.gen_id, e.sig_id) not in index:
                    where = (field, k, "sig_id")
                    raise _rule_error(where, f"no rule {e.gen_id}:{e.sig_id} is loaded", e.sig_id)
        for t in self.thresholds:
            at = index[t.gen_id, t.sig_id]
            limit = Threshold(t.type, t.track, t.count, t.seconds)
            self._compiled[at] = self._compiled[at]._replace(threshold=limit)
        self._rate_filters = [
            RateFilter(f.gen_id, f.sig_id, f.track, f.count, f.seconds, f.new_action, f.timeout)
            for f in self.rate_filter
        ]

    @property
    def rate_filters(self) -> list[RateFilter]:
        return list(self._rate_filters)

    def _suppression(self, k: int, entry: IdsSuppress) -> Suppression:
        space = None
        if entry.ip is not None:
            try:
                space = parse_spec(entry.ip, "ip", self.vars, port=False)
            except RuleError as exc:
                raise _rule_error(("suppress", k, "ip"), str(exc), entry.ip) from None
        return Suppression(entry.gen_id, entry.sig_id, entry.track or "", space)

    @property
    def suppressions(self) -> list[Suppression]:
        return list(self._suppressions)

    @property
    def compiled(self) -> list[Rule]:
        """The parsed rules, in config order."""
        return list(self._compiled)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(where, why) of every rule skipped as unsupported (not `strict`)."""
        return list(self._skipped)
