"""pipelines/vpn.yaml on its bundled capture, --local (no broker), checked by scapy.

The capture (pipelines/captures/generate_vpn.py) is gateway A's wire: A's LAN
in clear, B's side as ESP that scapy sealed with the b-to-a SA, and hostile
packets. Every drop is counted by reason, and scapy, an ESP implementation
snf did not write, must open every ESP packet that leaves with the a-to-b
SA's demo key, finding the very packet that went in.
"""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

import dpkt
import pytest
from scapy.compat import raw
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP, SecurityAssociation

from snf.ingress.replay import ReplayOptions, replay
from snf.packet.capture_file import read_capture
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import EGRESS
from snf.runtime.local import LocalPipeline

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipelines" / "vpn.yaml"
CAPTURE = ROOT / "pipelines" / "captures" / "vpn.pcapng"
GATEWAY, PEER = "192.0.2.1", "198.51.100.2"
ETH = 14  # every frame of the capture is Ethernet II, IPv4


def peer_sa(spi: int, key_file: str, src: str, dst: str) -> SecurityAssociation:
    """scapy's tunnel-mode SA (without a tunnel header it would keep the outer one)."""
    key = bytes.fromhex((ROOT / "pipelines" / "keys" / key_file).read_text().strip())
    return SecurityAssociation(
        ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=key, tunnel_header=IP(src=src, dst=dst)
    )


def run_local(heads: bool = False, path: Path = PIPELINE) -> LocalPipeline:
    pipeline = load_pipeline(path, base_dir=PIPELINE.parent)
    run = LocalPipeline(pipeline, heads=heads)
    summary = replay(
        [CAPTURE],
        pipeline.partitions,
        run,
        ReplayOptions(progress=False),
        keyers=run.ingress_hop.keyers,
    )
    run.end_of_input("end", summary.last_ts_ns)
    assert run.collector.total == summary.packets == 583  # every packet accounted for
    return run


@pytest.fixture(scope="module")
def local() -> LocalPipeline:
    return run_local()


@pytest.fixture(scope="module")
def wire() -> list[bytes]:
    """The capture's frames by packet id (its position in the file)."""
    return [p.data for p in read_capture(CAPTURE)]


def egress(local: LocalPipeline) -> dict[int, bytes]:
    return {seq: p.data for (_, seq), p in local.collector.packets[EGRESS].items()}


def test_counters_per_reason(local: LocalPipeline) -> None:
    col = local.collector
    assert col.reasons(("decrypt", "drop")) == Counter(
        {
            "replay": 2,  # exact copies of the ESP packets with seq 5 and 40
            "auth_failed": 1,  # one ciphertext byte flipped
            "unknown_spi": 2,  # SPI 0x1002: an SA we do not have
            "policy_mismatch": 1,  # authentic, inner 10.3.0.5 is not B's LAN
            "unprotected": 1,  # B's LAN in clear from the internet side
            "no_policy": 2,  # 192.168.7.7: no SA nor policy covers it
        }
    )
    assert col.reasons(("firewall", "drop")) == Counter({"default": 3})  # B -> A RDP SYNs
    assert col.reasons(("encrypt", "drop")) == Counter({"too_big": 1})  # 1500 bytes, no DF
    assert col.count(EGRESS) == 583 - 9 - 3 - 1
    decrypt, encrypt = local.engines["decrypt"].counters, local.engines["encrypt"].counters
    assert decrypt["decrypted"] == 201  # the peer sealed 203: one forged, one outside
    assert encrypt["encrypted"] == 272
    assert encrypt["pass:pmtu"] == 1  # 1500 bytes with DF: ICMP "fragmentation needed"
    assert encrypt["seq_reserved"] == 1  # one block of 4096 numbers covers the capture
    assert not col.record_list(("decrypt", "events")) and not col.record_list(("encrypt", "events"))


def test_on_four_partitions_the_firewall_still_sees_each_flow_in_order(
    local: LocalPipeline, tmp_path: Path
) -> None:
    """decrypt keys A's clear traffic to B by the inbound SA of its replies, so a
    flow's two halves leave it from one partition, in order, and the firewall
    drops no reply that overtook its SYN. (Which sequence number each ESP packet
    gets follows the order packets reach the SA's partition from four firewall
    partitions, so the sealed bytes may differ; vpn.yaml keeps one partition.)"""
    path = tmp_path / "vpn4.yaml"
    path.write_text(PIPELINE.read_text().replace("\npartitions: 1 ", "\npartitions: 4 "))
    four = run_local(path=path)
    assert four.pipeline.partitions == 4
    for fn in ("decrypt", "firewall", "encrypt"):
        assert four.collector.reasons((fn, "drop")) == local.collector.reasons((fn, "drop"))
    assert set(egress(four)) == set(egress(local))
    assert four.engines["encrypt"].counters["encrypted"] == 272


