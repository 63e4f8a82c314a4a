"""Small packet builders for tests (import as ``from tests.packets import tcp4``).

Every IP builder returns an Ethernet frame by default; ``ether=False`` gives
the bare IP packet, which the link-layer wrappers (``sll``, ``sll2``,
``raw_ip``, ``loopback``) take. Addresses are strings ("10.0.0.1",
"2001:db8::1"). ``vlan`` is one VLAN id or a list (outermost first: the
outer tags use 802.1ad 0x88a8, the innermost 802.1Q 0x8100); ``mpls`` is one
label or a list (the last gets bottom-of-stack). Checksums are valid.

    tcp4("10.0.0.1", "10.0.0.2", 1234, 80, flags="SA", vlan=[100, 7])
    udp6("2001:db8::1", "2001:db8::2", 53, 5353, ether=False)
    fragments4("10.0.0.1", "10.0.0.2", payload=bytes(3000), ip_id=7)  # list of frames
    read_pcap(path)  # (linktype, [(ts_ns, bytes), ...]), tolerating a truncated tail
"""

from __future__ import annotations

import socket
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import dpkt

__all__ = [
    "arp",
    "ether",
    "fragments4",
    "fragments6",
    "icmp4_echo",
    "icmp4_error",
    "icmp6_echo",
    "ip4",
    "ip6",
    "llc",
    "loopback",
    "raw_ip",
    "read_pcap",
    "sll",
    "sll2",
    "tcp4",
    "tcp6",
    "truncated_tcp4",
    "udp4",
    "udp6",
]

MAC_A = b"\x02\x00\x00\x00\x00\x01"
MAC_B = b"\x02\x00\x00\x00\x00\x02"
_TCP_FLAGS = {
    "F": 0x01,
    "S": 0x02,
    "R": 0x04,
    "P": 0x08,
    "A": 0x10,
    "U": 0x20,
    "E": 0x40,
    "C": 0x80,
}

Tags = int | Sequence[int] | None


def _list(x: Tags) -> list[int]:
    return [] if x is None else [x] if isinstance(x, int) else list(x)


def _a4(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, addr)


def _a6(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, addr)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_flags(flags: str | int) -> int:
    """'SA' -> 0x12; ints pass through."""
    return flags if isinstance(flags, int) else sum(_TCP_FLAGS[c] for c in flags.upper())


# -- link layers -------------------------------------------------------------


def ether(
    payload: bytes,
    ethertype: int = 0x0800,
    *,
    vlan: Tags = None,
    mpls: Tags = None,
    src_mac: bytes = MAC_A,
    dst_mac: bytes = MAC_B,
) -> bytes:
    """Ethernet frame; VLAN tags then MPLS labels go between MACs and payload."""
    tags = _list(vlan)
    labels = _list(mpls)
    inner = ethertype
    if labels:
        payload = (
            b"".join(
                struct.pack("!I", (lab << 12) | ((i == len(labels) - 1) << 8) | 64)
                for i, lab in enumerate(labels)
            )
            + payload
        )
        inner = 0x8847
    # Each tag is TPID + TCI, followed by the next type: outer tags 802.1ad, innermost 802.1Q.
    head = [dst_mac, src_mac]
    tpids = [0x88A8] * (len(tags) - 1) + [0x8100] if tags else []
    for tpid, vid in zip(tpids, tags, strict=True):
        head.append(struct.pack("!HH", tpid, vid & 0x0FFF))
    head.append(struct.pack("!H", inner))
    return b"".join(head) + payload


def _proto_of(packet: bytes) -> int:
    return 0x86DD if packet and packet[0] >> 4 == 6 else 0x0800


def sll(packet: bytes, protocol: int | None = None) -> bytes:
    """Linux cooked capture (LINKTYPE_LINUX_SLL, 16-byte header) around an IP packet."""
    proto = _proto_of(packet) if protocol is None else protocol
    return struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\x00\x00", proto) + packet


def sll2(packet: bytes, protocol: int | None = None) -> bytes:
    """Linux cooked capture v2 (LINKTYPE_LINUX_SLL2, 20-byte header) around an IP packet."""
    proto = _proto_of(packet) if protocol is None else protocol
    return struct.pack("!HHiHBB8s", proto, 0, 1, 1, 0, 6, MAC_A + b"\x00\x00") + packet


def raw_ip(packet: bytes) -> bytes:
    """LINKTYPE_RAW: the IP packet itself (named so tests read clearly)."""
    return bytes(packet)


def loopback(packet: bytes, af: int | None = None, *, big_endian: bool = False) -> bytes:
    """LINKTYPE_NULL (host order, here little-endian) or LOOP (big_endian=True)."""
    family = (30 if packet[0] >> 4 == 6 else 2) if af is None else af
    return struct.pack(">I" if big_endian else "<I", family) + packet


