"""The example pipelines on their bundled captures, --local (no broker).

tests/integration/test_examples.py runs the same over Kafka and compares.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path

import dpkt
import pytest

from snf.ingress.replay import ReplayOptions, replay
from snf.packet.rewrite import ipv4_header_ok, l4_checksum_ok
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import EGRESS
from snf.runtime.local import LocalPipeline

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"


def run_local(name: str) -> LocalPipeline:
    pipeline = load_pipeline(PIPELINES / f"{name}.yaml")
    local = LocalPipeline(pipeline)
    capture = PIPELINES / "captures" / f"{name}.pcapng"
    summary = replay(
        [capture],
        pipeline.partitions,
        local,
        ReplayOptions(progress=False),
        keyers=local.ingress_hop.keyers,
    )
    local.end_of_input("end", summary.last_ts_ns)
    assert local.collector.total == summary.packets  # every packet accounted for
    return local


@pytest.fixture(scope="module")
def edge() -> LocalPipeline:
    return run_local("edge")


@pytest.fixture(scope="module")
def monitoring() -> LocalPipeline:
    return run_local("monitoring")


def _ips(local: LocalPipeline, where: tuple[str, str] = EGRESS) -> list[dpkt.ip.IP]:
    out = []
    for p in local.collector.packets.get(where, {}).values():
        ip = dpkt.ethernet.Ethernet(p.data).data
        if isinstance(ip, dpkt.ip.IP):
            out.append(ip)
    return out


def _in(addr: bytes, net: str) -> bool:
    return ipaddress.ip_address(addr) in ipaddress.ip_network(net)


def test_edge_batches_are_never_split_between_stages(edge: LocalPipeline) -> None:
    hops = [h.mode for h in edge.hops]
    assert hops == ["key", "key", "key", "keep"]
    routers = [r for by_dest in edge.routers.values() for r in by_dest.values()]
    assert [r.split_batches for r in routers] == [0, 0, 0]


def test_edge_drops_only_what_it_should(edge: LocalPipeline) -> None:
    col = edge.collector
    assert col.reasons(("fw", "drop")) == Counter({"default": 12, "malformed": 1})  # SSH scan
    assert col.reasons(("nat", "drop")) == Counter({"no_binding": 5})  # the SIP probes
    assert col.count(("lb", "drop")) == 0


def test_edge_office_traffic_leaves_through_the_nat(edge: LocalPipeline) -> None:
    out = _ips(edge)
    assert not [ip for ip in out if _in(ip.src, "10.1.0.0/16") and not _in(ip.dst, "10.1.0.0/16")]
    natted = [ip for ip in out if _in(ip.src, "198.51.100.0/30")]
    back_in = [ip for ip in out if _in(ip.dst, "10.1.0.0/16")]
    assert len(natted) > 250 and len(back_in) > 250
    for ip in natted + back_in:
        assert ipv4_header_ok(bytes(ip), 0) and l4_checksum_ok(bytes(ip), 0, ip.hl * 4)


def test_edge_vip_traffic_reaches_backends_and_replies_come_from_the_vip(
    edge: LocalPipeline,
) -> None:
    out = _ips(edge)
    to_backends = Counter(ipaddress.ip_address(ip.dst) for ip in out if _in(ip.dst, "10.2.0.0/24"))
    assert sum(to_backends.values()) > 100 and len(to_backends) == 3
    assert not [ip for ip in out if _in(ip.src, "10.2.0.0/24")]  # rewritten to the VIP
    from_vip = [ip for ip in out if ip.src == ipaddress.ip_address("203.0.113.10").packed]
    assert len(from_vip) > 50
    assert all(ip.data.sport == 80 for ip in from_vip)


def test_edge_flow_records_cover_everything_that_left(edge: LocalPipeline) -> None:
    records = edge.collector.record_list(("flows", "flows"))
    packets = sum(r["packetDeltaCount"] + r["reversePacketDeltaCount"] for r in records)
    assert packets == len(_ips(edge))
    # After the NAT and the load balancer each direction leaves the edge in its
    # own form (out: from the public endpoint; in: to the internal one), so a
    # translated connection is recorded as two one-way flows, as a monitor on
    # each side of a real NAT would see it.
    natted = [r for r in records if r.get("sourceIPv4Address", "").startswith("198.51.100.")]
    assert natted and all(r["reversePacketDeltaCount"] == 0 for r in natted)
    assert {r["flowEndReason"] for r in records} >= {"forced end", "idle timeout"}


def test_monitoring_alerts_drops_and_policing(monitoring: LocalPipeline) -> None:
    col = monitoring.collector
    alerts = col.record_list(("ids", "alerts"))
    by_sid = Counter(a["sid"] for a in alerts)
    assert by_sid[2000001] == 5  # one per sqlmap request
    assert by_sid[2000002] == 1 and by_sid[2000003] == 1  # drops raise alerts too
    assert by_sid[2000004] == 40  # the ping sweep
    assert 2000005 not in by_sid  # pass rules never alert
    assert col.reasons(("ids", "drop")) == Counter({"sid:2000002": 1, "sid:2000003": 1})
    exceeded = col.reasons(("police", "exceed"))
    assert 1000 < exceeded["rate"] < 1300  # the flood, over 500 pps + 50 burst
    records = col.record_list(("flows", "flows"))
    assert sum(r["packetDeltaCount"] + r["reversePacketDeltaCount"] for r in records) == (
        col.count(EGRESS)
    )
