"""Generate the example captures bundled with pipelines/ (deterministic).

    .venv/bin/python pipelines/captures/generate.py

edge.pcapng        traffic at the edge of a small site, for pipelines/edge.yaml:
                   office clients (10.1.0.0/16) browse, resolve and ping the
                   internet through the NAT; internet clients reach the web
                   VIP 203.0.113.10:80, served by backends in 10.2.0.0/24; a
                   scanner knocks on SSH and SIP; ARP; one damaged frame.
monitoring.pcapng  traffic to and from a web server (10.5.0.10), for
                   pipelines/monitoring.yaml: browsing, a SQL injection, a
                   path traversal, an sqlmap scan, a trusted probe, a ping
                   sweep and a UDP flood.

The edge capture holds both sides of every conversation as the edge sees
them: replies go to the NAT's public endpoints and come from the backends the
load balancer chose. The generator learns those by running each packet
through the edge pipeline in-process (snf.runtime.local), so after a change to the
NAT's port choice or the Maglev table, run it again.
"""

from __future__ import annotations

import heapq
import random
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

from snf.ingress.accumulator import Batcher
from snf.packet.capture_file import CapturedPacket
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.pcapng_writer import PcapngWriter
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import EGRESS
from snf.runtime.local import LocalPipeline

HERE = Path(__file__).resolve().parent
T0 = 1_767_225_600 * 10**9  # 2026-01-01 00:00:00 UTC
MS = 1_000_000


def _ip(addr: str) -> bytes:
    return socket.inet_aton(addr)


def _ntoa(addr: bytes) -> str:
    return socket.inet_ntoa(addr)


def frame(src: str, dst: str, l4: dpkt.Packet, proto: int) -> bytes:
    ip = dpkt.ip.IP(src=_ip(src), dst=_ip(dst), p=proto, ttl=64, data=l4)
    ip.len = 20 + len(bytes(l4))
    eth = dpkt.ethernet.Ethernet(
        src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x02", data=ip
    )
    return bytes(eth)


def tcp(src: str, sport: int, dst: str, dport: int, flags: int, payload: bytes = b"") -> bytes:
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, win=64240, data=payload)
    return frame(src, dst, seg, dpkt.ip.IP_PROTO_TCP)


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    dgram = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    dgram.ulen = 8 + len(payload)
    return frame(src, dst, dgram, dpkt.ip.IP_PROTO_UDP)


def ping(src: str, dst: str, ident: int, seq: int, reply: bool = False) -> bytes:
    echo = dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=b"snf-ping".ljust(32, b"."))
    msg = dpkt.icmp.ICMP(type=0 if reply else 8, code=0, data=echo)
    return frame(src, dst, msg, dpkt.ip.IP_PROTO_ICMP)


def arp(sender: str, target: str) -> bytes:
    body = dpkt.arp.ARP(spa=_ip(sender), tpa=_ip(target), sha=b"\x02" + bytes(5), op=1)
    return bytes(
        dpkt.ethernet.Ethernet(dst=b"\xff" * 6, src=b"\x02" + bytes(5), type=0x0806, data=body)
    )


S, A, F, P, R = (
    dpkt.tcp.TH_SYN,
    dpkt.tcp.TH_ACK,
    dpkt.tcp.TH_FIN,
    dpkt.tcp.TH_PUSH,
    dpkt.tcp.TH_RST,
)


# -- edge: conversations that react to what the pipeline did ------------------


@dataclass
class Conversation:
    """Steps (delay ms, builder); a builder sees what the pipeline did so far."""

    steps: list[tuple[int, Callable[[Conversation], bytes]]]
    seen: dict[str, bytes] = field(default_factory=dict)  # step label -> egress bytes


class EdgeSimulator:
    def __init__(self, pipeline_path: Path) -> None:
        pipeline = load_pipeline(pipeline_path)
        self.local = LocalPipeline(pipeline)
        self.batcher = Batcher(
            pipeline.partitions, 1, max_packets=1, keyers=self.local.ingress_hop.keyers
        )
        self.frames: list[tuple[int, bytes]] = []

    def send(self, ts: int, data: bytes) -> bytes | None:
        """Push one frame through the pipeline; return what left the edge, if anything."""
        seq = self.batcher.seq
        for part, batch in self.batcher.add([CapturedPacket(ts, len(data), data, 1)]):
            self.local(part, batch)
        self.frames.append((ts, data))
        out = self.local.collector.packets.get(EGRESS, {}).get((1, seq))
        return out.data if out is not None else None

    def run(self, starts: list[tuple[int, Conversation]]) -> None:
        queue = [(ts, i, 0) for i, (ts, _) in enumerate(starts)]
        heapq.heapify(queue)
        while queue:
            ts, i, step = heapq.heappop(queue)
            conv = starts[i][1]
            _, build = conv.steps[step]
            out = self.send(ts, build(conv))
            if out is not None:
                conv.seen[str(step)] = out
            if step + 1 < len(conv.steps):
                heapq.heappush(queue, (ts + conv.steps[step + 1][0] * MS, i, step + 1))


