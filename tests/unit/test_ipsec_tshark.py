"""Wireshark as an ESP peer we did not write: tshark decrypts what snf sealed.

The ipsec core seals cleartext Ethernet frames (UDP and TCP, inner IPv4 and
IPv6) with one outbound SA per cipher and outer IP version; the packets go to
a pcapng, and tshark, given the SA keys in its `esp_sa` table, must find every
ICV good and decrypt the inner packets to the very addresses and payloads that
went in. Two tampered packets (a GCM ciphertext byte, a CBC ICV byte) must
report a bad ICV.

The `esp_sa` row format (Wireshark 4.0, packet-ipsec.c's esp_uat_flds):
    "IPv4"|"IPv6", "src", "dst", "0xSPI", "encryption", "0xkey",
    "authentication", "0xkey"
GCM takes the AES key followed by the 4-byte salt, with authentication NULL;
CBC takes the AES key, and the HMAC key under HMAC-SHA-256-128.

Payloads and ports are chosen so that no dissector of the inner packet throws:
tshark adds the ICV verdict after the inner packet's dissection, and a
malformed inner packet (say UDP port 53 read as DNS) ends the ESP dissector
before it. ESN stays off: Wireshark's ESP dissector only knows 32-bit
sequence numbers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from snf.core.engine import FunctionEngine
from snf.functions.ipsec import Ipsec, IpsecConfig
from snf.functions.ipsec.esp import CIPHERS, KEY_BYTES
from snf.packet.batch import PacketBatch
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.pcapng_writer import PcapngWriter
from tests.harness import JsonStore, handle
from tests.packets import tcp4, tcp6, udp4, udp6

pytestmark = pytest.mark.skipif(
    shutil.which("tshark") is None,
    reason="tshark not installed: make setup installs it with apt where it can",
)

T0 = 10**18
OUTER = {4: ("192.0.2.1", "198.51.100.2"), 6: ("2001:db8::1", "2001:db8:ffff::2")}
GOOD, BAD = ("1", "0"), ("0", "1")  # (esp.icv_good, esp.icv_bad)
REMOTE = {4: "10.200.0.9", 6: "fd00:200::9"}
FIELDS = (
    "esp.spi",
    "esp.sequence",
    "esp.icv_good",
    "esp.icv_bad",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "udp.payload",
    "tcp.payload",
)


@dataclass(frozen=True)
class Sent:
    """One cleartext packet and what tshark must see once it is sealed."""

    spi: int
    seq: int
    outer: int  # IP version of the outer header
    inner: int  # IP version of the inner packet
    src: str
    dst: str
    proto: str  # "udp" or "tcp"
    payload: bytes


def material(cipher: str, index: int) -> bytes:
    return bytes((index * 37 + 5 * i + 1) % 256 for i in range(KEY_BYTES[cipher]))


def spi_of(cipher: str, outer: int) -> int:
    return 0x5000 + 0x10 * CIPHERS.index(cipher) + outer


def local(cipher: str, outer: int, inner: int) -> str:
    """The inner source address of an SA's packets: one SA per (cipher, outer)."""
    c = CIPHERS.index(cipher) + 1
    return f"10.{c}.{outer}.5" if inner == 4 else f"fd00:{c}:{outer}::5"


def config(monkeypatch: pytest.MonkeyPatch) -> IpsecConfig:
    sas = []
    for i, cipher in enumerate(CIPHERS):
        for outer in (4, 6):
            env = f"SNF_TSHARK_KEY_{i}_{outer}"
            monkeypatch.setenv(env, material(cipher, 2 * i + outer).hex())
            c = i + 1
            sas.append(
                {
                    "name": f"{cipher}-v{outer}",
                    "direction": "out",
                    "spi": spi_of(cipher, outer),
                    "local": OUTER[outer][0],
                    "peer": OUTER[outer][1],
                    "cipher": cipher,
                    "key_env": env,
                    "selectors": [
                        {
                            "local": [f"10.{c}.{outer}.0/24", f"fd00:{c}:{outer}::/48"],
                            "remote": ["10.200.0.0/16", "fd00:200::/32"],
                        }
                    ],
                }
            )
    return IpsecConfig.model_validate({"sas": sas})


def cleartext() -> tuple[list[bytes], list[Sent]]:
    """UDP and TCP over inner IPv4 and IPv6 for every SA, with their expectations."""
    frames: list[bytes] = []
    sent: list[Sent] = []
    for cipher in CIPHERS:
        for outer in (4, 6):
            seq = 0
            for inner in (4, 6):
                src, dst = local(cipher, outer, inner), REMOTE[inner]
                for proto in ("udp", "tcp"):
                    seq += 1
                    payload = f"{cipher} v{inner}-in-v{outer} {proto} #{seq} ".encode() * 3
                    if proto == "udp":
                        build = udp4 if inner == 4 else udp6
                        frames.append(build(src, dst, 40000 + seq, 40100, payload))
                    else:
                        build = tcp4 if inner == 4 else tcp6
                        frames.append(build(src, dst, 41000 + seq, 41100, "PA", payload))
                    sent.append(
                        Sent(spi_of(cipher, outer), seq, outer, inner, src, dst, proto, payload)
                    )
    return frames, sent


