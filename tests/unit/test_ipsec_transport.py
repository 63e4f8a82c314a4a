"""Transport mode (RFC 4303 §3.1.1) against scapy, an ESP peer we did not write.

Host H1 runs snf; host H2 is scapy's SecurityAssociation with no tunnel header
(transport mode). For every cipher, IPv4 and IPv6: scapy seals and snf opens
to the very packet that was sealed; snf seals and scapy opens to the packet
that went in; and given snf's IV, scapy builds the same bytes, so ESP sits
where Linux and scapy put it (after IPv4 options; after IPv6 hop-by-hop,
routing, and destination options before a routing header) and the header
keeps the same fields. Then tampering, replays, the selector check on the
addresses ESP does not authenticate, fragments, the MTU, config errors, and
the state and partitioning shared with tunnel mode. tshark's check is in
test_ipsec_transport_tshark.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import ESP, IPSecIntegrityError, SecurityAssociation
from scapy.layers.l2 import GRE
from scapy.packet import Packet, Raw

from snf.functions.ipsec import IpsecConfig
from snf.functions.ipsec.esp import CIPHERS, KEY_BYTES
from snf.functions.ipsec.policy import sa_hash
from snf.packet.batch import PacketBatch
from snf.packet.parse import parse_packet_batch
from snf.packet.rewrite import ipv4_header_ok
from tests.packets import ether, fragments4, fragments6
from tests.unit.test_ipsec import Gw

HOSTS = {4: ("192.0.2.10", "198.51.100.20"), 6: ("2001:db8:1::10", "2001:db8:2::20")}
SPI_OUT, SPI_IN = 0x3001, 0x3002  # H1 -> H2, H2 -> H1
T0 = 10**18
BOTH = pytest.mark.parametrize(("cipher", "version"), [(c, v) for c in CIPHERS for v in (4, 6)])


def material(cipher: str, spi: int) -> bytes:
    return bytes((spi * 7 + 11 * i + 3) % 256 for i in range(KEY_BYTES[cipher]))


def transport_sas(
    mp: pytest.MonkeyPatch, cipher: str, version: int, me: int = 0, **sel: Any
) -> list[dict[str, Any]]:
    """Host `me`'s (0: H1, 1: H2) two transport SAs toward the other host."""
    local, peer = HOSTS[version][me], HOSTS[version][1 - me]
    spis = (SPI_OUT, SPI_IN) if me == 0 else (SPI_IN, SPI_OUT)
    sas = []
    for direction, spi in zip(("out", "in"), spis, strict=True):
        mp.setenv(f"SNF_TRANSPORT_{spi:X}", material(cipher, spi).hex())
        selector = {"local": local, "remote": peer, **sel}
        sas.append(
            {
                "name": f"{direction}-{spi:x}",
                "direction": direction,
                "mode": "transport",
                "spi": spi,
                "local": local,
                "peer": peer,
                "cipher": cipher,
                "key_env": f"SNF_TRANSPORT_{spi:X}",
                "selectors": [selector],
            }
        )
    return sas


def host(mp: pytest.MonkeyPatch, cipher: str, version: int, me: int = 0, **config: Any) -> Gw:
    return Gw({"sas": transport_sas(mp, cipher, version, me), **config})


def scapy_sa(cipher: str, spi: int) -> SecurityAssociation:
    """scapy's transport-mode SA (no tunnel_header) for the same key material."""
    key = material(cipher, spi)
    if cipher.startswith("aes-gcm"):
        return SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=key)
    aes = 16 if "128" in cipher else 32
    return SecurityAssociation(
        ESP,
        spi=spi,
        crypt_algo="AES-CBC",
        crypt_key=key[:aes],
        auth_algo="SHA2-256-128",
        auth_key=key[aes:],
    )


