"""Every function of the suite over the real broker: identical to --local on real captures.

Each pipeline in tests/integration/pipelines runs the eight real captures
through `snf run` twice, over Kafka and --local; the Wireshark file and every
side-port and record file must be byte-identical, and each run must show the
function really did something (rewrites, drops, alerts, records).
"""

from __future__ import annotations

import functools
import ipaddress
import json
from pathlib import Path

import dpkt
import pytest

from snf.harness.oneshot import RunOptions, RunResult, run_pipeline
from snf.ingress.replay import ReplayOptions
from snf.packet.rewrite import ipv4_header_ok, l4_checksum_ok
from snf.pipeline.model import EGRESS
from tests.conftest import traffic_dir

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
CAPTURES = sorted(traffic_dir().glob("*.pcap"))
SENT = 1305  # packets in the eight real captures


def run_both(
    pipeline: Path, brokers: str, tmp: Path, captures: list[Path] = CAPTURES
) -> tuple[RunResult, dict[str, bytes]]:
    """Run over Kafka and --local; assert identical files; return the Kafka run."""
    files: list[dict[str, bytes]] = []
    results = []
    for local in (True, False):
        tag = "local" if local else "kafka"
        out, events = tmp / f"{tag}.pcapng", tmp / f"{tag}-events"
        opts = RunOptions(
            out=out,
            events=events,
            local=local,
            brokers=brokers,
            timeout=60,
            replay=ReplayOptions(progress=False, max_packets=64),
        )
        results.append(run_pipeline(pipeline, captures, opts))
        found = {"out.pcapng": out.read_bytes()}
        found.update({p.name: p.read_bytes() for p in sorted(events.iterdir())})
        files.append(found)
    ref, got = files
    assert sorted(got) == sorted(ref)
    for name in ref:
        assert got[name] == ref[name], f"{name} differs between Kafka and --local"
    result = results[1]
    graph = result.pipeline.graph
    if not graph.discards:
        assert result.collector.total == result.replay.packets  # passed + dropped = sent
    if not graph.fan_out:
        assert result.collector.conflicts == 0
    return result, got


def _ipv4_packets(result: RunResult, where: tuple[str, str] = EGRESS) -> list[dpkt.ip.IP]:
    """IPv4 packets at a port whose original (in the capture) had valid checksums.

    A few real packets come with bad checksums (offloading, damage); a rewrite
    cannot be expected to repair those, only to keep good ones good.
    """
    originals = _originals()
    out = []
    for (_, seq), p in result.collector.packets.get(where, {}).items():
        ip = _l3(p.data)
        before = _l3(originals[seq])
        if isinstance(ip, dpkt.ip.IP) and isinstance(before, dpkt.ip.IP) and _checksums_ok(before):
            out.append(ip)
    return out


@functools.cache
def _originals() -> list[bytes]:
    """Every frame of CAPTURES in replay order: packet seq -> frame."""
    frames = []
    for path in CAPTURES:
        with path.open("rb") as f:
            frames += [bytes(buf) for _, buf in dpkt.pcap.Reader(f)]
    return frames


def _l3(frame: bytes) -> object:
    """dpkt's layer 3 of an Ethernet frame, through VLAN tags and MPLS pseudowires."""
    layer = dpkt.ethernet.Ethernet(frame).data
    while isinstance(layer, dpkt.ethernet.Ethernet):
        layer = layer.data
    return layer


def _checksums_ok(ip: dpkt.ip.IP) -> bool:
    raw = bytes(ip)
    if not ipv4_header_ok(raw, 0):
        return False
    if ip.mf or ip.offset:  # a fragment: its L4 checksum covers the whole datagram
        return True
    return l4_checksum_ok(raw, 0, ip.hl * 4)


def test_nat(kafka_bootstrap: str, tmp_path: Path) -> None:
    result, _ = run_both(HERE / "pipelines" / "nat.yaml", kafka_bootstrap, tmp_path)
    public = ipaddress.ip_network("198.51.100.0/30")
    translated = [ip for ip in _ipv4_packets(result) if ipaddress.ip_address(ip.src) in public]
    assert len(translated) > 100
    assert all(_checksums_ok(ip) for ip in translated)
    reasons = result.collector.reasons(("nat", "drop"))
    assert reasons["no_binding"] > 0  # replies in a capture go to inside addresses


