"""IDS alert records (a helper of snf.functions.ids): EVE-like JSON per match."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from snf.core.contract import Record
from snf.packet.batch import PacketBatch, format_packet_id

from .rules import Rule

__all__ = ["alert_records"]


def alert_records(
    batch: PacketBatch,
    rules: Sequence[Rule],
    hits: list[tuple[int, list[tuple[int, str]], dict[str, Any]]],
    limit: int,
) -> list[Record]:
    """One record per (packet, matching rule), rules in (gid, sid) order, at most
    `limit` per packet (Suricata's packet-alert-max)."""
    if not hits:
        return []
    ts = batch.records["ts_ns"].tolist()
    ids = batch.packet_ids()
    out: list[Record] = []
    per_packet: dict[int, int] = {}
    for i, found, packet in hits:
        packet_id = format_packet_id(*ids[i])
        for j, action in found:  # the action: the rule's, or its rate_filter's new one
            if per_packet.get(i, 0) >= limit:
                break
            per_packet[i] = per_packet.get(i, 0) + 1
            fields = _rule_fields(rules[j])
            fields["action"] = action
            out.append({"ts": ts[i] / 1e9, "ts_ns": ts[i], "packet_id": packet_id,
                        **fields, **packet})  # fmt: skip
    return out


def _rule_fields(rule: Rule) -> dict[str, Any]:
    """The rule's part of an alert record (EVE's alert object, flattened)."""
    fields: dict[str, Any] = {
        "sid": rule.sid, "rev": rule.rev, "gid": rule.gid, "msg": rule.msg,
        "action": rule.action,
    }  # fmt: skip
    if rule.classtype is not None:
        fields["classtype"] = rule.classtype
    if rule.priority is not None:
        fields["priority"] = rule.priority
    if rule.references:
        fields["references"] = list(rule.references)
    if rule.metadata:
        fields["metadata"] = list(rule.metadata)
    return fields