def packets(version: int, src: str, dst: str) -> list[bytes]:
    """What two hosts (or GRE routers) send each other, with the header shapes
    transport mode must keep: IPv4 options, IPv6 extension headers."""
    if version == 4:

        def ip(**kw: Any) -> Packet:
            return IP(src=src, dst=dst, ttl=17, id=0x1234, tos=0xB9, flags="DF", **kw)

        shapes = [
            ip() / UDP(sport=5353, dport=4000) / Raw(b"query " * 9),
            ip() / TCP(sport=40000, dport=443, flags="PA", seq=7) / Raw(bytes(range(200))),
            ip(options=[IPOption_Router_Alert()]) / UDP(sport=1, dport=2) / Raw(b"opt"),
            ip() / ICMP(id=9, seq=1) / Raw(b"ping"),
            ip() / GRE() / IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=7, dport=8),
            ip() / UDP(sport=1, dport=2),
        ]
    else:

        def ip(**kw: Any) -> Packet:
            return IPv6(src=src, dst=dst, tc=0xB9, fl=0x12345, hlim=17, **kw)

        hop, dest = IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()
        shapes = [
            ip() / UDP(sport=5353, dport=4000) / Raw(b"query " * 9),
            ip() / TCP(sport=40000, dport=443, flags="PA", seq=7) / Raw(bytes(range(200))),
            ip() / hop / UDP(sport=1, dport=2) / Raw(b"hop-by-hop"),
            ip() / hop / IPv6ExtHdrRouting() / dest / TCP(sport=3, dport=4, flags="S"),
            ip() / dest / UDP(sport=5, dport=6) / Raw(b"dest-opt"),
            ip() / ICMPv6EchoRequest(id=9, data=b"ping"),
            ip() / GRE() / IPv6(src="fd00:1::5", dst="fd00:2::9") / UDP(sport=7, dport=8),
        ]
    return [raw(p) for p in shapes]


def frame(ip: bytes) -> bytes:
    return ether(ip, 0x0800 if ip[0] >> 4 == 4 else 0x86DD)


def parse(ip: bytes) -> Packet:
    return IP(ip) if ip[0] >> 4 == 4 else IPv6(ip)


def sealed_by_scapy(cipher: str, ips: list[bytes], first: int = 1) -> list[bytes]:
    sa = scapy_sa(cipher, SPI_IN)
    return [frame(raw(sa.encrypt(parse(ip), seq_num=n))) for n, ip in enumerate(ips, first)]


@BOTH
def test_scapy_seals_snf_opens_to_the_very_packet(
    monkeypatch: pytest.MonkeyPatch, cipher: str, version: int
) -> None:
    h2, h1 = HOSTS[version][1], HOSTS[version][0]
    ips = packets(version, h2, h1)
    gw = host(monkeypatch, cipher, version)
    out = gw(sealed_by_scapy(cipher, ips))
    assert (out.ports, out.reasons) == (["pass"] * len(ips), [""] * len(ips))
    assert out.frames == [frame(ip) for ip in ips]
    assert gw.engine.counters["decrypted"] == len(ips)


def esp_at(sealed: bytes) -> int:
    return len(sealed) - len(raw(parse(sealed)[ESP]))


@BOTH
def test_snf_seals_scapy_opens_and_builds_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, cipher: str, version: int
) -> None:
    ips = packets(version, *HOSTS[version])
    out = host(monkeypatch, cipher, version)([frame(ip) for ip in ips])
    assert (out.ports, out.reasons) == (["pass"] * len(ips), [""] * len(ips))
    iv_len = 8 if cipher.startswith("aes-gcm") else 16
    for seq, (ip, sealed_frame) in enumerate(zip(ips, out.frames, strict=True), start=1):
        assert sealed_frame[:14] == frame(ip)[:14]
        sealed = sealed_frame[14:]
        at = esp_at(sealed)
        iv = sealed[at + 8 : at + 8 + iv_len]
        theirs = scapy_sa(cipher, SPI_OUT)
        assert raw(theirs.encrypt(parse(ip), seq_num=seq, iv=iv)) == sealed
        assert raw(theirs.decrypt(parse(sealed))) == ip
        if version == 4:  # kept: TOS, id, flags, TTL, addresses; proto 50, length, checksum
            assert sealed[:2] + sealed[4:9] + sealed[12:20] == ip[:2] + ip[4:9] + ip[12:20]
            assert (sealed[9], int.from_bytes(sealed[2:4], "big")) == (50, len(sealed))
            assert ipv4_header_ok(sealed, 0)
        else:  # kept: traffic class, flow label, hop limit, addresses
            assert sealed[:4] + sealed[7:40] == ip[:4] + ip[7:40]


