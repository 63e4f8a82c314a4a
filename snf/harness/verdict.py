"""The verdict of a chaos run: what a Kafka run delivered, against the --local reference.

Pure comparison of two Collectors, no broker. Per terminal (egress, side ports, record ports):

- lost: packet ids in the reference, not in the output; extra: the reverse;
- duplicated: deliveries of an id (or identical record) the terminal already had,
  counted at the sink *before* its dedup hides them (SinkRecorder). Messages a
  redo sent again carry the lineage of the first copy and are skipped by it
  first (snf.guarantee.journal); they are reported as `redelivered`, not as duplicates;
- reordered: packets that arrived after a later packet (in capture order, i.e. id
  order) of their flow; a Collector's dict per terminal keeps first-arrival order;
- divergent: ids whose bytes, drop reason or port differ (state divergence made
  visible: a NAT binding that got another public port, a policer that drops more);
- records: per record port, records in one and not the other (a changed record,
  e.g. a flow counted twice, is one missing plus one extra).
Clean: every count zero, duplicates included.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.box import SIMPLE
from rich.table import Table

from snf.egress.collector import Collector
from snf.packet.batch import PacketBatch, format_packet_id
from snf.packet.headers import FRAG_LATER, KIND_IP
from snf.packet.parse import parse_batch
from snf.pipeline.model import EGRESS, PortKey

__all__ = ["PacketVerdict", "RecordVerdict", "SinkRecorder", "Verdict", "compare", "port_name"]

PacketId = tuple[int, int]
EXAMPLES = 5  # ids (or records) listed per count in the JSON
DUPLICATES_NOTE = (
    "duplicated: repeated deliveries of an id (or record) at the sink, before its dedup by "
    "packet id but after its dedup by lineage (redelivered: messages a redo sent again)"
)
TABLE_NOTE = (
    f"dup*: {DUPLICATES_NOTE}. reordered: packets that arrived after a later packet of "
    "their flow (flows). Record ports: lost/extra count records (a change is one of each)."
)
_IDS = ("lost", "extra", "reordered")  # the id lists of a PacketVerdict
_ECHO = {(4, 0), (4, 8), (6, 128), (6, 129)}  # (IP version, ICMP type) of echo messages


@dataclass
class SinkRecorder(Collector):
    """A Collector that also counts, per terminal, the repeated deliveries its dedup drops."""

    repeats: Counter[PortKey] = field(default_factory=Counter)
    record_repeats: Counter[PortKey] = field(default_factory=Counter)

    def add(self, where: PortKey, batch: PacketBatch) -> int:
        before = self.duplicates_at[where]
        new = super().add(where, batch)
        self.repeats[where] += self.duplicates_at[where] - before
        return new

    def add_records(self, where: PortKey, records: list[dict[str, Any]]) -> int:
        new = super().add_records(where, records)
        self.record_repeats[where] += len(records) - new
        return new


@dataclass
class PacketVerdict:
    terminal: str
    reference: int
    output: int
    duplicated: int
    lost: list[PacketId] = field(default_factory=list)
    extra: list[PacketId] = field(default_factory=list)
    reordered: list[PacketId] = field(default_factory=list)
    reordered_flows: int = 0
    divergent: list[str] = field(default_factory=list)  # "id: what differs"

    def counts(self) -> dict[str, int]:
        lost, extra, late = len(self.lost), len(self.extra), len(self.reordered)
        n = {"lost": lost, "extra": extra, "duplicated": self.duplicated, "reordered": late}
        return n | {"reordered_flows": self.reordered_flows, "divergent": len(self.divergent)}

    def to_json(self) -> dict[str, Any]:
        ids = {k: [format_packet_id(*p) for p in getattr(self, k)] for k in _IDS}
        examples = {k: v[:EXAMPLES] for k, v in (ids | {"divergent": self.divergent}).items() if v}
        sizes = {"kind": "packets", "reference": self.reference, "output": self.output}
        return sizes | self.counts() | {"examples": examples}


@dataclass
class RecordVerdict:
    terminal: str
    reference: int
    output: int
    duplicated: int
    missing: list[dict[str, Any]] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(missing=len(self.missing), extra=len(self.extra), duplicated=self.duplicated)

    def to_json(self) -> dict[str, Any]:
        examples = {"missing": self.missing[:EXAMPLES], "extra": self.extra[:EXAMPLES]}
        sizes = {"kind": "records", "reference": self.reference, "output": self.output}
        return sizes | self.counts() | {"examples": {k: v for k, v in examples.items() if v}}


@dataclass
class Verdict:
    packets: list[PacketVerdict]
    records: list[RecordVerdict]
    redelivered: int = 0  # messages the sink skipped by lineage (informational)

    def totals(self) -> dict[str, int]:
        out = Counter[str]()
        for v in self.packets:
            out.update({k: n for k, n in v.counts().items() if k != "reordered_flows"})
        for r in self.records:
            out.update({"records_" + k: n for k, n in r.counts().items()})
        keys = ("lost", "extra", "duplicated", "reordered", "divergent")
        totals = {k: out[k] for k in (*keys, "records_missing", "records_extra")}
        totals["duplicated"] += out["records_duplicated"]  # one policy: zero duplicates
        return totals

    @property
    def clean(self) -> bool:
        return not any(self.totals().values())

    def to_json(self) -> dict[str, Any]:
        terminals = {v.terminal: v.to_json() for v in [*self.packets, *self.records]}
        head = {"clean": self.clean, "totals": self.totals(), "note": DUPLICATES_NOTE}
        head["redelivered"] = self.redelivered
        return head | {"terminals": terminals}

    def table(self, title: str) -> Table:
        state = "[green]CLEAN[/]" if self.clean else "[red]NOT CLEAN[/]"
        table = Table(title=f"{title}: {state}", caption=TABLE_NOTE, box=SIMPLE)
        table.add_column("terminal", no_wrap=True)
        for name in ("ref", "out", "lost", "extra", "dup*", "reordered", "divergent"):
            table.add_column(name, justify="right", no_wrap=True)
        for v in self.packets:
            c = v.counts()
            row = [_cell(c[k]) for k in ("lost", "extra", "duplicated")]
            row.append(_cell(c["reordered"], f"{c['reordered']} ({c['reordered_flows']})"))
            row.append(_cell(c["divergent"]))
            table.add_row(v.terminal, str(v.reference), str(v.output), *row)
        for r in self.records:  # a changed record: one missing (lost) and one extra
            row = [_cell(n) for n in r.counts().values()]
            table.add_row(r.terminal, str(r.reference), str(r.output), *row, "-", "-")
        return table


def _cell(n: int, text: str | None = None) -> str:
    return f"[red]{text or n}[/]" if n else str(text or n)


def port_name(key: PortKey) -> str:
    """egress, fn.port, or topic:NAME: how the verdict names a terminal."""
    return "egress" if key == EGRESS else ":".join(key) if key[0] == "topic" else ".".join(key)


def compare(
    ref: Collector,
    got: SinkRecorder,
    packet_terminals: Iterable[PortKey] = (),
    record_terminals: Iterable[PortKey] = (),
) -> Verdict:
    """Judge `got` (a run's sink) against `ref` (the --local run of the same input);
    the terminals given are listed even when empty."""
    pkeys = set(packet_terminals) | set(ref.packets) | set(got.packets)
    rkeys = set(record_terminals) | set(ref.records) | set(got.records)
    order = sorted(pkeys, key=lambda k: (k != EGRESS, k))
    found = {k: _packets(ref, got, k) for k in order}
    _moved(found, got)
    records = [_records(ref, got, k) for k in sorted(rkeys)]
    return Verdict(list(found.values()), records, got.redelivered)


def _moved(found: dict[PortKey, PacketVerdict], got: Collector) -> None:
    """An id lost at one terminal and extra at another changed port (a policer that
    charged replayed packets twice drops later ones): divergent, not lost."""
    lost = {pid: v for v in found.values() for pid in v.lost}
    moved = {pid: k for k, v in found.items() for pid in v.extra if pid in lost}
    for pid, k in moved.items():
        to = f"{port_name(k)}, reason {got.packets[k][pid].reason!r}"
        lost[pid].divergent.append(f"{format_packet_id(*pid)}: port {lost[pid].terminal} -> {to}")
    for v in found.values():
        v.lost = [p for p in v.lost if p not in moved]
        v.extra = [p for p in v.extra if p not in moved]


def _packets(ref: Collector, got: SinkRecorder, key: PortKey) -> PacketVerdict:
    want, have = ref.packets.get(key, {}), got.packets.get(key, {})
    v = PacketVerdict(port_name(key), len(want), len(have), got.repeats.get(key, 0))
    v.lost, v.extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    for pid in sorted(set(want) & set(have)):
        a, b = want[pid], have[pid]
        what = [f"bytes ({_describe(a)} -> {_describe(b)})"] if a.data != b.data else []
        what += [f"reason {a.reason!r} -> {b.reason!r}"] if a.reason != b.reason else []
        if what:
            v.divergent.append(f"{format_packet_id(*pid)}: {'; '.join(what)}")
    v.reordered, v.reordered_flows = _reordered(have, set(v.extra))
    return v


def _records(ref: Collector, got: SinkRecorder, key: PortKey) -> RecordVerdict:
    want, have = ref.records.get(key, {}), got.records.get(key, {})
    v = RecordVerdict(port_name(key), len(want), len(have), got.record_repeats.get(key, 0))
    v.missing = [want[t][1] for t in sorted(set(want) - set(have))]
    v.extra = [have[t][1] for t in sorted(set(have) - set(want))]
    return v


def _reordered(bucket: dict, extra: set[PacketId]) -> tuple[list[PacketId], int]:
    """Packets that arrived after a later packet of their flow, and flows affected; extra
    ones are counted as such only (e.g. a replayed packet that left by another port)."""
    rows = {pid: p for pid, p in bucket.items() if pid not in extra}
    latest: dict[Hashable, PacketId] = {}
    late: dict[PacketId, Hashable] = {}  # packet -> its flow
    for pid, flow in zip(rows, _order_keys(list(rows.values())), strict=True):
        if flow is not None and pid < latest.setdefault(flow, pid):
            late[pid] = flow
        elif flow is not None:
            latest[flow] = pid
    return list(late), len(set(late.values()))


def _order_keys(packets: list[Any]) -> list[Hashable | None]:
    """Per packet, the group whose order the pipeline keeps: its flow and direction.
    Later fragments group by datagram (a router without the first fragment keys them
    by address pair). Non-echo ICMP is left out (None): the NAT keys an error by the
    flow it reports on, so two errors between two hosts may take two partitions."""
    keys: list[Hashable | None] = [None] * len(packets)
    by_linktype: dict[int, list[int]] = {}
    for i, p in enumerate(packets):
        by_linktype.setdefault(p.linktype, []).append(i)
    for linktype, idx in by_linktype.items():
        h = parse_batch(linktype, [packets[i].data for i in idx])
        for j, i in enumerate(idx):
            flow = (h.flow[j], h.direction[j])
            unordered = h.icmp_type[j] >= 0 and (h.version[j], h.icmp_type[j]) not in _ECHO
            keys[i] = (*flow, h.ip_id[j]) if h.frag[j] == FRAG_LATER else flow
            keys[i] = None if unordered else keys[i]
    return keys


def _describe(p: Any) -> str:
    """proto src:sport > dst:dport, enough to see a rewritten address or port."""
    h = parse_batch(p.linktype, [p.data])
    if h.kind[0] != KIND_IP:
        return f"{len(p.data)} bytes"
    src, dst = ipaddress.ip_address(h.src[0]), ipaddress.ip_address(h.dst[0])
    return f"{h.proto[0]} {src}:{h.sport[0]} > {dst}:{h.dport[0]}"
