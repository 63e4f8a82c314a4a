"""Generate pipelines/captures/vpn.pcapng, for pipelines/vpn.yaml (deterministic).

    .venv/bin/python pipelines/captures/generate_vpn.py

What site A's gateway (tunnel address 192.0.2.1, LAN 10.1.0.0/16) sees on its
wire, both directions, over 30 s:

- A's hosts talking in clear to B's LAN (10.2.0.0/16): HTTPS sessions
  (handshake, request, a download, FINs), DNS to B's resolver, syslog, a ping;
- B's side of those conversations as ESP from B's gateway 198.51.100.2 (SA
  b-to-a, SPI 0x1001, sequence numbers 1, 2, 3, ...), plus B-initiated SSH to
  an A host and RDP (TCP 3389) SYNs the firewall refuses;
- A's hosts on the internet in clear (the bypass policy);
- hostile or broken packets: exact replays of two earlier ESP packets, one
  with a ciphertext byte flipped, ESP under an unknown SPI, ESP whose inner
  packet lies outside the SA's selectors, B's LAN arriving in clear, a host of
  no covered network, and two 1500-byte packets to B that cannot fit the
  tunnel (one with DF, answered with ICMP; one without, dropped).

The ESP is made by scapy's SecurityAssociation (an implementation snf did
not write) with the demo key pipelines/keys/vpn-b-to-a.hex, as a real peer
would; its IVs differ from snf's (any IV unique per key will do, RFC 4106
§3.1). tests/unit/test_vpn_example.py runs the capture and checks the result.
"""

from __future__ import annotations

import random
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
from generate import MS, T0, write
from scapy.compat import raw
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP, SecurityAssociation

HERE = Path(__file__).resolve().parent
KEYS = HERE.parent / "keys"
GATEWAY, PEER = "192.0.2.1", "198.51.100.2"
SPI_IN, SPI_STALE = 0x1001, 0x1002
IV_MASK = 0x5EED_0000_0000_0000  # the peer's IVs: its seq xor this, unique per key
LAN_MACS = b"\x02\x00\x00\x00\x01\x01" + b"\x02\x00\x00\x00\x0a\x01"  # dst gw, src a host
WAN_MACS = b"\x02\x00\x00\x00\x01\x02" + b"\x02\x00\x00\x00\x0b\x01"  # dst gw, src upstream
S, A, F, P = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH

# How an item reaches the wire: in clear from A's LAN side or the WAN side,
# sealed by B's gateway, or one of the hostile ESP packets.
LAN, WAN, ESP_IN, TAMPER, STALE, REPLAY = "lan", "wan", "esp", "tamper", "stale", "replay"


@dataclass
class Item:
    """One packet on A's wire: its time, how it gets there, its IP bytes."""

    ts: int
    via: str
    ip: bytes = b""
    replay_of: int = 0  # REPLAY: the sequence number whose ESP packet goes again


@dataclass
class Wire:
    """What goes on A's wire, in any order (frames() sorts it); IPv4 ids count up."""

    items: list[Item] = field(default_factory=list)
    ident: int = 0

    def add(self, ts: int, via: str, ip: bytes) -> None:
        self.items.append(Item(ts, via, ip))

    def packet(
        self, src: str, dst: str, proto: int, l4: bytes, df: bool = True, tos: int = 0
    ) -> bytes:
        self.ident = (self.ident + 1) & 0xFFFF
        ttl = 63 if src.startswith("10.2.") else 64  # B's hosts are one router away
        ip = dpkt.ip.IP(
            src=socket.inet_aton(src),
            dst=socket.inet_aton(dst),
            p=proto,
            ttl=ttl,
            id=self.ident,
            tos=tos,
        )
        ip.df = int(df)
        ip.data = l4
        ip.len = 20 + len(l4)
        return bytes(ip)

    def udp(
        self, src: str, sport: int, dst: str, dport: int, data: bytes, df: bool = True, tos: int = 0
    ) -> bytes:
        dgram = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
        dgram.ulen = 8 + len(data)
        l4 = bytes(_checksummed(src, dst, dgram))
        return self.packet(src, dst, dpkt.ip.IP_PROTO_UDP, l4, df, tos)

    def ping(self, src: str, dst: str, ident: int, seq: int, reply: bool = False) -> bytes:
        echo = dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=b"snf-vpn-ping".ljust(48, b"."))
        msg = dpkt.icmp.ICMP(type=0 if reply else 8, code=0, data=echo)
        return self.packet(src, dst, dpkt.ip.IP_PROTO_ICMP, bytes(msg))