def _l4_src(out: bytes) -> tuple[str, int]:
    ip = dpkt.ethernet.Ethernet(out).data
    return _ntoa(ip.src), ip.data.sport if ip.p != dpkt.ip.IP_PROTO_ICMP else ip.data.data.id


def _l4_dst(out: bytes) -> tuple[str, int]:
    ip = dpkt.ethernet.Ethernet(out).data
    return _ntoa(ip.dst), ip.data.dport


def web_session(
    client: str, cport: int, server: str, sport: int, rng: random.Random, via_vip: bool
) -> Conversation:
    """A short HTTP exchange. Through the NAT (server replies to the public
    endpoint) or to the VIP (the chosen backend replies)."""
    get = (
        f"GET /{rng.choice(['', 'index.html', 'news', 'img/logo.png'])} HTTP/1.1\r\n"
        f"Host: {server}\r\nUser-Agent: curl/8.5\r\n\r\n"
    ).encode()
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n" + bytes(
        rng.randrange(256) for _ in range(400)
    )

    def there(conv: Conversation) -> tuple[str, int, str, int]:
        """(server side address, port, client address, port) for server packets."""
        if via_vip:
            backend = _l4_dst(conv.seen["0"])
            return backend[0], backend[1], client, cport
        public = _l4_src(conv.seen["0"])
        return server, sport, public[0], public[1]

    def srv(flags: int, payload: bytes = b"") -> Callable[[Conversation], bytes]:
        def build(conv: Conversation) -> bytes:
            s, sp, c, cp = there(conv)
            return tcp(s, sp, c, cp, flags, payload)

        return build

    def cli(flags: int, payload: bytes = b"") -> Callable[[Conversation], bytes]:
        return lambda conv: tcp(client, cport, server, sport, flags, payload)

    rtt = rng.randrange(8, 60)
    steps = [
        (0, cli(S)),
        (rtt, srv(S | A)),
        (1, cli(A)),
        (1, cli(P | A, get)),
        (rtt, srv(P | A, body)),
        (1, cli(A)),
        (rng.randrange(50, 3000), cli(F | A)),
        (rtt, srv(F | A)),
        (1, cli(A)),
    ]
    return Conversation(steps)


def dns_lookup(client: str, cport: int, resolver: str, name: str) -> Conversation:
    q = dpkt.dns.DNS(id=cport, qd=[dpkt.dns.DNS.Q(name=name)])
    query = bytes(q)

    def reply(conv: Conversation) -> bytes:
        public = _l4_src(conv.seen["0"])
        r = dpkt.dns.DNS(
            id=cport,
            qr=1,
            qd=[dpkt.dns.DNS.Q(name=name)],
            an=[dpkt.dns.DNS.RR(name=name, type=1, ip=_ip("93.184.216.34"))],
        )
        return udp(resolver, 53, public[0], public[1], bytes(r))

    return Conversation([(0, lambda c: udp(client, cport, resolver, 53, query)), (12, reply)])


def pings(client: str, ident: int, target: str, count: int) -> Conversation:
    steps: list[tuple[int, Callable[[Conversation], bytes]]] = []
    for n in range(count):
        steps.append((1000 if n else 0, lambda c, n=n: ping(client, target, ident, n)))
        label = str(2 * n)

        def reply(conv: Conversation, n: int = n, label: str = label) -> bytes:
            public_ip, public_id = _l4_src(conv.seen[label])
            return ping(target, public_ip, public_id, n, reply=True)

        steps.append((20, reply))
    return Conversation(steps)


def edge() -> list[tuple[int, bytes]]:
    rng = random.Random(20260101)
    sim = EdgeSimulator(HERE.parent / "edge.yaml")
    starts: list[tuple[int, Conversation]] = []
    servers = ["93.184.216.34", "151.101.1.69", "140.82.112.3", "104.16.132.229"]
    office = [f"10.1.{i // 50}.{i % 50 + 10}" for i in range(40)]
    for host in office:
        for _ in range(rng.randrange(1, 4)):
            t = T0 + rng.randrange(0, 20_000) * MS
            port = rng.randrange(32768, 61000)
            starts.append((t, web_session(host, port, rng.choice(servers), 80, rng, False)))
        starts.append(
            (
                T0 + rng.randrange(0, 20_000) * MS,
                dns_lookup(host, rng.randrange(32768, 61000), "9.9.9.9", "example.org"),
            )
        )
    for i, host in enumerate(office[:6]):
        starts.append((T0 + rng.randrange(0, 5_000) * MS, pings(host, 0x100 + i, "1.1.1.1", 3)))
    for k in range(30):  # internet clients of the site's web service
        client = f"198.18.{k // 10}.{k % 10 + 1}"
        t = T0 + rng.randrange(0, 20_000) * MS
        starts.append(
            (t, web_session(client, rng.randrange(1024, 65000), "203.0.113.10", 80, rng, True))
        )
    noise: list[tuple[int, bytes]] = []
    for n, host in enumerate(office[:12]):  # an SSH scan of the office: the firewall says no
        noise.append((T0 + (7_000 + 5 * n) * MS, tcp("45.155.205.7", 40000 + n, host, 22, S)))
    for n in range(5):  # SIP probes at the NAT's address: no binding there
        noise.append(
            (
                T0 + (9_000 + 300 * n) * MS,
                udp("45.155.205.7", 5060, "198.51.100.1", 5060 + n, b"OPTIONS sip:x SIP/2.0"),
            )
        )
    for n in range(4):
        noise.append((T0 + (1_000 + 4_000 * n) * MS, arp(f"10.1.0.{10 + n}", "10.1.0.1")))
    damaged = tcp("10.1.0.10", 33333, servers[0], 80, S)[:30]  # cut inside the IP header
    noise.append((T0 + 12_345 * MS, damaged))
    for ts, data in noise:
        starts.append((ts, Conversation([(0, lambda c, data=data: data)])))
    sim.run(starts)
    return sim.frames


