"""IPsec ESP gateway (RFC 4303, tunnel or transport mode) with manually keyed SAs.

Summary
    ESP packets addressed to one of our tunnel addresses are looked up by
    (address, SPI), checked against the SA's anti-replay window, authenticated,
    decrypted, checked against the SA's selectors, and leave as the inner
    packet. Cleartext packets that an outbound SA's selectors cover are
    encrypted and leave as ESP from our tunnel address to the peer's. Other
    cleartext follows the policy (RFC 4301's SPD, smallest useful form):
    traffic of an inbound SA arriving unprotected is discarded, then the
    `policies` entries decide (bypass or discard), then `default`. Ciphers:
    AES-GCM-128/256 (RFC 4106) and AES-CBC-128/256 with HMAC-SHA-256-128
    (RFC 4868), from the `cryptography` package (OpenSSL). A transport-mode
    SA (RFC 4303 §3.1.1) protects the traffic between two hosts, `local` and
    `peer`: ESP goes between their packets' IP header and payload
    (transport.py). Everything is deterministic (GCM's IV is the sequence
    number, CBC's the AES encryption of it), so `--local` and a Kafka run
    give the same bytes.

Ports
    pass    decrypted inner packets; ESP packets we sealed; bypassed
            cleartext; ICMP "fragmentation needed" / "packet too big" answers
            that replaced a packet too big for `path_mtu` (reason "pmtu")
    drop    reason "unknown_spi", "auth_failed", "replay" (already received),
            "outside_window" (older than the window), "malformed" (cut short,
            bad padding, a tunnel SA's payload not IP), "no_policy" (default
            discard), "discard" (a discard policy), "unprotected" (an inbound SA's
            traffic in clear), "policy_mismatch" (decrypted traffic outside
            its SA's selectors), "seq_exhausted" (a hard lifetime or the last
            sequence number reached), "fragment" (ESP in outer fragments: not
            reassembled; a fragment a transport SA would carry; a cleartext
            fragment only its ports could place, RFC 4301 §7), "too_big"
            (over the MTU and no ICMP given: IPv4 without DF, another IP
            version than the SA's, a transport SA's packet, answers over
            pmtu_answers per second), "dummy" (RFC
            4303 §2.6 dummy packets), "unsupported" (the capture's link type
            cannot carry the other IP version), "ecn" (the outer header says
            congestion (CE) and the inner packet is not ECN-capable: RFC 6040
            §4.2; a CE mark on an ECN-capable inner packet is carried over)
    events  records: an SA crossed its soft or hard lifetime (once each)

Config (IpsecConfig, config.py)
    direction  both|inbound|outbound, default both (inbound: decrypt only,
               out SAs' traffic passes in clear; outbound: encrypt only)
    sas        [{name, direction: in|out, mode: tunnel|transport, spi, local,
               peer, selectors: [{local, remote, proto, local_ports,
               remote_ports}] (transport: local and remote are exactly the
               SA's local and peer), cipher,
               key_file | key_env, esn, replay_window, lifetime:
               {soft_packets, hard_packets, soft_bytes, hard_bytes}}]
    policies   [{action: bypass|discard, local, remote, proto, ...}]
    default    bypass|discard, default discard
    path_mtu   default 1500
    seq_block  outbound sequence numbers reserved per changelog write, 4096

State
    sa   key: "i" + SPI + our address (in) or "o" + SPI (out)
         value: in: [top, window bits as hex, packets, bytes, flags];
         out: [packets, bytes, flags] (flags: 1 soft, 2 hard lifetime
         reported); journaled like every table: a takeover rejects exactly
         the replays the old owner would have
    seq  key: SPI; value: the reservation (every number below may have been
         used). A reserved table: written before any number of the block is
         sent, never undone by a recovery (sequence.py)
    Every packet of an SA goes to one partition (key "custom": sa_hash of
    its SPI); other packets stay where they are.

Metrics
    the engine's counters: "in", "pass", "pass:pmtu", "drop:<reason>";
    "decrypted", "encrypted", "seq_reserved" (blocks reserved),
    "soft_lifetime", "hard_lifetime".

Example
    - type: ipsec
      sas:
        - {name: to-b, direction: out, spi: 0x2001, local: 192.0.2.1,
           peer: 198.51.100.2, cipher: aes-gcm-128, key_file: keys/to-b.hex,
           selectors: [{local: 10.1.0.0/16, remote: 10.2.0.0/16}]}
        - {name: from-b, direction: in, spi: 0x1001, local: 192.0.2.1,
           peer: 198.51.100.2, cipher: aes-gcm-128, key_env: SNF_FROM_B_KEY,
           selectors: [{local: 10.1.0.0/16, remote: 10.2.0.0/16}]}
      policies: [{action: bypass, local: 10.1.0.0/16, remote: 0.0.0.0/0}]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from snf.core.contract import Decisions, FunctionConfig, NetworkFunction, triage
from snf.core.reasons import MALFORMED
from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch
from snf.packet.headers import FRAG_NONE, KIND_IP, Headers

from .config import IpsecConfig
from .gateway import REASONS, Gateway
from .policy import Policy, Sa
from .sequence import SEQ_TABLE

__all__ = ["Ipsec", "IpsecConfig"]

ESP = 50


class Ipsec(NetworkFunction):
    """ESP gateway core (tunnel and transport mode); see the module docstring."""

    kind: ClassVar[str] = "ipsec"
    ports: ClassVar[tuple[str, ...]] = ("pass", "drop")
    record_ports: ClassVar[tuple[str, ...]] = ("events",)
    reasons: ClassVar[tuple[str, ...]] = (MALFORMED, *REASONS)
    metrics: ClassVar[tuple[str, ...]] = (
        "decrypted",
        "encrypted",
        "seq_reserved",
        "soft_lifetime",
        "hard_lifetime",
    )
    tables: ClassVar[tuple[str, ...]] = ("sa", SEQ_TABLE)
    reserved_tables: ClassVar[tuple[str, ...]] = (SEQ_TABLE,)
    needs_payload: ClassVar[bool] = True  # it encrypts and decrypts whole packets
    rewrites_payload: ClassVar[bool] = True  # so what follows it travels whole too
    Config: ClassVar[type[FunctionConfig]] = IpsecConfig
    key = "custom"
    key_flow_consistent = False

    def __init__(self, config: IpsecConfig) -> None:
        super().__init__(config)
        self.config: IpsecConfig = config
        self.policy = Policy(config)
        self.gateway = Gateway(self.policy, config)

    def forget(self, partition: int) -> None:
        self.gateway.sequence.forget(partition)

    def _esp_sa(self, batch: PacketBatch, headers: Headers, i: int) -> Sa | bool | None:
        """For an ESP packet to one of our addresses (and direction != outbound):
        its inbound SA, or None when the SPI is unknown; False otherwise."""
        policy = self.policy
        if headers.proto[i] != ESP or policy.direction == "outbound":
            return False
        dst = headers.dst[i]
        if dst not in policy.local_addrs:
            return False
        return policy.in_sas.get((dst, self.gateway.spi_of(batch, headers, i)))

    def key_hashes(self, batch: PacketBatch, headers: Headers) -> Sequence[int | None]:
        """An SA's packets: its hash (inbound by SPI, outbound by the SA the
        selectors pick, cleartext fragments included); with direction inbound, the
        cleartext an outbound SA covers goes with its replies' inbound SA
        (Gateway.key_sa); everything else None (stay)."""
        out: list[int | None] = []
        gateway = self.gateway
        for i, kind in enumerate(headers.kind):
            if kind != KIND_IP:
                out.append(None)
                continue
            sa = self._esp_sa(batch, headers, i)
            if sa is False:  # cleartext, fragments too: sealed only where the SA lives
                sa = gateway.key_sa(headers, i)
            elif headers.frag[i] != FRAG_NONE:
                sa = None  # ESP in fragments: dropped where it is
            out.append(sa.hash if isinstance(sa, Sa) else None)
        return out

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        decisions, ip = triage(headers)
        work = self.gateway.start(batch, headers, state, decisions)
        for i in ip:
            try:
                sa = self._esp_sa(batch, headers, i)
                if sa is False:
                    work.outbound(i)
                else:
                    work.inbound(i, sa)  # type: ignore[arg-type]
            except Exception:  # crafted content broke an assumption: drop, never raise
                decisions.replaced.pop(i, None)
                decisions.ports[i], decisions.reasons[i] = "drop", MALFORMED
        work.finish()
        return decisions