def _checksummed(src: str, dst: str, l4: dpkt.Packet) -> dpkt.Packet:
    """An L4 segment with its checksum (dpkt fills it in through an IP around it)."""
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=_proto(l4), data=l4)
    ip.len = 20 + len(bytes(l4))
    bytes(ip)
    return l4


def _proto(l4: dpkt.Packet) -> int:
    return dpkt.ip.IP_PROTO_TCP if isinstance(l4, dpkt.tcp.TCP) else dpkt.ip.IP_PROTO_UDP


@dataclass
class Tcp:
    """One TCP connection: both ends' sequence numbers, so the capture reads right."""

    wire: Wire
    client: str
    cport: int
    server: str
    sport: int
    cseq: int
    sseq: int
    tos: int = 0  # DSCP and ECN of both directions

    def _seg(self, from_client: bool, flags: int, data: bytes) -> bytes:
        src, sp, dst, dp = (self.client, self.cport, self.server, self.sport)
        seq, ack = self.cseq, self.sseq
        if not from_client:
            src, sp, dst, dp, seq, ack = dst, dp, src, sp, ack, seq
        seg = dpkt.tcp.TCP(
            sport=sp, dport=dp, seq=seq, ack=ack if flags & A else 0, flags=flags, win=64240
        )
        seg.data = data
        used = len(data) + (1 if flags & (S | F) else 0)
        if from_client:
            self.cseq = (self.cseq + used) & 0xFFFFFFFF
        else:
            self.sseq = (self.sseq + used) & 0xFFFFFFFF
        l4 = bytes(_checksummed(src, dst, seg))
        return self.wire.packet(src, dst, dpkt.ip.IP_PROTO_TCP, l4, tos=self.tos)

    def c(self, flags: int, data: bytes = b"") -> bytes:
        return self._seg(True, flags, data)

    def s(self, flags: int, data: bytes = b"") -> bytes:
        return self._seg(False, flags, data)


def tls_record(rng: random.Random, size: int) -> bytes:
    """A TLS 1.3 application-data record of `size` random bytes."""
    return struct.pack("!BHH", 23, 0x0303, size) + bytes(rng.randrange(256) for _ in range(size))


def ssh_ignore(size: int) -> bytes:
    """An SSH binary packet (RFC 4253 §6) holding SSH_MSG_IGNORE with `size` bytes."""
    payload = struct.pack("!BI", 2, size) + bytes(size)
    pad = 4 + (-(4 + 1 + len(payload) + 4)) % 8
    return struct.pack("!IB", 1 + len(payload) + pad, pad) + payload + bytes(pad)


def session(wire: Wire, rng: random.Random, t: int, conn: Tcp, vias: tuple[str, str]) -> None:
    """Handshake, a request, a download of 1..5 segments (acked every two), FINs.
    `vias`: how the client's and the server's packets reach the wire."""
    cv, sv = vias
    rtt = rng.randrange(15, 60) * MS
    request = tls_record(rng, rng.randrange(200, 500))
    steps = [(0, cv, conn.c(S)), (rtt, sv, conn.s(S | A)), (1 * MS, cv, conn.c(A))]
    steps.append((1 * MS, cv, conn.c(P | A, request)))
    segments = rng.randrange(1, 6)
    for n in range(segments):
        data = tls_record(rng, 995)
        steps.append((rtt if n == 0 else 1 * MS, sv, conn.s(P | A, data)))
        if n % 2 or n == segments - 1:
            steps.append((1 * MS, cv, conn.c(A)))
    steps.append((rng.randrange(100, 4000) * MS, cv, conn.c(F | A)))
    steps.append((rtt, sv, conn.s(F | A)))
    steps.append((1 * MS, cv, conn.c(A)))
    for dt, via, ip in steps:
        t += dt
        wire.add(t, via, ip)