def test_loadbalancer(kafka_bootstrap: str, tmp_path: Path) -> None:
    result, _ = run_both(HERE / "pipelines" / "loadbalancer.yaml", kafka_bootstrap, tmp_path)
    backends = {ipaddress.ip_address(a).packed for a in ("10.10.0.1", "10.10.0.2", "10.10.0.3")}
    backends |= {ipaddress.ip_address(a).packed for a in ("10.20.0.1", "10.20.0.2")}
    to_backend = [ip for ip in _ipv4_packets(result) if ip.dst in backends]
    assert len(to_backend) > 50
    assert all(_checksums_ok(ip) for ip in to_backend)
    # One backend per client flow, whatever partition and batch it came in.
    chosen: dict[tuple, set] = {}
    for ip in to_backend:
        l4 = ip.data
        chosen.setdefault((ip.src, l4.sport), set()).add((ip.dst, l4.dport))
    assert all(len(b) == 1 for b in chosen.values())


def test_ratelimit_chain_rekeys_between_policers(kafka_bootstrap: str, tmp_path: Path) -> None:
    result, _ = run_both(HERE / "pipelines" / "ratelimit.yaml", kafka_bootstrap, tmp_path)
    col = result.collector
    assert col.reasons(("per-src", "exceed"))["rate"] > 0
    marked = [ip for ip in _ipv4_packets(result) if ip.tos >> 2 == 8]
    assert marked and all(ipv4_header_ok(bytes(ip), 0) for ip in marked)


def test_ids(kafka_bootstrap: str, tmp_path: Path) -> None:
    result, files = run_both(HERE / "pipelines" / "ids.yaml", kafka_bootstrap, tmp_path)
    alerts = [json.loads(line) for line in files["ids.alerts.jsonl"].splitlines()]
    sids = {a["sid"] for a in alerts}
    assert {1000001, 1000002, 1000005, 1000007} <= sids
    fields = {"ts", "packet_id", "sid", "rev", "msg", "action", "proto", "src", "sport"}
    assert all(fields | {"dst", "dport"} <= set(a) for a in alerts)
    drops = result.collector.reasons(("ids", "drop"))
    assert any(r.startswith("sid:") for r in drops)


def test_flowmon_totals_equal_the_traffic(kafka_bootstrap: str, tmp_path: Path) -> None:
    result, files = run_both(HERE / "pipelines" / "flowmon.yaml", kafka_bootstrap, tmp_path)
    records = [json.loads(line) for line in files["flows.flows.jsonl"].splitlines()]
    packets = sum(r["packetDeltaCount"] + r["reversePacketDeltaCount"] for r in records)
    octets = sum(r["octetDeltaCount"] + r["reverseOctetDeltaCount"] for r in records)
    ip_packets, ip_octets = 0, 0
    for p in result.collector.packets[EGRESS].values():
        length = _ip_length(p.data, p.linktype)
        if length is not None:
            ip_packets += 1
            ip_octets += length
    assert (packets, octets) == (ip_packets, ip_octets)
    reasons = {r["flowEndReason"] for r in records}
    assert {"forced end", "idle timeout", "end of flow detected"} <= reasons


def _ip_length(frame: bytes, linktype: int) -> int | None:
    """IP-layer bytes of a frame (IPv4 total length, IPv6 payload + 40), via dpkt."""
    assert linktype == 1  # the real captures are all Ethernet
    ip = _l3(frame)
    if isinstance(ip, dpkt.ip.IP):
        return ip.len
    if isinstance(ip, dpkt.ip6.IP6):
        return ip.plen + 40
    return None


def test_a_flush_of_many_flows_arrives_whole(kafka_bootstrap: str, tmp_path: Path) -> None:
    """20,000 open flows at the end: the flush spans many record blocks per partition."""
    from snf.packet.pcapng_writer import PcapngWriter
    from tests.packets import udp4

    capture = tmp_path / "many.pcapng"
    with PcapngWriter(capture) as w:
        for i in range(20_000):
            client = f"10.{i // 60000}.{(i // 250) % 240}.{i % 250 + 1}"
            w.write(1, 1_700_000_000 * 10**9 + i * 1000, udp4(client, "192.0.2.1", 1024 + i, 53))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: t-flush\nfunctions:\n  - {name: f, function: flowmon}\n")
    _, files = run_both(pipeline, kafka_bootstrap, tmp_path, [capture])
    records = files["f.flows.jsonl"].splitlines()
    assert len(records) == 20_000
    assert all(json.loads(r)["flowEndReason"] == "forced end" for r in records[:100])