def test_counters_match_the_capture(local: LocalPipeline, wire: list[bytes]) -> None:
    """The counts above, recounted from the capture itself."""
    kinds: Counter[str] = Counter()
    for data in wire:
        ip = IP(data[ETH:])
        if ip.proto == 50:
            kinds[f"esp {ip[ESP].spi:#x}"] += 1
        elif ip.src.startswith("10.1.") and ip.dst.startswith("10.2."):
            kinds["a to b"] += 1
    assert kinds == {"esp 0x1001": 203 + 2, "esp 0x1002": 2, "a to b": 272 + 2}  # replays, big


def test_scapy_opens_every_esp_packet_that_leaves(local: LocalPipeline, wire: list[bytes]) -> None:
    sa = peer_sa(0x2001, "vpn-a-to-b.hex", GATEWAY, PEER)
    seqs, tos = [], set()
    for pid, data in sorted(egress(local).items()):
        outer = IP(data[ETH:])
        if outer.proto != 50:
            leak = outer.src.startswith("10.1.") and outer.dst.startswith("10.2.")
            assert not leak, f"packet {pid}: A -> B left in clear"
            continue
        assert (outer.src, outer.dst, outer.ttl, outer.flags) == (GATEWAY, PEER, 64, 2)  # DF
        went_in = wire[pid][ETH:]
        assert outer.tos == went_in[1]  # DSCP and ECN copied from the inner header
        tos.add(outer.tos)
        assert outer.id == outer[ESP].seq & 0xFFFF
        assert outer[ESP].spi == 0x2001
        seqs.append(outer[ESP].seq)
        assert raw(sa.decrypt(outer)) == went_in
    assert seqs == list(range(1, 273))  # one partition: capture order, from 1, none twice
    assert tos == {0, 0x02, 0x20, 0x48}  # plain, ECT(0) (HTTPS), CS1 (syslog), AF21 (SSH)


def test_every_b_packet_leaves_as_scapy_sealed_it(local: LocalPipeline, wire: list[bytes]) -> None:
    sa = peer_sa(0x1001, "vpn-b-to-a.hex", PEER, GATEWAY)
    out = egress(local)
    opened = 0
    for pid, data in enumerate(wire):
        outer = IP(data[ETH:])
        if outer.proto == 50 and outer.dst == GATEWAY and pid in out:
            assert out[pid][ETH:] == raw(sa.decrypt(outer))
            assert out[pid][:ETH] == data[:ETH]  # the link header stays
            opened += 1
    assert opened == 201 - 3  # the firewall refused the RDP SYNs


def test_pmtu_answer_names_the_largest_inner_packet_that_fits(
    local: LocalPipeline, wire: list[bytes]
) -> None:
    answers = [
        (pid, dpkt.ethernet.Ethernet(d).data)
        for pid, d in egress(local).items()
        if dpkt.ethernet.Ethernet(d).data.p == dpkt.ip.IP_PROTO_ICMP
        and dpkt.ethernet.Ethernet(d).data.data.type == 3
    ]
    assert len(answers) == 1
    pid, ip = answers[0]
    big = dpkt.ethernet.Ethernet(wire[pid]).data
    assert (ip.src, ip.dst) == (socket.inet_aton(GATEWAY), big.src)
    icmp = ip.data
    assert (icmp.type, icmp.code) == (3, 4)
    # 1500 - 20 (outer IPv4) - 8 (SPI, seq) - 8 (IV) - 2 (pad length, next header)
    # - 16 (ICV) = 1446, and 1446 + 2 is a multiple of 4: no padding.
    assert int.from_bytes(bytes(icmp)[6:8], "big") == 1446
    assert bytes(icmp)[8:] == bytes(big)[:28]  # the quote: its header and 8 bytes


def test_the_kafka_sinks_view_is_the_same_bytes(local: LocalPipeline) -> None:
    # heads=True cuts and joins where a Kafka run would. Nothing after a gateway
    # is cut (rewrites_payload): the ingress copy of a decrypted packet is its
    # ciphertext, which would make a wrong tail.
    assert egress(run_local(heads=True)) == egress(local)