def ssh_from_b(wire: Wire, t: int) -> None:
    """B's admin host logs in to an A server: B's packets come as ESP, A's in clear."""
    conn = Tcp(wire, "10.2.0.30", 51022, "10.1.0.22", 22, 0x10000000, 0x20000000, tos=0x48)
    banner_c, banner_s = b"SSH-2.0-OpenSSH_9.6\r\n", b"SSH-2.0-OpenSSH_9.2p1\r\n"
    steps = [(0, ESP_IN, conn.c(S)), (30, LAN, conn.s(S | A)), (31, ESP_IN, conn.c(A))]
    steps += [(32, LAN, conn.s(P | A, banner_s)), (60, ESP_IN, conn.c(P | A, banner_c))]
    for n in range(6):  # key exchange and a short session, both ways
        steps.append((100 + 200 * n, ESP_IN, conn.c(P | A, ssh_ignore(48 + 16 * n))))
        steps.append((130 + 200 * n, LAN, conn.s(P | A, ssh_ignore(80 + 32 * n))))
    steps += [(1500, ESP_IN, conn.c(F | A)), (1530, LAN, conn.s(F | A))]
    steps.append((1560, ESP_IN, conn.c(A)))
    for dt, via, ip in steps:
        wire.add(t + dt * MS, via, ip)


def site_traffic(wire: Wire, rng: random.Random) -> None:
    """A <-> B over the tunnel and A <-> internet in clear."""
    a_hosts = [f"10.1.{i // 20}.{i % 20 + 10}" for i in range(30)]
    b_servers = ["10.2.0.20", "10.2.0.21", "10.2.0.22"]
    for k in range(36):  # A's clients on B's web services
        conn = Tcp(
            wire,
            a_hosts[k % len(a_hosts)],
            rng.randrange(32768, 61000),
            rng.choice(b_servers),
            443,
            rng.getrandbits(32),
            rng.getrandbits(32),
            tos=0x02 if k % 4 == 0 else 0,  # some hosts negotiate ECN: ECT(0)
        )
        session(wire, rng, T0 + rng.randrange(0, 24_000) * MS, conn, (LAN, ESP_IN))
    for k in range(8):  # and on the internet
        host, port = a_hosts[k], rng.randrange(32768, 61000)
        conn = Tcp(wire, host, port, "93.184.216.34", 443, rng.getrandbits(32), 1 << 20)
        session(wire, rng, T0 + rng.randrange(0, 24_000) * MS, conn, (LAN, WAN))
    for k in range(10):  # DNS: B's resolver over the tunnel, a public one in clear
        host, port, t = a_hosts[k + 10], 20000 + k, T0 + (1_000 + 2_500 * k) * MS
        query = bytes(dpkt.dns.DNS(id=k, qd=[dpkt.dns.DNS.Q(name=f"srv{k}.b.example")]))
        answer = bytes(dpkt.dns.DNS(id=k, qr=1, qd=[dpkt.dns.DNS.Q(name=f"srv{k}.b.example")]))
        resolver, via = ("10.2.0.53", ESP_IN) if k % 2 == 0 else ("9.9.9.9", WAN)
        wire.add(t, LAN, wire.udp(host, port, resolver, 53, query))
        wire.add(t + 25 * MS, via, wire.udp(resolver, 53, host, port, answer))
    for k in range(12):  # syslog from A's server to B's collector, one way, DSCP CS1
        line = f"<134>vpn-demo: backup step {k} ok".encode()
        log = wire.udp("10.1.0.22", 514, "10.2.0.60", 514, line, tos=0x20)
        wire.add(T0 + (500 + 2_000 * k) * MS, LAN, log)
    for n in range(4):  # a ping across the tunnel
        t = T0 + (3_000 + 1_000 * n) * MS
        wire.add(t, LAN, wire.ping("10.1.0.15", "10.2.0.1", 0x77, n))
        wire.add(t + 21 * MS, ESP_IN, wire.ping("10.2.0.1", "10.1.0.15", 0x77, n, reply=True))
    ssh_from_b(wire, T0 + 5_000 * MS)
    for dt in (0, 1_000, 3_000):  # RDP from B (a SYN, retried): decrypted, then refused
        syn = Tcp(wire, "10.2.0.31", 49700, "10.1.0.40", 3389, 0x30000000, 0).c(S)
        wire.add(T0 + (9_000 + dt) * MS, ESP_IN, syn)