# -- monitoring: plain crafted traffic (nothing on the path rewrites it) -------


def monitoring() -> list[tuple[int, bytes]]:
    rng = random.Random(20260102)
    web = "10.5.0.10"
    out: list[tuple[int, bytes]] = []

    def session(t: int, client: str, port: int, request: bytes, answer: bytes = b"") -> None:
        answer = answer or b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n" + bytes(300)
        for dt, pkt in [
            (0, tcp(client, port, web, 80, S)),
            (20, tcp(web, 80, client, port, S | A)),
            (21, tcp(client, port, web, 80, A)),
            (22, tcp(client, port, web, 80, P | A, request)),
            (40, tcp(web, 80, client, port, P | A, answer)),
            (41, tcp(client, port, web, 80, A)),
            (90, tcp(client, port, web, 80, F | A)),
            (110, tcp(web, 80, client, port, F | A)),
            (111, tcp(client, port, web, 80, A)),
        ]:
            out.append((t + dt * MS, pkt))

    def get(path_: str, agent: str = "Mozilla/5.0", extra: str = "") -> bytes:
        return (
            f"GET {path_} HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: {agent}\r\n{extra}\r\n"
        ).encode()

    for k in range(60):  # ordinary browsing
        page = rng.choice(["/", "/products", "/cart", "/img/logo.png", "/search?q=shoes"])
        session(
            T0 + rng.randrange(0, 30_000) * MS,
            f"198.18.1.{k + 1}",
            rng.randrange(1024, 65000),
            get(page),
        )
    session(
        T0 + 5_000 * MS,
        "203.0.113.99",
        41000,
        get("/item.php?id=1%20UNION%20SELECT%20password%20FROM%20users"),
    )
    session(T0 + 6_000 * MS, "203.0.113.99", 41001, get("/static/../../../../etc/passwd"))
    for n in range(5):
        session(
            T0 + (8_000 + 200 * n) * MS,
            "203.0.113.98",
            42000 + n,
            get(f"/item.php?id={n}", agent="sqlmap/1.7.2#stable (https://sqlmap.org)"),
        )
    for n in range(3):  # the uptime probe, trusted even though it sends a sqlmap-like agent
        session(
            T0 + (10_000 + 5_000 * n) * MS,
            "192.0.2.50",
            43000 + n,
            get("/health", agent="sqlmap-lookalike", extra="X-Probe: snf\r\n"),
        )
    for n in range(40):  # a ping sweep
        out.append((T0 + (15_000 + 10 * n) * MS, ping("203.0.113.77", f"10.5.0.{n + 1}", 77, n)))
    for n in range(1500):  # a UDP flood at the resolver: 3000 packets/s for half a second
        out.append(
            (T0 + 20_000 * MS + n * 333_333, udp("203.0.113.66", 4444, "10.5.0.53", 53, bytes(64)))
        )
    for n in range(30):  # normal DNS
        q = bytes(dpkt.dns.DNS(id=n, qd=[dpkt.dns.DNS.Q(name="shop.example")]))
        out.append((T0 + (1_000 * n) * MS, udp(f"10.5.1.{n + 1}", 30000 + n, "10.5.0.53", 53, q)))
    out.sort(key=lambda p: p[0])
    return out


def write(path: Path, frames: list[tuple[int, bytes]]) -> None:
    with PcapngWriter(path) as w:  # exact ns timestamps
        for ts, data in frames:
            w.write(LINKTYPE_ETHERNET, ts, data)
    print(f"wrote {path} ({len(frames)} packets, {path.stat().st_size} bytes)")


def main() -> int:
    write(HERE / "edge.pcapng", edge())
    write(HERE / "monitoring.pcapng", monitoring())
    return 0


if __name__ == "__main__":
    sys.exit(main())
