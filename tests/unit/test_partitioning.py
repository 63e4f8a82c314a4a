"""Partitioning across functions, end to end in --local: state is never split.

If a function's state for one key were written on two partitions, its
decisions would depend on which partition a packet happened to reach. These
tests run whole chains and check, for every table of every function, that
each key lives on exactly one partition, and that a flow-keyed chain gives
the same results whatever the partition count.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from snf.core.tables import CONTROL_TABLE
from snf.ingress.replay import ReplayOptions, replay
from snf.pipeline.loader import load_pipeline, parse_pipeline
from snf.runtime.local import LocalPipeline
from tests.conftest import traffic_dir
from tests.packets import tcp4, udp4

ROOT = Path(__file__).resolve().parents[2]
NS = 10**9


def run(local: LocalPipeline, captures: list[Path]) -> LocalPipeline:
    summary = replay(
        captures,
        local.pipeline.partitions,
        local,
        ReplayOptions(progress=False, max_packets=64),
        keyers=local.ingress_hop.keyers,
    )
    local.end_of_input("end", summary.last_ts_ns)
    return local


def split_keys(local: LocalPipeline) -> list[tuple[str, str, bytes]]:
    """(function, table, key) found on more than one partition."""
    found = []
    for name, stores in local.stores.items():
        for table in stores[0]:
            if table == CONTROL_TABLE:
                continue  # one flush count per partition, by design
            seen: dict[bytes, int] = {}
            for p, partition_stores in enumerate(stores):
                for key in partition_stores[table].data:
                    if seen.setdefault(key, p) != p:
                        found.append((name, table, key))
    return found


@pytest.mark.parametrize(
    "pipeline",
    ["edge.yaml", "monitoring.yaml", "perimeter.yaml"],
)
def test_example_chains_never_split_state(pipeline: str) -> None:
    name = pipeline.removesuffix(".yaml")
    capture = ROOT / "pipelines" / "captures" / f"{name}.pcapng"
    captures = [capture] if capture.exists() else sorted(traffic_dir().glob("*.pcap"))
    local = run(LocalPipeline(load_pipeline(ROOT / "pipelines" / pipeline)), captures)
    assert sum(len(s[t].data) for stores in local.stores.values() for s in stores for t in s) > 0
    assert split_keys(local) == []


@pytest.mark.parametrize(
    "pipeline", ["nat.yaml", "loadbalancer.yaml", "ratelimit.yaml", "flowmon.yaml"]
)
def test_suite_pipelines_never_split_state_on_real_captures(pipeline: str) -> None:
    path = ROOT / "tests" / "integration" / "pipelines" / pipeline
    local = run(LocalPipeline(load_pipeline(path)), sorted(traffic_dir().glob("*.pcap")))
    assert split_keys(local) == []


def _chain(partitions: int) -> str:
    return f"""\
name: inv
partitions: {partitions}
functions:
  - {{name: fw, function: firewall, config: {{default: allow, timeouts: {{udp: 2}}}}}}
  - {{name: police, function: ratelimit, config: {{key: flow, rate: 10pps, burst: 5}}}}
  - {{name: flows, function: flowmon, config: {{idle_timeout: 0.5}}}}
"""


def test_flow_keyed_chain_results_do_not_depend_on_the_partition_count(tmp_path: Path) -> None:
    rng = random.Random(7)
    from snf.packet.pcapng_writer import PcapngWriter

    capture = tmp_path / "t.pcapng"
    t = 1_700_000_000 * NS
    with PcapngWriter(capture) as w:
        for _ in range(3000):
            t += rng.randrange(0, NS // 200)
            a, b = f"10.0.0.{rng.randrange(1, 5)}", f"192.0.2.{rng.randrange(1, 3)}"
            sport, dport = rng.randrange(1024, 1027), rng.choice([53, 80])
            if rng.random() < 0.5:
                a, b, sport, dport = b, a, dport, sport
            frame = (
                udp4(a, b, sport, dport)
                if dport == 53 or sport == 53
                else (tcp4(a, b, sport, dport, flags=rng.choice(["S", "A", "FA", "R"])))
            )
            w.write(1, t, frame)
    results = []
    for n in (1, 3, 4, 7):
        local = run(LocalPipeline(parse_pipeline(_chain(n))), [capture])
        col = local.collector
        results.append(
            (
                {w: {k: (p.data, p.reason) for k, p in b.items()} for w, b in col.packets.items()},
                {w: sorted(b) for w, b in col.records.items()},
            )
        )
        assert split_keys(local) == []
    assert all(r == results[0] for r in results[1:])
    assert results[0][0][("police", "exceed")]  # the policer really decided something