@pytest.mark.parametrize("version", [4, 6])
def test_a_round_trip_between_two_snf_hosts_keeps_checksums_valid(
    monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    h1 = host(monkeypatch, "aes-cbc-256-hmac-sha256", version)
    h2 = host(monkeypatch, "aes-cbc-256-hmac-sha256", version, me=1)
    there = [frame(ip) for ip in packets(version, *HOSTS[version])]
    back = [frame(ip) for ip in packets(version, *reversed(HOSTS[version]))]
    arrived = h2(h1(there).frames)
    opened = h1(h2(back).frames)
    assert (arrived.frames, opened.frames) == (there, back)
    for f in arrived.frames + opened.frames:  # scapy recomputes every checksum: same bytes
        again = parse(f[14:])
        for layer in again.iterpayloads():
            for name in ("chksum", "cksum"):
                if layer.fields.get(name) is not None:
                    setattr(layer, name, None)
        assert raw(again) == f[14:]


def tamper(f: bytes, at: int, bit: int = 0x01) -> bytes:
    out = bytearray(f)
    out[at] ^= bit
    return bytes(out)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_tampering_fails_and_the_unauthenticated_header_is_still_checked(
    monkeypatch: pytest.MonkeyPatch, cipher: str
) -> None:
    h2, h1 = HOSTS[4][1], HOSTS[4][0]
    sealed = sealed_by_scapy(cipher, packets(4, h2, h1)[:2] * 3)
    spoofed = IP(sealed[3][14:])
    spoofed.src = "198.51.100.21"  # ESP does not cover the IP header: the selectors do
    del spoofed.chksum
    gw = host(monkeypatch, cipher, 4)
    out = gw([tamper(sealed[0], 14 + 20 + 30), tamper(sealed[1], -1), frame(raw(spoofed))])
    assert out.reasons == ["auth_failed", "auth_failed", "policy_mismatch"]
    ttl = tamper(sealed[4], 14 + 8)  # not covered either, and harmless: passes as it came
    assert gw([ttl]).reasons == [""] and gw.engine.counters["decrypted"] == 1
    ours = host(monkeypatch, cipher, 4)([frame(packets(4, h1, h2)[0])]).frames[0]
    with pytest.raises(IPSecIntegrityError):
        scapy_sa(cipher, SPI_OUT).decrypt(IP(tamper(ours, -1)[14:]))


def test_replays_and_old_numbers_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    h2, h1 = HOSTS[6][1], HOSTS[6][0]
    gw = Gw(
        {"sas": [dict(sa, replay_window=32) for sa in transport_sas(monkeypatch, CIPHERS[0], 6)]}
    )
    sealed = sealed_by_scapy(CIPHERS[0], packets(6, h2, h1)[:3])
    assert gw(sealed).reasons == ["", "", ""]
    late = sealed_by_scapy(CIPHERS[0], packets(6, h2, h1)[:1], first=100)
    assert gw([sealed[1], *late, sealed[2], sealed[0]]).reasons == [
        "replay",
        "",
        "outside_window",
        "outside_window",
    ]


def test_dummy_packets_stay_dummy(monkeypatch: pytest.MonkeyPatch) -> None:
    h2, h1 = HOSTS[6][1], HOSTS[6][0]
    dummy = raw(IPv6(src=h2, dst=h1, nh=59))
    out = host(monkeypatch, CIPHERS[1], 6)(sealed_by_scapy(CIPHERS[1], [dummy]))
    assert out.reasons == ["dummy"]


def test_fragments_are_never_protected(monkeypatch: pytest.MonkeyPatch) -> None:
    h1, h2 = HOSTS[4]
    six = HOSTS[6]
    v4 = Gw({"sas": transport_sas(monkeypatch, CIPHERS[0], 4), "default": "bypass"})
    out = v4([*fragments4(h1, h2), *fragments4(h1, "203.0.113.9")])
    assert out.reasons == ["fragment"] * 3 + ["", "", ""]  # other hosts' fragments: policy
    v6 = host(monkeypatch, CIPHERS[0], 6)
    atomic = raw(IPv6(src=six[0], dst=six[1]) / IPv6ExtHdrFragment() / UDP(sport=1, dport=2))
    assert v6([*fragments6(*six), frame(atomic)]).reasons == ["fragment"] * 4
    # Inbound: ESP in a fragment, and a fragment sealed inside ESP.
    sealed = bytearray(sealed_by_scapy(CIPHERS[0], packets(4, h2, h1)[:1])[0])
    sealed[14 + 6] |= 0x20  # more fragments
    inside = IPv6(src=six[1], dst=six[0]) / IPv6ExtHdrFragment(m=1) / UDP(sport=1, dport=2)
    assert v4([bytes(sealed)]).reasons == ["fragment"]
    assert v6(sealed_by_scapy(CIPHERS[0], [raw(inside)])).reasons == ["fragment"]


@pytest.mark.parametrize(
    ("cipher", "version", "fits"),
    [("aes-gcm-256", 4, 1466), ("aes-gcm-256", 6, 1466), ("aes-cbc-128-hmac-sha256", 4, 1458)],
)
def test_over_the_path_mtu_is_dropped_with_no_icmp_to_answer_from(
    monkeypatch: pytest.MonkeyPatch, cipher: str, version: int, fits: int
) -> None:
    # The sizes ipsec.md gives: 1500 - 34 for GCM; CBC pads to 16 bytes (1458 + 2 - 20 = 1440).
    gw = host(monkeypatch, cipher, version)
    src, dst = HOSTS[version]
    ip = IP(src=src, dst=dst, flags="DF") if version == 4 else IPv6(src=src, dst=dst)
    header = len(ip / UDP())
    sizes = (fits, fits + 1, fits + 3)
    ips = [raw(ip / UDP(sport=1, dport=2) / Raw(bytes(n - header))) for n in sizes]
    assert [len(ip) for ip in ips] == list(sizes)
    out = gw([frame(ip) for ip in ips])
    assert out.reasons == ["", "too_big", "too_big"] and out.ports[1:] == ["drop", "drop"]
    assert len(out.frames[0]) - 14 == 1500


def test_selectors_keep_their_protocol_and_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    # GRE over IPsec between two routers: only protocol 47 is the SA's.
    h1, h2 = HOSTS[4]
    sas = transport_sas(monkeypatch, CIPHERS[2], 4, proto=47)
    gw = Gw({"sas": sas, "policies": [{"action": "bypass", "local": h1, "remote": "0.0.0.0/0"}]})
    gre, udp = packets(4, h1, h2)[4], packets(4, h1, h2)[0]
    elsewhere = packets(4, h1, "203.0.113.9")[4]  # GRE to another router: not this SA's
    out = gw([frame(gre), frame(udp), frame(elsewhere)])
    assert out.reasons == ["", "", ""] and out.frames[1:] == [frame(udp), frame(elsewhere)]
    assert out.frames[0][14 + 9] == 50 and len(out.frames[0]) > len(frame(gre))
    inbound = sealed_by_scapy(CIPHERS[2], [packets(4, h2, h1)[4], packets(4, h2, h1)[0]])
    assert gw(inbound).reasons == ["", "policy_mismatch"]


def config_error(sas: list[dict[str, Any]]) -> str:
    with pytest.raises(ValidationError) as err:
        IpsecConfig.model_validate({"sas": sas})
    return str(err.value)


def test_transport_config_errors_name_the_sa_and_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, inbound = transport_sas(monkeypatch, CIPHERS[0], 4)
    h1, h2 = HOSTS[4]
    wide = dict(out, selectors=[{"local": "192.0.2.0/24", "remote": h2}])
    text = config_error([wide])
    assert "'out-3001' is in transport mode" in text and "selectors[0].local" in text
    assert "local address 192.0.2.10" in text
    extra = dict(inbound, selectors=[out["selectors"][0], {"local": h1, "remote": [h2, h1]}])
    assert "selectors[1].remote must be its peer address 198.51.100.20" in config_error([extra])
    assert "mode" in config_error([dict(out, mode="beet")])
    as_hosts = dict(out, selectors=[{"local": f"{h1}/32", "remote": [f"{h2}/32"], "proto": 47}])
    IpsecConfig.model_validate({"sas": [as_hosts]})  # a /32 is the address alone
    tunnel = dict(wide, mode="tunnel")
    assert IpsecConfig.model_validate({"sas": [tunnel]}).sas[0].mode == "tunnel"
    del tunnel["mode"]
    assert IpsecConfig.model_validate({"sas": [tunnel]}).sas[0].mode == "tunnel"  # the default


def test_partitions_and_state_are_tunnel_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    h1, h2 = HOSTS[4]
    gw = host(monkeypatch, CIPHERS[0], 4, seq_block=16)
    frames = [frame(packets(4, h1, h2)[0]), *sealed_by_scapy(CIPHERS[0], packets(4, h2, h1)[:1])]
    batch = PacketBatch.from_rows(1, [(T0, len(f), f, 1, i, "") for i, f in enumerate(frames)])
    keys = list(gw.core.key_hashes(batch, parse_packet_batch(batch)))
    assert keys == [sa_hash(True, SPI_OUT), sa_hash(False, SPI_IN)]
    assert gw(frames).reasons == ["", ""]
    assert gw.stores["seq"].data == {SPI_OUT.to_bytes(4, "big"): 17}
    spi_in = SPI_IN.to_bytes(4, "big")
    carried = len(packets(4, h2, h1)[0]) - 20  # bytes ESP carried: what follows the header
    assert gw.stores["sa"].data[b"i" + spi_in + bytes([192, 0, 2, 10])] == [1, "1", 1, carried, 0]
