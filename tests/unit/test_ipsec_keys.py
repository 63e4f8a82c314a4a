"""ipsec's partition keys: fragments, and a decrypt stage's clear traffic.

Fragments in tunnel mode: one answer per datagram, sealed where the SA lives.

A fragment's ports are not known (RFC 4301 §7), so every fragment, the first
too, is decided without them: traffic of an SA whose selectors take any port
is keyed to that SA's partition and sealed there with its numbers; when the
first-matching selector or policy entry names ports, the fragment is dropped
(`fragment`), never sent in clear. Sealing a fragment on another partition would
draw sequence numbers from that partition's reservation: a repeated GCM nonce.
"""

from __future__ import annotations

from snf.functions.ipsec import Ipsec, IpsecConfig
from snf.functions.ipsec.policy import sa_hash
from snf.packet.batch import PacketBatch
from snf.packet.parse import parse_packet_batch
from tests.packets import fragments4, tcp4, udp4
from tests.unit.test_ipsec import T0, Gw, gateway_a, gateway_b, keys

__all__ = ["keys"]  # the key environment, autouse


def key_hashes(config: dict, frames: list[bytes]) -> list[int | None]:
    core = Ipsec(IpsecConfig.model_validate(config))
    batch = PacketBatch.from_rows(1, [(T0, len(f), f, 1, i, "") for i, f in enumerate(frames)])
    return list(core.key_hashes(batch, parse_packet_batch(batch)))


def test_fragments_of_an_any_port_sa_are_keyed_to_it_and_sealed_in_turn() -> None:
    frags = fragments4("10.1.0.5", "10.2.0.9", 5000, 53, bytes(3000), ip_id=7, frag_size=1200)
    assert len(frags) == 3
    assert key_hashes(gateway_a(), frags) == [sa_hash(True, 0x2001)] * 3
    a, b = Gw(gateway_a()), Gw(gateway_b())
    sealed = a(frags)
    assert sealed.ports == ["pass"] * 3
    seqs = [int.from_bytes(f[14 + 24 : 14 + 28], "big") for f in sealed.frames]
    assert seqs == [1, 2, 3]  # one SA, one run of numbers
    assert b(sealed.frames).frames == frags


def test_a_fragment_only_its_ports_could_place_is_dropped_not_sent_in_clear() -> None:
    config = gateway_a()
    out_sa = config["sas"][0]
    out_sa["selectors"] = [dict(out_sa["selectors"][0], proto="udp", remote_ports=53)]
    config["policies"] = [{"action": "bypass", "local": "0.0.0.0/0", "remote": "0.0.0.0/0"}]
    frags = fragments4("10.1.0.5", "10.2.0.9", 5000, 53, bytes(3000), ip_id=7, frag_size=1200)
    bypassed = fragments4("10.1.0.5", "8.8.8.8", 5000, 53, bytes(2000), ip_id=8, frag_size=1200)
    whole = udp4("10.1.0.5", "10.2.0.9", 5000, 53, b"q")
    out = Gw(config)([*frags, *bypassed, whole])
    assert out.reasons == ["fragment"] * 3 + [""] * 2 + [""]
    assert out.ports == ["drop"] * 3 + ["pass"] * 3
    assert out.frames[3:5] == bypassed  # in clear: no SA could have wanted them
    assert out.frames[5][14 + 9] == 50  # the whole datagram is sealed
    assert key_hashes(config, [*frags, whole]) == [None] * 3 + [sa_hash(True, 0x2001)]


def test_a_decrypt_stage_keys_clear_traffic_with_the_sa_of_its_replies() -> None:
    """direction inbound: A's clear packet to B touches no state here; keyed by the
    inbound SA that carries B's replies, both halves of the flow share a partition."""
    inbound = gateway_a(direction="inbound")
    frames = [
        udp4("10.1.0.5", "10.2.0.9", 5, 53),  # A -> B: with B's replies (SA 0x1001)
        tcp4("10.1.7.7", "10.2.1.1", 9, 443),
        udp4("10.1.0.5", "8.8.8.8", 5, 53),  # A -> internet: no SA answers it
        udp4("10.2.0.9", "10.1.0.5", 53, 5),  # B's traffic in clear: dropped, stays
    ]
    replies = sa_hash(False, 0x1001)
    assert key_hashes(inbound, frames) == [replies, replies, None, None]
    both = key_hashes(gateway_a(), frames)  # a gateway that seals: the sealing SA's
    assert both == [sa_hash(True, 0x2001)] * 2 + [None, None]