def sealed(monkeypatch: pytest.MonkeyPatch) -> tuple[list[bytes], list[Sent]]:
    engine = FunctionEngine(Ipsec(config(monkeypatch)))
    stores = {table: JsonStore() for table in engine.function.tables}
    frames, sent = cleartext()
    rows = [(T0 + i, len(f), f, 1, i, "") for i, f in enumerate(frames)]
    out = handle(engine, PacketBatch.from_rows(LINKTYPE_ETHERNET, rows), stores)
    assert out.ports == ["pass"] * len(frames) and set(out.reasons) == {""}
    assert engine.counters["encrypted"] == len(frames)
    return out.frames, sent


def uat_rows() -> list[str]:
    rows = []
    for i, cipher in enumerate(CIPHERS):
        for outer in (4, 6):
            key = material(cipher, 2 * i + outer)
            if cipher.startswith("aes-gcm"):
                enc, ekey = "AES-GCM with 16 octet ICV [RFC4106]", key  # AES key || salt
                auth, akey = "NULL", b""
            else:
                aes = 16 if "128" in cipher else 32
                enc, ekey = "AES-CBC [RFC3602]", key[:aes]
                auth, akey = "HMAC-SHA-256-128 [RFC4868]", key[aes:]
            src, dst = OUTER[outer]
            cells = (f"IPv{outer}", src, dst, f"0x{spi_of(cipher, outer):08x}", enc)
            cells += (f"0x{ekey.hex()}", auth, f"0x{akey.hex()}" if akey else "")
            rows.append(",".join(f'"{cell}"' for cell in cells))
    return rows


def tshark(
    path: Path, home: Path, rows: list[str] | None = None, fields: tuple[str, ...] = FIELDS
) -> list[dict[str, str]]:
    """Per packet, the `fields` tshark decoded with the SAs of `rows` (default: snf's
    of this module), its own profile kept out."""
    cmd = ["tshark", "-n", "-r", str(path)]
    cmd += ["-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE"]
    for row in uat_rows() if rows is None else rows:
        cmd += ["-o", f"uat:esp_sa:{row}"]
    cmd += ["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]
    for field in fields:
        cmd += ["-e", field]
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(home), "HOME": str(home)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    return [dict(zip(fields, line.split("\t"), strict=True)) for line in lines]


def addresses(sent: Sent, which: str) -> tuple[str, str]:
    """(ip.<which>, ipv6.<which>) as tshark lists them: outer first, then inner."""
    outer = OUTER[sent.outer][0 if which == "src" else 1]
    inner = sent.src if which == "src" else sent.dst
    v4 = [a for v, a in ((sent.outer, outer), (sent.inner, inner)) if v == 4]
    v6 = [a for v, a in ((sent.outer, outer), (sent.inner, inner)) if v == 6]
    return ",".join(v4), ",".join(v6)


def tamper(frames: list[bytes], sent: list[Sent]) -> tuple[list[bytes], list[Sent]]:
    """A GCM packet with its first inner payload byte flipped in the ciphertext
    (CTR mode: only that plaintext byte changes) and a CBC packet with a flipped
    ICV byte: both must fail authentication and still decrypt."""
    gcm_spi = spi_of("aes-gcm-128", 4)
    gcm = next(i for i, s in enumerate(sent) if s.spi == gcm_spi and s.inner == 4)
    cbc = next(i for i, s in enumerate(sent) if s.spi == spi_of("aes-cbc-256-hmac-sha256", 6))
    at = 14 + 20 + 8 + 8 + 20 + 8  # Ethernet, outer IPv4, ESP header, IV, inner IPv4, UDP
    flipped = bytearray(frames[gcm])
    flipped[at] ^= 0x20
    broken = bytearray(frames[cbc])
    broken[-1] ^= 0x01
    payload = bytes((sent[gcm].payload[0] ^ 0x20,)) + sent[gcm].payload[1:]
    return [bytes(flipped), bytes(broken)], [replace(sent[gcm], payload=payload), sent[cbc]]


def test_tshark_decrypts_and_authenticates_every_cipher(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    frames, sent = sealed(monkeypatch)
    bad_frames, bad_sent = tamper(frames, sent)
    path = tmp_path / "esp.pcapng"
    with PcapngWriter(path) as writer:
        for i, frame in enumerate(frames + bad_frames):
            writer.write(LINKTYPE_ETHERNET, T0 + i, frame)
    decoded = tshark(path, tmp_path / "wireshark")
    assert len(decoded) == len(frames) + len(bad_frames)
    verdicts = [GOOD] * len(sent) + [BAD] * len(bad_sent)
    for row, s, verdict in zip(decoded, sent + bad_sent, verdicts, strict=True):
        where = f"{s} -> {row}"
        assert int(row["esp.spi"], 16) == s.spi, where
        assert int(row["esp.sequence"]) == s.seq, where
        assert (row["esp.icv_good"], row["esp.icv_bad"]) == verdict, where
        assert (row["ip.src"], row["ipv6.src"]) == addresses(s, "src"), where
        assert (row["ip.dst"], row["ipv6.dst"]) == addresses(s, "dst"), where
        assert bytes.fromhex(row[f"{s.proto}.payload"]) == s.payload, where
    assert len({s.spi for s in sent}) == 2 * len(CIPHERS)  # every cipher, both outer versions
