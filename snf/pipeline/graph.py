"""Wiring: which output port of which function feeds what.

A pipeline file either lists its functions as a chain (the shorthand: each
`pass` port feeds the next function, the last one's feeds `egress`) or gives
`wiring`, a list of links `from: FN.PORT` (or `ingress`, or `FN` for its
`pass` port) `to:` one or more of

    FN          another function's input (fan-out: several; fan-in: several
                links to one function)
    egress      the pipeline's output topic
    discard     nowhere (the packets are counted, not kept)
    topic:NAME  an external topic, e.g. for an alert consumer

A port no link mentions writes to its own topic (snf.<pipeline>.<fn>.<port>),
which the sink collects: nothing is ever dropped silently. This module only
builds and checks the graph; snf.pipeline.model turns it into topics.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from snf.pipeline.errors import Loc

__all__ = ["INGRESS", "Dest", "Graph", "Link", "build_graph", "linear_links"]

INGRESS = "ingress"
DestKind = Literal["function", "egress", "discard", "topic", "port"]
# Kafka's legal topic names.
TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


@dataclass(frozen=True)
class Dest:
    kind: DestKind
    target: str = ""  # function name (function), topic name (topic)

    def __str__(self) -> str:
        if self.kind == "topic":
            return f"topic:{self.target}"
        return self.target if self.kind == "function" else self.kind


@dataclass(frozen=True)
class Link:
    """One link as written (loc points at it in the file, for error messages)."""

    source: str  # "ingress", "fn" or "fn.port"
    to: tuple[str, ...]
    loc: Loc


@dataclass
class Graph:
    entry: str  # the function that reads ingress
    # function -> port -> destinations (every declared port present; unwired: own topic)
    outputs: dict[str, dict[str, tuple[Dest, ...]]] = field(default_factory=dict)
    # function -> upstream (function, port) pairs, in link order
    inputs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # topological

    def downstream(self, name: str) -> list[str]:
        """Functions fed by any port of `name`, without repeats."""
        found: dict[str, None] = {}
        for dests in self.outputs[name].values():
            found.update((d.target, None) for d in dests if d.kind == "function")
        return list(found)

    @property
    def fan_out(self) -> bool:
        """Some port feeds more than one place (a packet id may come out twice)."""
        return any(len(d) > 1 for ports in self.outputs.values() for d in ports.values())

    @property
    def discards(self) -> bool:
        return any(
            dest.kind == "discard"
            for ports in self.outputs.values()
            for dests in ports.values()
            for dest in dests
        )


def linear_links(names: Sequence[str]) -> list[Link]:
    """The chain shorthand as links."""
    links = [Link(INGRESS, (names[0],), ("functions", 0))]
    for i, name in enumerate(names):
        to = names[i + 1] if i + 1 < len(names) else "egress"
        links.append(Link(f"{name}.pass", (to,), ("functions", i)))
    return links


def build_graph(
    links: Sequence[Link],
    ports: dict[str, tuple[tuple[str, ...], tuple[str, ...]]],  # fn -> (packet, record ports)
    problems: list[tuple[Loc, str]],
) -> Graph | None:
    """The graph of `links` over functions with `ports`; None after adding problems."""
    outputs: dict[str, dict[str, list[Dest]]] = {f: {} for f in ports}
    inputs: dict[str, list[tuple[str, str]]] = {f: [] for f in ports}
    entries: list[tuple[str, Loc]] = []
    known = ", ".join(ports)
    for link in links:
        loc_from, loc_to = (*link.loc, "from"), (*link.loc, "to")
        src_fn, src_port = _source(link.source, ports, loc_from, problems)
        if src_fn is None:
            continue
        records = src_port in ports[src_fn][1] if src_fn != INGRESS else False
        for j, text in enumerate(link.to):
            loc = loc_to if len(link.to) == 1 else (*loc_to, j)
            dest = _dest(text, ports, loc, problems)
            if dest is None:
                continue
            if records and dest.kind in ("function", "egress"):
                problems.append(
                    (
                        loc,
                        f"{link.source} carries records, not packets: "
                        "wire it to topic:NAME or discard",
                    )
                )
                continue
            if src_fn == INGRESS:
                if dest.kind != "function":
                    problems.append((loc, f"ingress must feed a function (one of: {known})"))
                    continue
                entries.append((dest.target, loc))
                continue
            mine = outputs[src_fn].setdefault(src_port, [])
            if dest in mine:
                problems.append((loc, f"{link.source} is already wired to {dest}"))
                continue
            mine.append(dest)
            if dest.kind == "function":
                inputs[dest.target].append((src_fn, src_port))
    entry = _entry(entries, problems)
    if entry is None:
        return None
    _check_inputs(entry, inputs, list(ports), problems)
    order = _topological(entry, outputs, problems)
    if problems or order is None:
        return None
    full = {
        fn: {
            port: tuple(outputs[fn].get(port) or [Dest("port", port)])
            for port in (*packet, *records)
        }
        for fn, (packet, records) in ports.items()
    }
    return Graph(entry, full, inputs, order)


def _entry(entries: list[tuple[str, Loc]], problems: list[tuple[Loc, str]]) -> str | None:
    """The one function ingress feeds (None after adding a problem)."""
    if len(entries) == 1:
        return entries[0][0]
    where = entries[1][1] if entries else ("wiring",)
    found = ", ".join(e for e, _ in entries) or "none"
    problems.append(
        (
            where,
            "ingress must feed exactly one function (found: "
            f"{found}); to mirror traffic, wire that function's ports to several",
        )
    )
    return None


def _check_inputs(
    entry: str,
    inputs: dict[str, list[tuple[str, str]]],
    functions: list[str],
    problems: list[tuple[Loc, str]],
) -> None:
    """Every function but the entry has an input; the entry has only ingress."""
    for fn, ups in inputs.items():
        loc: Loc = ("functions", functions.index(fn), "name")
        if fn != entry and not ups:
            problems.append((loc, f"function {fn!r} has no input: wire a port to it"))
        elif fn == entry and ups:
            problems.append((loc, f"{fn!r} reads ingress and must have no other input"))


def _source(
    text: str,
    ports: dict[str, tuple[tuple[str, ...], tuple[str, ...]]],
    loc: Loc,
    problems: list[tuple[Loc, str]],
) -> tuple[str | None, str]:
    if text == INGRESS:
        return INGRESS, ""
    fn, _, port = text.partition(".")
    port = port or "pass"
    if fn not in ports:
        problems.append(
            (
                loc,
                f"expected ingress or FUNCTION.PORT with a function of this "
                f"pipeline ({', '.join(ports)}), got {text!r}",
            )
        )
        return None, ""
    declared = (*ports[fn][0], *ports[fn][1])
    if port not in declared:
        problems.append((loc, f"{fn!r} has no port {port!r} (ports: {', '.join(declared)})"))
        return None, ""
    return fn, port


def _dest(
    text: str,
    ports: dict[str, tuple[tuple[str, ...], tuple[str, ...]]],
    loc: Loc,
    problems: list[tuple[Loc, str]],
) -> Dest | None:
    if text in ("egress", "discard"):
        return Dest(text)  # type: ignore[arg-type]
    if text.startswith("topic:"):
        name = text[len("topic:") :]
        if not TOPIC_NAME.match(name) or name in (".", ".."):
            problems.append(
                (
                    loc,
                    f"expected a Kafka topic name after topic: "
                    f"([A-Za-z0-9._-], at most 249), got {name!r}",
                )
            )
            return None
        return Dest("topic", name)
    if text in ports:
        return Dest("function", text)
    problems.append(
        (
            loc,
            f"expected a function of this pipeline ({', '.join(ports)}), "
            f"egress, discard or topic:NAME, got {text!r}",
        )
    )
    return None


def _topological(
    entry: str, outputs: dict[str, dict[str, list[Dest]]], problems: list[tuple[Loc, str]]
) -> list[str] | None:
    """Kahn's algorithm over function links; a cycle is reported with its members."""
    indegree = dict.fromkeys(outputs, 0)
    succ: dict[str, list[str]] = {f: [] for f in outputs}
    for fn, by_port in outputs.items():
        for dests in by_port.values():
            for d in dests:
                if d.kind == "function":
                    succ[fn].append(d.target)
                    indegree[d.target] += 1
    ready = [f for f in outputs if indegree[f] == 0]
    order: list[str] = []
    while ready:
        fn = ready.pop(0)
        order.append(fn)
        for g in succ[fn]:
            indegree[g] -= 1
            if indegree[g] == 0:
                ready.append(g)
    if len(order) < len(outputs):
        cycle = [f for f in outputs if f not in order]
        problems.append(
            (
                ("wiring",),
                f"wiring has a cycle through {', '.join(cycle)}; "
                "packets must flow from ingress to terminals",
            )
        )
        return None
    return order
