"""Pipeline graphs: wiring syntax, its errors, per-function settings, hops over a
graph, flush markers, and the --local run of branches, fan-out and fan-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from snf.ingress.replay import ReplayOptions, replay
from snf.pipeline.errors import PipelineError, Problem
from snf.pipeline.loader import parse_pipeline
from snf.pipeline.model import EGRESS
from snf.pipeline.routing import plan_pipeline
from snf.runtime.local import LocalPipeline
from tests.packets import tcp4, udp4
from tests.unit.test_partitioning import split_keys

REPO = Path(__file__).resolve().parents[2]

FW = "{default: drop, rules: [{action: allow, proto: tcp, dport: 80}]}"
HEAD = f"""\
name: g
partitions: 4
functions:
  - {{name: fw, function: firewall, config: {FW}}}
  - {{name: rl, function: ratelimit, config: {{key: flow, rate: 1000pps, burst: 5}}}}
  - {{name: flows, function: flowmon}}
  - {{name: gone, function: flowmon}}
"""


def problems(text: str) -> list[Problem]:
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, "g.yaml")
    return info.value.problems


def only(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


GRAPH = (
    HEAD
    + """\
wiring:
  - {from: ingress, to: fw}
  - {from: fw, to: [rl, flows]}          # fan-out; `fw` means fw.pass
  - {from: fw.drop, to: gone}
  - {from: rl.exceed, to: gone}          # fan-in: gone reads fw.drop and rl.exceed
  - {from: rl.pass, to: egress}
  - {from: flows.pass, to: discard}
  - {from: flows.flows, to: "topic:flow-records"}
  - {from: gone.pass, to: discard}
"""
)


def test_graph_topics_and_routes() -> None:
    p = parse_pipeline(GRAPH)
    assert p.graph.order == ["fw", "rl", "flows", "gone"]
    assert p.graph.fan_out and p.graph.discards
    fw, rl, _, gone = p.functions
    assert [r.topic for r in fw.routes["pass"]] == ["snf.g.rl.in", "snf.g.flows.in"]
    assert gone.inputs == (("fw", "drop"), ("rl", "exceed"))
    assert rl.routes["drop"][0].topic == "snf.g.rl.drop"  # unwired: a topic of its own
    assert p.sink_topics() == {
        "flow-records": ("topic", "flow-records"),
        "snf.g.egress": EGRESS,
        "snf.g.flows.drop": ("flows", "drop"),
        "snf.g.gone.drop": ("gone", "drop"),
        "snf.g.gone.flows": ("gone", "flows"),
        "snf.g.rl.drop": ("rl", "drop"),
    }
    assert p.record_topics() == {"flow-records", "snf.g.gone.flows"}
    # A one-shot run keeps external topics private to it.
    private = p.renamed("g-r1", private=True).function("flows").routes["flows"][0].topic
    assert private == "snf.g-r1.topic.flow-records"


def test_graph_hops_and_flush_markers() -> None:
    plan = plan_pipeline(parse_pipeline(GRAPH))
    assert {n: h.mode for n, h in plan.hops.items()} == {
        "fw": "flow",
        "rl": "keep",
        "flows": "keep",
        "gone": "keep",  # both inputs are flow-partitioned the same way
    }
    assert plan.ends_expected("fw") == 1
    assert plan.ends_expected("gone") == 2  # one marker per upstream partition: fw/p, rl/p
    targets = dict(plan.marker_targets("fw", 3))
    assert targets == {"snf.g.rl.in": [3], "snf.g.flows.in": [3], "snf.g.gone.in": [3]}


def test_different_partition_counts_rekey_and_count_every_upstream_partition() -> None:
    text = GRAPH.replace(
        "name: gone, function: flowmon", "name: gone, function: flowmon, partitions: 3"
    )
    p = parse_pipeline(text)
    plan = plan_pipeline(p)
    assert plan.hops["gone"].mode == "flow"
    assert plan.ends_expected("gone") == 8  # 4 partitions of fw + 4 of rl
    assert dict(plan.marker_targets("fw", 3))["snf.g.gone.in"] == [0, 1, 2]
    ends = p.terminal_ends()
    assert ends["snf.g.gone.drop"] == [1, 1, 1] and ends["snf.g.egress"] == [1, 1, 1, 1]


def test_fan_in_of_differently_keyed_inputs_rekeys() -> None:
    text = """\
name: k
functions:
  - {name: a, function: ratelimit, config: {key: src, rate: 10pps, burst: 10}}
  - {name: b, function: flowmon}
  - {name: c, function: flowmon}
wiring:
  - {from: ingress, to: a}
  - {from: a.pass, to: b}
  - {from: a.exceed, to: c}
  - {from: b.pass, to: c}
"""
    plan = plan_pipeline(parse_pipeline(text))
    assert plan.hops["a"].mode == "key"
    assert plan.hops["b"].mode == "flow"  # by source is not by flow
    assert plan.hops["c"].mode == "flow"  # its inputs are partitioned differently


@pytest.mark.parametrize(
    ("wiring", "path", "message"),
    [
        ("{from: ingress, to: nope}", "wiring[0].to", "expected a function of this pipeline"),
        ("{from: fw.nope, to: egress}", "wiring[1].from", "'fw' has no port 'nope'"),
        ("{from: flows.flows, to: rl}", "wiring[1].to", "carries records, not packets"),
        ("{from: fw, to: 'topic:bad name'}", "wiring[1].to", "expected a Kafka topic name"),
        ("{from: ingress, to: egress}", "wiring[0].to", "ingress must feed a function"),
    ],
)
def test_bad_links_name_the_link(wiring: str, path: str, message: str) -> None:
    links = [
        "{from: ingress, to: fw}",
        "{from: fw, to: rl}",
        "{from: rl, to: flows}",
        "{from: flows, to: gone}",
    ]
    if wiring.startswith("{from: ingress"):
        links[0] = wiring
    else:
        links.insert(1, wiring)
    text = HEAD + "wiring:\n" + "".join(f"  - {w}\n" for w in links)
    found = [p for p in problems(text) if p.path == path]
    assert found and message in found[0].message, problems(text)


def test_a_cycle_and_an_unfed_function_are_rejected() -> None:
    text = (
        HEAD
        + """\