def hostile(wire: Wire) -> None:
    """Packets a gateway must refuse, and two it must not fragment."""
    t = T0 + 26_000 * MS
    wire.items.append(Item(t, REPLAY, replay_of=5))  # an attacker repeats an old packet
    wire.items.append(Item(t + 100 * MS, REPLAY, replay_of=40))
    forged = wire.udp("10.2.0.53", 53, "10.1.0.20", 20000, b"\x00" * 40)
    wire.add(t + 200 * MS, TAMPER, forged)  # one ciphertext byte flipped on the way
    for n in range(2):  # the peer still uses an SA we do not have
        wire.add(t + (300 + n * 50) * MS, STALE, wire.ping("10.2.0.1", "10.1.0.15", 0x78, n))
    outside = wire.udp("10.3.0.5", 5000, "10.1.0.10", 5000, b"not B's network")
    wire.add(t + 400 * MS, ESP_IN, outside)  # authentic, but outside the SA's selectors
    spoof = Tcp(wire, "10.2.0.30", 51023, "10.1.0.22", 22, 0x40000000, 0).c(S)
    wire.add(t + 500 * MS, WAN, spoof)  # B's LAN in clear from the internet side
    for n in range(2):  # a host of no covered network
        wire.add(t + (600 + n) * MS, LAN, wire.udp("192.168.7.7", 4000, "8.8.8.8", 53, bytes(30)))
    big = bytes(1472)  # 1500-byte IP packets: no room for ESP's overhead
    wire.add(t + 700 * MS, LAN, wire.udp("10.1.0.50", 40001, "10.2.0.20", 9000, big, df=True))
    wire.add(t + 800 * MS, LAN, wire.udp("10.1.0.50", 40002, "10.2.0.20", 9000, big, df=False))


def peer_sa(spi: int) -> SecurityAssociation:
    key = bytes.fromhex((KEYS / "vpn-b-to-a.hex").read_text().strip())
    return SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=key)


def seal(sa: SecurityAssociation, seq: int, inner: bytes) -> bytes:
    """B's gateway: the inner packet as ESP from 198.51.100.2 to 192.0.2.1."""
    sa.tunnel_header = IP(src=PEER, dst=GATEWAY, ttl=57, id=seq & 0xFFFF, flags="DF", tos=inner[1])
    iv = struct.pack("!Q", seq ^ IV_MASK)
    return raw(sa.encrypt(IP(inner), seq_num=seq, iv=iv))


def frames(wire: Wire) -> list[tuple[int, bytes]]:
    """The items in time order as Ethernet frames, B's packets sealed in that order."""
    sa, stale = peer_sa(SPI_IN), peer_sa(SPI_STALE)
    seq = stale_seq = 0
    sent: dict[int, bytes] = {}  # sequence number -> ESP packet, for the replays
    out = []
    for item in sorted(wire.items, key=lambda it: it.ts):  # stable: ties keep their order
        if item.via in (LAN, WAN):
            data = (LAN_MACS if item.via == LAN else WAN_MACS) + b"\x08\x00" + item.ip
        elif item.via == REPLAY:
            data = sent[item.replay_of]
        elif item.via == STALE:
            stale_seq += 1
            data = WAN_MACS + b"\x08\x00" + seal(stale, stale_seq, item.ip)
        else:
            seq += 1
            esp = bytearray(seal(sa, seq, item.ip))
            if item.via == TAMPER:
                esp[20 + 8 + 8 + 5] ^= 0x20  # outer IP, ESP header, IV, then ciphertext
            data = sent[seq] = WAN_MACS + b"\x08\x00" + bytes(esp)
        out.append((item.ts, data))
    return out


def vpn() -> list[tuple[int, bytes]]:
    rng = random.Random(20260103)
    wire = Wire()
    site_traffic(wire, rng)
    hostile(wire)
    return frames(wire)


def main() -> int:
    write(HERE / "vpn.pcapng", vpn())
    return 0


if __name__ == "__main__":
    sys.exit(main())