def arp(vlan: Tags = None) -> bytes:
    """An Ethernet ARP request (KIND_NON_IP, ethertype 0x0806)."""
    body = dpkt.arp.ARP(sha=MAC_A, spa=_a4("10.0.0.1"), tha=b"\x00" * 6, tpa=_a4("10.0.0.2"))
    return ether(bytes(body), 0x0806, vlan=vlan, dst_mac=b"\xff" * 6)


def llc(payload: bytes = b"\x42\x42\x03" + bytes(35)) -> bytes:
    """An 802.3 frame with a length field and an LLC header (STP-like): KIND_NON_IP."""
    return b"\x01\x80\xc2\x00\x00\x00" + MAC_A + struct.pack("!H", len(payload)) + payload


# -- IP ----------------------------------------------------------------------


def ip4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    ip_id: int = 1,
    ttl: int = 64,
    options: bytes = b"",
    mf: bool = False,
    offset: int = 0,
) -> bytes:
    """Bare IPv4 packet; `options` is padded to 4 bytes; `offset` in bytes (multiple of 8)."""
    options += b"\x00" * (-len(options) % 4)
    pkt = dpkt.ip.IP(
        src=_a4(src), dst=_a4(dst), p=proto, ttl=ttl, id=ip_id, opts=options, data=payload
    )
    pkt.hl = 5 + len(options) // 4
    pkt._flags_offset = (0x2000 if mf else 0) | (offset >> 3)
    return bytes(pkt)


def ip6(
    src: str,
    dst: str,
    nxt: int,
    payload: bytes,
    *,
    ext: Sequence[tuple[int, bytes]] = (),
    hlim: int = 64,
) -> bytes:
    """Bare IPv6 packet. `ext` = [(type, header bytes without the next-header byte)],
    e.g. (0, bytes(7)) for an empty hop-by-hop header; the chain is linked for you."""
    types = [t for t, _ in ext] + [nxt]
    chain = b"".join(bytes([types[i + 1]]) + body for i, (_, body) in enumerate(ext))
    first = types[0]
    return (
        struct.pack(
            "!IHBB16s16s", 6 << 28, len(chain) + len(payload), first, hlim, _a6(src), _a6(dst)
        )
        + chain
        + payload
    )


def _l4_checksummed(version: int, src: str, dst: str, proto: int, seg: bytes, at: int) -> bytes:
    if version == 4:
        pseudo = struct.pack("!4s4sxBH", _a4(src), _a4(dst), proto, len(seg))
    else:
        pseudo = struct.pack("!16s16sIxxxB", _a6(src), _a6(dst), len(seg), proto)
    csum = _checksum(pseudo + seg)
    if proto == 17 and csum == 0:
        csum = 0xFFFF
    return seg[:at] + struct.pack("!H", csum) + seg[at + 2 :]


def _tcp(
    version: int,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: str | int,
    payload: bytes,
    seq: int,
    ack: int,
) -> bytes:
    seg = bytes(
        dpkt.tcp.TCP(
            sport=sport, dport=dport, flags=tcp_flags(flags), seq=seq, ack=ack, data=payload
        )
    )
    return _l4_checksummed(version, src, dst, 6, seg, 16)


