"""Wireshark as a transport-mode peer we did not write: tshark opens what snf sealed.

For every cipher, IPv4 and IPv6, host H1 seals UDP and TCP packets to H2 in
transport mode (test_ipsec_transport.py's hosts and key material, one SPI per
cipher and version). tshark, given the SAs in its `esp_sa` table (row format
in test_ipsec_tshark.py), must find every ICV good and read, behind the one
IP header, the next header, ports and payload that went in. A packet with a
flipped ICV byte must report a bad ICV.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from snf.functions.ipsec.esp import CIPHERS
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.pcapng_writer import PcapngWriter
from tests.unit.test_ipsec_transport import HOSTS, SPI_OUT, Gw, frame, material, transport_sas
from tests.unit.test_ipsec_tshark import tshark

pytestmark = pytest.mark.skipif(
    shutil.which("tshark") is None,
    reason="tshark not installed: make setup installs it with apt where it can",
)

T0 = 10**18
FIELDS = ("esp.spi", "esp.sequence", "esp.icv_good", "esp.icv_bad", "esp.protocol")
FIELDS += ("ip.src", "ipv6.src", "udp.srcport", "tcp.srcport", "udp.payload", "tcp.payload")


def spi_of(cipher: str, version: int) -> int:
    return 0x6000 + 0x10 * CIPHERS.index(cipher) + version


def text(cipher: str, version: int) -> bytes:
    return f"{cipher} over IPv{version} in transport mode ".encode() * 2


def cleartext(cipher: str, version: int) -> list[bytes]:
    """UDP then TCP from H1 to H2; ports and text no inner dissector trips over."""
    src, dst = HOSTS[version]
    ip = IP(src=src, dst=dst) if version == 4 else IPv6(src=src, dst=dst)
    return [
        raw(ip / UDP(sport=40000 + version, dport=40100) / Raw(text(cipher, version))),
        raw(ip / TCP(sport=41000 + version, dport=41100, flags="PA") / Raw(text(cipher, version))),
    ]


def uat_row(cipher: str, version: int) -> str:
    key = material(cipher, SPI_OUT)
    if cipher.startswith("aes-gcm"):
        enc, ekey, auth, akey = "AES-GCM with 16 octet ICV [RFC4106]", key, "NULL", b""
    else:
        aes = 16 if "128" in cipher else 32
        enc, ekey = "AES-CBC [RFC3602]", key[:aes]
        auth, akey = "HMAC-SHA-256-128 [RFC4868]", key[aes:]
    cells = (f"IPv{version}", *HOSTS[version], f"0x{spi_of(cipher, version):08x}", enc)
    cells += (f"0x{ekey.hex()}", auth, f"0x{akey.hex()}" if akey else "")
    return ",".join(f'"{cell}"' for cell in cells)


def test_tshark_opens_transport_mode_with_good_icvs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    frames: list[bytes] = []
    sent: list[tuple[str, int, int]] = []
    rows: list[str] = []
    for cipher in CIPHERS:
        for version in (4, 6):
            out, _ = transport_sas(monkeypatch, cipher, version)
            gw = Gw({"sas": [dict(out, spi=spi_of(cipher, version))]})
            ips = cleartext(cipher, version)
            sealed = gw([frame(ip) for ip in ips])
            assert sealed.reasons == ["", ""]
            frames += sealed.frames
            sent += [(cipher, version, seq) for seq in range(1, len(ips) + 1)]
            rows.append(uat_row(cipher, version))
    broken = bytearray(frames[0])
    broken[-1] ^= 0x01
    path = tmp_path / "transport.pcapng"
    with PcapngWriter(path) as writer:
        for i, f in enumerate([*frames, bytes(broken)]):
            writer.write(LINKTYPE_ETHERNET, T0 + i, f)
    decoded = tshark(path, tmp_path / "wireshark", rows, FIELDS)
    assert len(decoded) == len(frames) + 1
    for row, (cipher, version, seq) in zip(decoded, sent, strict=False):
        where = f"{cipher} IPv{version} #{seq} -> {row}"
        proto = "udp" if seq == 1 else "tcp"
        assert int(row["esp.spi"], 16) == spi_of(cipher, version), where
        verdict = (row["esp.sequence"], row["esp.icv_good"], row["esp.icv_bad"])
        assert verdict == (str(seq), "1", "0"), where
        assert int(row["esp.protocol"], 16) == (17 if proto == "udp" else 6), where
        assert row["ip.src" if version == 4 else "ipv6.src"] == HOSTS[version][0], where
        assert int(row[f"{proto}.srcport"]) == (40000 if proto == "udp" else 41000) + version
        assert bytes.fromhex(row[f"{proto}.payload"]) == text(cipher, version), where
    assert (decoded[-1]["esp.icv_good"], decoded[-1]["esp.icv_bad"]) == ("0", "1")
