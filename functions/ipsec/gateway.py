"""The per-packet paths of the ipsec core: decrypt inbound, encrypt outbound.

Tunnel and transport mode share everything but the framing (tunnel.py,
transport.py): the window, sequence numbers, lifetimes and the policy.

`Gateway.start` opens one batch's `Work`; each SA's table value is read once
per batch, worked on in memory and written once at `finish()`, only when it
changed. Reasons are the strings of the module docstring of snf.functions.ipsec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snf.core.contract import Decisions, Record
from snf.core.tables import BatchState, TableView
from snf.packet.batch import PacketBatch
from snf.packet.headers import FRAG_NONE, Headers

from .config import IpsecConfig, Lifetime
from .esp import EspAuthError, EspFormatError
from .policy import BYPASS, OPAQUE, Policy, Sa
from .sequence import SEQ_TABLE, Numbers, SequenceSpace
from .transport import frame, opened_tuple, split
from .tunnel import (
    ESP,
    OUTER_LEN,
    PORTED,
    decap_ecn,
    icmp_too_big,
    inner_tos,
    inner_tuple,
    link_prefix,
    outer_header,
)
from .window import NEW, ReplayWindow

__all__ = ["REASONS", "Gateway", "Work"]

REASONS = (
    "unknown_spi",
    "auth_failed",
    "replay",
    "outside_window",
    "no_policy",
    "discard",
    "unprotected",
    "policy_mismatch",
    "seq_exhausted",
    "fragment",
    "too_big",
    "pmtu",
    "dummy",
    "unsupported",
    "ecn",
)
_TUNNEL = {4: 4, 6: 41}  # inner IP version -> ESP next header (RFC 4303 tunnel mode)
_VERSION = {4: 4, 41: 6}
_NO_NEXT = 59  # a dummy packet (RFC 4303 §2.6)
_SOFT, _HARD = 1, 2


def _ip_end(pkt: bytes, l3: int, version: int) -> int:
    """End of the IP packet (the link layer may pad a frame past it)."""
    if version == 4:
        return min(len(pkt), l3 + int.from_bytes(pkt[l3 + 2 : l3 + 4], "big"))
    return min(len(pkt), l3 + 40 + int.from_bytes(pkt[l3 + 4 : l3 + 6], "big"))


@dataclass(slots=True)
class _Usage:
    """An SA's lifetime counters and, for an inbound SA, its window."""

    key: bytes
    packets: int
    bytes: int
    flags: int
    window: ReplayWindow | None
    stored: Any
    tat: int = 0  # outbound SA: when its next PMTU answer is due (GCRA, packet time)


class Gateway:
    def __init__(self, policy: Policy, config: IpsecConfig) -> None:
        self.policy = policy
        self.mtu = config.path_mtu
        # GCRA over packet time: pmtu_answers per second, in bursts of as many
        self.pmtu_interval = 1_000_000_000 // config.pmtu_answers
        self.pmtu_tolerance = (config.pmtu_answers - 1) * self.pmtu_interval
        self.sequence = SequenceSpace(config.seq_block)

    @staticmethod
    def spi_of(batch: PacketBatch, headers: Headers, i: int) -> int:
        """The SPI of an ESP packet (0 when cut short before it)."""
        l4, off = headers.l4_off[i], batch.offsets[i]
        spi = batch.payload[off + l4 : off + l4 + 4]
        return int.from_bytes(spi, "big") if len(spi) == 4 and l4 >= 0 else 0

    def key_sa(self, headers: Headers, i: int) -> Sa | None:
        """The SA whose partition a cleartext packet goes to: the outbound SA that
        seals it, or, in a decrypt-only stage (direction inbound), the inbound SA
        that carries its replies. Such a packet touches no state here; keyed with
        its replies, a flow's two halves leave this stage from one partition, in
        the order they came (a firewall behind the gateway needs that order)."""
        tup = self._tuple(headers, i)
        verdict = self.policy.decide(*tup)
        if isinstance(verdict, Sa):
            return verdict
        if self.policy.direction != "inbound" or verdict != BYPASS:
            return None
        return self.policy.reply_sa(*tup)

    def verdict(self, headers: Headers, i: int) -> Sa | tuple[str, str]:
        """The policy's answer for a cleartext packet. A fragment's ports are OPAQUE,
        so all of a datagram's fragments get one answer (policy module docstring)."""
        return self.policy.decide(*self._tuple(headers, i))

    @staticmethod
    def _tuple(headers: Headers, i: int) -> tuple[int, int, bytes, bytes, int, int]:
        proto = headers.proto[i]
        if headers.frag[i] != FRAG_NONE:
            sport = dport = OPAQUE
        elif proto in PORTED:
            sport, dport = headers.sport[i], headers.dport[i]
        else:
            sport = dport = 0
        return headers.version[i], proto, headers.src[i], headers.dst[i], sport, dport

    def start(
        self, batch: PacketBatch, headers: Headers, state: BatchState, decisions: Decisions
    ) -> Work:
        return Work(self, batch, headers, state, decisions)


