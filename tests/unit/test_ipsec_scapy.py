"""scapy as an ESP peer we did not write: tunnel-mode packets cross both ways.

For every cipher, inner IPv4/IPv6 and outer IPv4/IPv6, with and without ESN:
scapy's SecurityAssociation encrypts and snf's EspTransform opens, snf seals and
scapy decrypts, and tampered packets fail on either side.

scapy picks random IVs (GCM too, which RFC 4106 allows); given snf's IV it must
produce the very same bytes. scapy's SecurityAssociation has no replay window
(its docstring: "This does not check replay"), so replay is not tested here:
the transform is stateless on purpose and the SA's window is tested on its own.
"""

from __future__ import annotations

import struct

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, IPSecIntegrityError, SecurityAssociation
from scapy.packet import Packet, Raw

from functions.ipsec.esp import CIPHERS, KEY_BYTES, EspAuthError, EspTransform, esp_header

SPI = 0xC0DE0042
HIGH = 0x2A  # ESN high 32 bits, when ESN is on
NEXT_HEADER = {4: 4, 6: 41}  # inner IP version -> ESP next header (IP-in-IP, IPv6)
OUTER_ADDRESSES = {4: ("192.0.2.1", "198.51.100.7"), 6: ("2001:db8::1", "2001:db8:ffff::7")}


def key(cipher: str) -> bytes:
    return bytes((0x3C + 7 * i) % 256 for i in range(KEY_BYTES[cipher]))


def outer(version: int) -> Packet:
    src, dst = OUTER_ADDRESSES[version]
    return IP(src=src, dst=dst) if version == 4 else IPv6(src=src, dst=dst)


def peer(cipher: str, outer_version: int, esn: bool) -> SecurityAssociation:
    """scapy's SA for the same key material (GCM: key || salt; CBC: key || HMAC key)."""
    material = key(cipher)
    common = {"spi": SPI, "tunnel_header": outer(outer_version), "esn_en": esn}
    common["esn"] = HIGH if esn else 0
    if cipher.startswith("aes-gcm"):
        return SecurityAssociation(ESP, crypt_algo="AES-GCM", crypt_key=material, **common)
    aes = 16 if "128" in cipher else 32
    return SecurityAssociation(
        ESP,
        crypt_algo="AES-CBC",
        crypt_key=material[:aes],
        auth_algo="SHA2-256-128",
        auth_key=material[aes:],
        **common,
    )


def inners(version: int) -> list[Packet]:
    """UDP, TCP and empty-UDP packets, reparsed from bytes so both sides see the same ones."""
    if version == 4:
        ip = IP(src="10.1.0.5", dst="10.2.0.9", id=7)
    else:
        ip = IPv6(src="fd00:1::5", dst="fd00:2::9")
    packets = [
        ip / UDP(sport=5353, dport=53) / Raw(b"query " * 9),
        ip / TCP(sport=40000, dport=443, flags="PA", seq=1000) / Raw(bytes(range(200))),
        ip / UDP(sport=1, dport=2),  # no payload
    ]
    return [p.__class__(raw(p)) for p in packets]


def full_seq(low: int, esn: bool) -> int:
    return (HIGH << 32) + low if esn else low


def wrap(outer_version: int, esp: bytes) -> Packet:
    """An outer header around snf's ESP bytes, parsed back so scapy sees IP/ESP."""
    src, dst = OUTER_ADDRESSES[outer_version]
    if outer_version == 4:
        return IP(raw(IP(src=src, dst=dst, proto=50) / Raw(esp)))
    return IPv6(raw(IPv6(src=src, dst=dst, nh=50) / Raw(esp)))


MATRIX = pytest.mark.parametrize(
    ("cipher", "inner_version", "outer_version", "esn"),
    [(c, i, o, e) for c in CIPHERS for i in (4, 6) for o in (4, 6) for e in (False, True)],
)