def _udp(version: int, src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return _l4_checksummed(version, src, dst, 17, seg, 6)


def _wrap4(packet: bytes, ether_: bool, vlan: Tags, mpls: Tags) -> bytes:
    return ether(packet, 0x0800, vlan=vlan, mpls=mpls) if ether_ else packet


def _wrap6(packet: bytes, ether_: bool, vlan: Tags, mpls: Tags) -> bytes:
    return ether(packet, 0x86DD, vlan=vlan, mpls=mpls) if ether_ else packet


def tcp4(
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    sport: int = 1234,
    dport: int = 80,
    flags: str | int = "S",
    payload: bytes = b"",
    *,
    vlan: Tags = None,
    mpls: Tags = None,
    ether: bool = True,
    seq: int = 1,
    ack: int = 0,
    ip_id: int = 1,
    options: bytes = b"",
) -> bytes:
    """IPv4/TCP. flags: letters of FSRPAUEC ("S", "SA", "PA", "FA", "R") or an int."""
    seg = _tcp(4, src, dst, sport, dport, flags, payload, seq, ack)
    return _wrap4(ip4(src, dst, 6, seg, ip_id=ip_id, options=options), ether, vlan, mpls)


def udp4(
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    sport: int = 1234,
    dport: int = 53,
    payload: bytes = b"",
    *,
    vlan: Tags = None,
    mpls: Tags = None,
    ether: bool = True,
    ip_id: int = 1,
    options: bytes = b"",
) -> bytes:
    seg = _udp(4, src, dst, sport, dport, payload)
    return _wrap4(ip4(src, dst, 17, seg, ip_id=ip_id, options=options), ether, vlan, mpls)


def tcp6(
    src: str = "2001:db8::1",
    dst: str = "2001:db8::2",
    sport: int = 1234,
    dport: int = 80,
    flags: str | int = "S",
    payload: bytes = b"",
    *,
    vlan: Tags = None,
    mpls: Tags = None,
    ether: bool = True,
    ext: Sequence[tuple[int, bytes]] = (),
    seq: int = 1,
    ack: int = 0,
) -> bytes:
    seg = _tcp(6, src, dst, sport, dport, flags, payload, seq, ack)
    return _wrap6(ip6(src, dst, 6, seg, ext=ext), ether, vlan, mpls)


def udp6(
    src: str = "2001:db8::1",
    dst: str = "2001:db8::2",
    sport: int = 1234,
    dport: int = 53,
    payload: bytes = b"",
    *,
    vlan: Tags = None,
    mpls: Tags = None,
    ether: bool = True,
    ext: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    seg = _udp(6, src, dst, sport, dport, payload)
    return _wrap6(ip6(src, dst, 17, seg, ext=ext), ether, vlan, mpls)


def icmp4_echo(
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    *,
    ident: int = 0x1234,
    seq: int = 1,
    reply: bool = False,
    payload: bytes = b"ping",
    vlan: Tags = None,
    ether: bool = True,
) -> bytes:
    """ICMP echo request (type 8) or reply (type 0)."""
    body = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + payload
    body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
    return _wrap4(ip4(src, dst, 1, body), ether, vlan, None)


def icmp4_error(
    src: str = "10.0.0.254",
    dst: str = "10.0.0.1",
    *,
    type_: int = 3,
    code: int = 3,
    original: bytes = b"",
    ether: bool = True,
) -> bytes:
    """ICMP error (default: port unreachable) quoting `original` (an IP packet)."""
    body = struct.pack("!BBHI", type_, code, 0, 0) + original
    body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
    return _wrap4(ip4(src, dst, 1, body), ether, None, None)


def icmp6_echo(
    src: str = "2001:db8::1",
    dst: str = "2001:db8::2",
    *,
    ident: int = 0x1234,
    seq: int = 1,
    reply: bool = False,
    payload: bytes = b"ping",
    ether: bool = True,
) -> bytes:
    """ICMPv6 echo request (128) or reply (129)."""
    body = struct.pack("!BBHHH", 129 if reply else 128, 0, 0, ident, seq) + payload
    body = _l4_checksummed(6, src, dst, 58, body, 2)
    return _wrap6(ip6(src, dst, 58, body), ether, None, None)


def fragments4(
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    sport: int = 1234,
    dport: int = 53,
    payload: bytes = bytes(3000),
    *,
    ip_id: int = 0x4242,
    frag_size: int = 1480,
    ether: bool = True,
) -> list[bytes]:
    """A UDP datagram cut into IPv4 fragments of `frag_size` payload bytes (multiple of 8)."""
    seg = _udp(4, src, dst, sport, dport, payload)
    chunks = [seg[i : i + frag_size] for i in range(0, len(seg), frag_size)]
    return [
        _wrap4(
            ip4(src, dst, 17, c, ip_id=ip_id, mf=i < len(chunks) - 1, offset=i * frag_size),
            ether,
            None,
            None,
        )
        for i, c in enumerate(chunks)
    ]


def fragments6(
    src: str = "2001:db8::1",
    dst: str = "2001:db8::2",
    sport: int = 1234,
    dport: int = 53,
    payload: bytes = bytes(3000),
    *,
    ident: int = 0x4242,
    frag_size: int = 1448,
    ether: bool = True,
) -> list[bytes]:
    """A UDP datagram cut into IPv6 fragments (fragment extension header, type 44)."""
    seg = _udp(6, src, dst, sport, dport, payload)
    chunks = [seg[i : i + frag_size] for i in range(0, len(seg), frag_size)]
    out = []
    for i, c in enumerate(chunks):
        offm = (i * frag_size) | (i < len(chunks) - 1)
        out.append(
            _wrap6(
                ip6(src, dst, 17, c, ext=[(44, struct.pack("!xHI", offm, ident))]),
                ether,
                None,
                None,
            )
        )
    return out


# -- captures ----------------------------------------------------------------


def read_pcap(path: str | Path) -> tuple[int, list[tuple[int, bytes]]]:
    """(linktype, [(ts_ns, frame)]) of a pcap; a truncated last record is dropped with a warning."""
    out: list[tuple[int, bytes]] = []
    with open(path, "rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        try:
            for ts, buf in reader:
                out.append((round(ts * 1e9), bytes(buf)))
        except dpkt.NeedData:
            warnings.warn(f"{path}: truncated record after {len(out)} packets", stacklevel=2)
        return reader.datalink(), out


def truncated_tcp4(src: str = "10.0.0.1", dst: str = "10.0.0.2") -> bytes:
    """IPv4 says TCP, but only 4 bytes of TCP header follow: malformed."""
    return ether(ip4(src, dst, 6, b"\x13\x88\x01\xbb"))