class Work:
    """One batch through the gateway."""

    def __init__(
        self,
        gateway: Gateway,
        batch: PacketBatch,
        headers: Headers,
        state: BatchState,
        decisions: Decisions,
    ) -> None:
        self.g, self.batch, self.h, self.d = gateway, batch, headers, decisions
        self.partition = state.partition
        self.sa_table: TableView = state.table("sa")
        self.seq_table: TableView = state.table(SEQ_TABLE)
        self.ts = batch.records["ts_ns"].tolist()
        self.usage: dict[bytes, _Usage] = {}
        self.events: list[Record] = []
        self.counts = {"decrypted": 0, "encrypted": 0, "seq_reserved": 0}
        self.numbers: dict[int, Numbers] = {}  # outbound SA's SPI -> its numbers
        self.encrypted = 0
        self.reserved_before = gateway.sequence.reservations

    def _drop(self, i: int, reason: str) -> None:
        self.d.ports[i], self.d.reasons[i] = "drop", reason

    def _usage(self, sa: Sa) -> _Usage:
        key = (b"o" + sa.spi_bytes) if sa.out else (b"i" + sa.spi_bytes + sa.local)
        u = self.usage.get(key)
        if u is None:
            raw = self.sa_table.get(key)
            if sa.out:
                p, b, f, *tat = raw if raw is not None else (0, 0, 0)
                u = _Usage(key, int(p), int(b), int(f), None, raw, int(tat[0]) if tat else 0)
            else:
                window = ReplayWindow.load(sa.window, None if raw is None else raw[:2])
                p, b, f = raw[2:] if raw is not None else (0, 0, 0)
                u = _Usage(key, int(p), int(b), int(f), window, raw)
            self.usage[key] = u
        return u

    def _event(self, i: int, sa: Sa, u: _Usage, flag: int) -> None:
        u.flags |= flag
        name = "soft_lifetime" if flag == _SOFT else "hard_lifetime"
        self.counts[name] = self.counts.get(name, 0) + 1
        self.events.append(
            {
                "ts_ns": self.ts[i],
                "sa": sa.name,
                "spi": sa.spi,
                "event": name,
                "packets": u.packets,
                "bytes": u.bytes,
            }
        )

    def _hard(self, i: int, sa: Sa, u: _Usage) -> bool:
        """Whether the SA's hard lifetime is reached (reported once)."""
        life: Lifetime = sa.config.lifetime
        done = (life.hard_packets is not None and u.packets >= life.hard_packets) or (
            life.hard_bytes is not None and u.bytes >= life.hard_bytes
        )
        if done and not u.flags & _HARD:
            self._event(i, sa, u, _HARD)
        return done

    def _count(self, i: int, sa: Sa, u: _Usage, size: int) -> None:
        u.packets += 1
        u.bytes += size
        life: Lifetime = sa.config.lifetime
        if not u.flags & _SOFT and (
            (life.soft_packets is not None and u.packets >= life.soft_packets)
            or (life.soft_bytes is not None and u.bytes >= life.soft_bytes)
        ):
            self._event(i, sa, u, _SOFT)

    def inbound(self, i: int, sa: Sa | None) -> None:
        h = self.h
        if h.frag[i] != FRAG_NONE:
            return self._drop(i, "fragment")
        pkt, l3 = self.batch.packet(i), h.l3_off[i]
        esp = pkt[h.l4_off[i] : _ip_end(pkt, l3, h.version[i])]
        if len(esp) < 8:
            return self._drop(i, "malformed")
        if sa is None:
            return self._drop(i, "unknown_spi")
        u = self._usage(sa)
        window = u.window
        assert window is not None
        low = int.from_bytes(esp[4:8], "big")
        seq = window.infer(low) if sa.esn else low
        status = window.check(seq)
        if status != NEW:
            return self._drop(i, status)
        try:
            next_header, inner = sa.esp.open(esp, seq)
        except EspAuthError:
            return self._drop(i, "auth_failed")
        except EspFormatError:
            return self._drop(i, "malformed")
        if sa.limited and self._hard(i, sa, u):  # after the ICV: no report for a forgery
            return self._drop(i, "seq_exhausted")
        window.accept(seq)  # authentic: it may move the window, whatever it carries
        if sa.limited:
            self._count(i, sa, u, len(inner))
        else:
            u.packets += 1
            u.bytes += len(inner)
        if next_header == _NO_NEXT:
            return self._drop(i, "dummy")
        if sa.transport:
            return self._opened_transport(i, sa, pkt[: h.l4_off[i]], l3, next_header, inner)
        version = _VERSION.get(next_header)
        tup = inner_tuple(inner)
        if version is None or tup is None or tup[0] != version:
            return self._drop(i, "malformed")
        if not self.g.policy.inner_allowed(sa, *tup):
            return self._drop(i, "policy_mismatch")
        marked = decap_ecn(inner, inner_tos(pkt[l3:]))
        if marked is None:
            return self._drop(i, "ecn")  # CE outside, not ECN-capable inside (RFC 6040)
        inner = marked
        prefix = link_prefix(pkt[:l3], self.batch.linktype, version)
        if prefix is None:
            return self._drop(i, "unsupported")
        self.d.replaced[i] = prefix + inner
        self.counts["decrypted"] += 1
        return None

    def _opened_transport(
        self, i: int, sa: Sa, head: bytes, l3: int, proto: int, body: bytes
    ) -> None:
        """RFC 4303 §3.1.1: the header that carried ESP (`head`, from the link
        header on) carries `proto` again; RFC 4301 §5.2's check as in tunnel mode."""
        ip = frame(head[l3:], proto, body)
        tup = opened_tuple(ip)
        if isinstance(tup, str):
            return self._drop(i, tup)
        if not self.g.policy.inner_allowed(sa, *tup):
            return self._drop(i, "policy_mismatch")
        self.d.replaced[i] = head[:l3] + ip
        self.counts["decrypted"] += 1
        return None

    def outbound(self, i: int) -> None:
        sa_or_verdict = self.g.verdict(self.h, i)
        if not isinstance(sa_or_verdict, Sa):
            port, reason = sa_or_verdict
            if reason:
                self.d.ports[i], self.d.reasons[i] = port, reason
            return None
        sa, h = sa_or_verdict, self.h
        pkt, l3 = self.batch.packet(i), h.l3_off[i]
        inner = pkt[l3 : _ip_end(pkt, l3, h.version[i])]  # then: what ESP carries
        if sa.transport:
            cut = split(inner) if h.frag[i] == FRAG_NONE else None
            if cut is None:
                return self._drop(i, "fragment")  # RFC 4303 §3.1.1: whole datagrams only
            at, next_header = cut
            head, inner, prefix = inner[:at], inner[at:], pkt[:l3]
            if at + len(inner) + sa.esp.overhead(len(inner)) > self.g.mtu:
                return self._drop(i, "too_big")  # no address of ours to answer from
        else:
            head, next_header = b"", _TUNNEL[h.version[i]]
            if OUTER_LEN[sa.version] + len(inner) + sa.esp.overhead(len(inner)) > self.g.mtu:
                return self._too_big(i, sa, pkt[:l3], inner)
            prefix = link_prefix(pkt[:l3], self.batch.linktype, sa.version)
            if prefix is None:
                return self._drop(i, "unsupported")
        u = self._usage(sa)
        if sa.limited and self._hard(i, sa, u):
            return self._drop(i, "seq_exhausted")
        numbers = self.numbers.get(sa.spi)
        if numbers is None:
            last = (1 << 64) - 1 if sa.esn else (1 << 32) - 1
            numbers = self.numbers[sa.spi] = self.g.sequence.numbers(
                self.partition, self.seq_table, sa.spi_bytes, last
            )
        seq = numbers.take()
        if seq is None:
            if not u.flags & _HARD:
                self._event(i, sa, u, _HARD)
            return self._drop(i, "seq_exhausted")
        esp = sa.esp.seal(seq, next_header, inner)
        if sa.transport:
            self.d.replaced[i] = prefix + frame(head, ESP, esp)
        else:
            head = outer_header(sa.version, sa.local, sa.peer, len(esp), inner_tos(inner), seq)
            self.d.replaced[i] = prefix + head + esp
        if sa.limited:
            self._count(i, sa, u, len(inner))
        else:
            u.packets += 1
            u.bytes += len(inner)
        self.encrypted += 1
        return None

    def _too_big(self, i: int, sa: Sa, prefix: bytes, inner: bytes) -> None:
        """RFC 4301 §8: tell the inner source the MTU left inside the tunnel (ICMP),
        or drop when it cannot be told: IPv4 without DF, another IP version."""
        version = inner[0] >> 4
        if version == 4 and not inner[6] & 0x40:
            return self._drop(i, "too_big")
        room = self.g.mtu - OUTER_LEN[sa.version]
        fits = room  # the largest inner packet that fits (padding makes it uneven)
        while fits > 0 and fits + sa.esp.overhead(fits) > room:
            fits -= 1
        answer = icmp_too_big(prefix, self.batch.linktype, inner, sa.local, fits)
        if answer is None or not self._may_answer(i, self._usage(sa)):
            return self._drop(i, "too_big")
        self.d.replaced[i] = answer
        self.d.reasons[i] = "pmtu"
        return None

    def _may_answer(self, i: int, u: _Usage) -> bool:
        """Whether the SA's PMTU answers are under their rate (GCRA); if so, count one."""
        ts, g = self.ts[i], self.g
        if ts < u.tat - g.pmtu_tolerance:
            return False
        u.tat = max(u.tat, ts) + g.pmtu_interval
        return True

    def finish(self) -> None:
        """Write back each SA's changed value; hand over records and metrics."""
        for u in self.usage.values():
            w = u.window
            value = (
                [u.packets, u.bytes, u.flags, *([u.tat] if u.tat else [])]
                if w is None
                else [*w.dump(), u.packets, u.bytes, u.flags]
            )
            if value != u.stored:
                self.sa_table.set(u.key, value)
        if self.events:
            self.d.records["events"] = self.events
        self.counts["encrypted"] += self.encrypted
        self.counts["seq_reserved"] += self.g.sequence.reservations - self.reserved_before
        self.d.metrics.update({k: v for k, v in self.counts.items() if v})