@MATRIX
def test_scapy_encrypts_snf_opens(
    cipher: str, inner_version: int, outer_version: int, esn: bool
) -> None:
    sa = peer(cipher, outer_version, esn)
    snf = EspTransform(cipher, key(cipher), SPI, esn=esn)
    for low, inner in enumerate(inners(inner_version), start=1):
        packet = sa.encrypt(inner, seq_num=low)
        assert packet.version == outer_version
        esp = raw(packet[ESP])
        spi, wire_seq = esp_header(esp)
        assert (spi, wire_seq) == (SPI, low)
        assert snf.open(esp, full_seq(wire_seq, esn)) == (NEXT_HEADER[inner_version], raw(inner))


@MATRIX
def test_snf_seals_scapy_decrypts(
    cipher: str, inner_version: int, outer_version: int, esn: bool
) -> None:
    sa = peer(cipher, outer_version, esn)
    snf = EspTransform(cipher, key(cipher), SPI, esn=esn)
    for low, inner in enumerate(inners(inner_version), start=1):
        esp = snf.seal(full_seq(low, esn), NEXT_HEADER[inner_version], raw(inner))
        assert raw(sa.decrypt(wrap(outer_version, esp))) == raw(inner)


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("esn", [False, True])
def test_same_iv_same_bytes(cipher: str, esn: bool) -> None:
    # Given snf's IV, scapy's padding, AAD / HMAC input and layout give the same packet.
    snf = EspTransform(cipher, key(cipher), SPI, esn=esn)
    sa = peer(cipher, 4, esn)
    for low, inner in enumerate(inners(4) + inners(6), start=1):
        esp = snf.seal(full_seq(low, esn), NEXT_HEADER[inner.version], raw(inner))
        iv = esp[8:16] if cipher.startswith("aes-gcm") else esp[8:24]
        if cipher.startswith("aes-gcm"):
            assert iv == struct.pack("!Q", full_seq(low, esn))  # the counter IV
        assert raw(sa.encrypt(inner, seq_num=low, iv=iv)[ESP]) == esp


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("esn", [False, True])
def test_tampering_fails_both_ways(cipher: str, esn: bool) -> None:
    snf = EspTransform(cipher, key(cipher), SPI, esn=esn)
    sa = peer(cipher, 4, esn)
    inner = inners(4)[0]
    theirs = raw(sa.encrypt(inner, seq_num=9)[ESP])
    ours = snf.seal(full_seq(9, esn), 4, raw(inner))
    for i in (4, 8, 20, 40, len(ours) - 17, len(ours) - 1):  # seq, IV, ciphertext, ICV
        tampered = bytearray(theirs)
        tampered[i] ^= 0x10
        with pytest.raises(EspAuthError):
            snf.open(bytes(tampered), full_seq(9, esn))
        tampered = bytearray(ours)
        tampered[i] ^= 0x10
        with pytest.raises(IPSecIntegrityError):
            sa.decrypt(wrap(4, bytes(tampered)))


@pytest.mark.parametrize("cipher", CIPHERS)
def test_wrong_esn_high_bits_fail_both_ways(cipher: str) -> None:
    snf = EspTransform(cipher, key(cipher), SPI, esn=True)
    sa = peer(cipher, 6, True)
    inner = inners(6)[1]
    esp = raw(sa.encrypt(inner, seq_num=3)[ESP])
    with pytest.raises(EspAuthError):
        snf.open(esp, ((HIGH + 1) << 32) + 3)
    ours = snf.seal(((HIGH - 1) << 32) + 3, 41, raw(inner))
    with pytest.raises(IPSecIntegrityError):
        sa.decrypt(wrap(6, ours))


def test_open_is_stateless() -> None:
    # Replays are the SA window's business (scapy has none either): the transform
    # opens the same packet twice.
    snf = EspTransform(CIPHERS[0], key(CIPHERS[0]), SPI)
    esp = snf.seal(5, 4, raw(inners(4)[0]))
    assert snf.open(esp, 5) == snf.open(esp, 5)