wiring:
  - {from: ingress, to: fw}
  - {from: fw, to: rl}
  - {from: rl, to: flows}
  - {from: flows, to: rl}
"""
    )
    found = {p.path: p.message for p in problems(text)}
    assert found["functions[3].name"] == "function 'gone' has no input: wire a port to it"
    assert "cycle through rl, flows" in found["wiring"]


def test_ingress_feeds_exactly_one_function() -> None:
    text = (
        HEAD
        + """\
wiring:
  - {from: ingress, to: [fw, rl]}
  - {from: fw, to: flows}
  - {from: rl, to: gone}
"""
    )
    p = only(text)
    assert p.path == "wiring[0].to[1]" and "exactly one function (found: fw, rl)" in p.message
    assert p.line == 9


def test_per_function_settings_and_their_limits() -> None:
    text = """\
name: s
partitions: 4
replication: 3
functions:
  - name: fw
    function: firewall
    partitions: 8
    replication: 2
    standby_replicas: 1
    processing_guarantee: at_least_once
    instances: {min: 0, max: 6, lag_threshold: 50, cooldown: 20}
"""
    fw = parse_pipeline(text).function("fw")
    assert (fw.partitions, fw.replication, fw.standby_replicas) == (8, 2, 1)
    assert fw.processing_guarantee == "at_least_once" and fw.autoscaled
    assert (fw.instances, fw.min_instances, fw.max_instances) == (1, 0, 6)
    specs = parse_pipeline(text).topic_specs()
    assert specs["snf.s.ingress"].partitions == 8
    assert specs["snf.s.fw-state-changelog"].configs == {
        "min.insync.replicas": "1",
        "cleanup.policy": "compact",
        "segment.bytes": str(64 << 20),  # closed segments, which the cleaner compacts
        "segment.ms": "600000",
        "min.cleanable.dirty.ratio": "0.1",
        "delete.retention.ms": "3600000",
    }
    assert specs["snf.s.egress"].replication == 3  # the pipeline's default
    assert specs["snf.s.egress"].configs["min.insync.replicas"] == "2"

    p = only(text.replace("max: 6", "max: 9"))
    assert (p.path, p.message) == (
        "functions[0].instances.max",
        "max (9) must not exceed partitions (8)",
    )
    p = only(text.replace("min: 0", "min: 7"))
    assert p.path == "functions[0].instances" and "min (7) must not exceed max (6)" in p.message
    p = only(text.replace("at_least_once", "twice"))
    assert p.path == "functions[0].processing_guarantee"
    assert parse_pipeline(text.replace("at_least_once", "exactly_once")).functions[0].journaled


def test_nat_rejects_partitions_that_leave_it_too_few_ports() -> None:
    text = """\
name: n
partitions: 64
functions:
  - {name: nat, function: nat, config: {inside: [10.0.0.0/8], public_ips: [192.0.2.1],
     ports: "1024-2047"}}
"""
    p = only(text)
    assert p.path == "partitions"
    assert "1024 public endpoints" in p.message and "use at most 16 partitions" in p.message
    parse_pipeline(text.replace("partitions: 64", "partitions: 16"))


def _frames() -> list[tuple[int, bytes]]:
    out = []
    for i in range(40):
        t = 10**9 + i * 10**6
        out.append((t, tcp4("10.0.0.1", "10.0.0.2", 1000 + i % 4, 80, flags="S")))
        out.append((t + 1, udp4("10.0.0.1", "10.0.0.3", 53, 53 + i % 3)))
    return out


def test_local_graph_run(tmp_path: Path) -> None:
    from tests.integration.test_suite_failover import _write

    capture = _write(tmp_path / "c.pcapng", [f for _, f in _frames()], 10**9)
    p = parse_pipeline(GRAPH)
    local = LocalPipeline(p)
    s = replay(
        [capture],
        4,
        local,
        ReplayOptions(progress=False, max_packets=16),
        keyers=local.ingress_hop.keyers,
    )
    local.end_of_input("end", s.last_ts_ns)
    col = local.collector
    totals = local.port_totals()
    assert totals["fw"] == {"in": 80, "pass": 40, "drop": 40}
    assert totals["gone"]["in"] == 40 + totals["rl"]["exceed"]  # fan-in
    assert totals["flows"]["in"] == totals["fw"]["pass"]  # the mirror sees all of fw.pass
    assert col.count(EGRESS) == totals["rl"]["pass"]
    assert col.conflicts == 0  # the mirror's copies were discarded
    assert len(col.records[("topic", "flow-records")]) == 4  # one per TCP flow
    assert split_keys(local) == []


def test_pipelines_on_one_cluster_share_no_name() -> None:
    from snf.pipeline.loader import load_pipeline

    seen: dict[str, str] = {}
    for path in sorted((REPO / "pipelines").glob("*.yaml")):
        p = load_pipeline(path)
        own = {*p.topic_specs(), *(f.group_id for f in p.functions)}
        own -= {t for t in own if not t.startswith("snf.")}  # topic:NAME is shared on purpose
        for name in own:
            assert name not in seen, f"{name} of {p.name} is also {seen[name]}'s"
            seen[name] = p.name
    assert len(seen) > 50
