"""The ipsec core (snf.functions.ipsec): config, the policy, both paths, every reason.

Two snf gateways face each other (A: 192.0.2.1 with 10.1.0.0/16, B:
198.51.100.2 with 10.2.0.0/16): what A seals, B opens, and the other way.
The crypto against implementations we did not write is in test_ipsec_kat.py,
test_ipsec_scapy.py and test_ipsec_tshark.py; crashes in test_ipsec_recovery.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from snf.core.engine import FunctionEngine
from snf.core.tables import BatchState
from snf.functions.ipsec import Ipsec, IpsecConfig
from snf.functions.ipsec.esp import KEY_BYTES
from snf.functions.ipsec.policy import sa_hash
from snf.functions.ipsec.window import NEW, OUTSIDE, REPLAY, ReplayWindow
from snf.packet.batch import PacketBatch
from snf.packet.parse import parse_packet_batch
from snf.packet.rewrite import checksum
from tests.harness import Handled, JsonStore, handle
from tests.packets import ether, ip4, tcp4, udp4, udp6

A_TO_B = bytes(range(1, 21))
B_TO_A = bytes(range(51, 71))
T0 = 10**18


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("A_TO_B", A_TO_B.hex())
    monkeypatch.setenv("B_TO_A", B_TO_A.hex())


def sas(
    me: str, peer: str, out_env: str, in_env: str, mine: str, theirs: str, **extra: Any
) -> list:
    sel = [{"local": mine, "remote": theirs}]
    common = {"local": me, "peer": peer, "cipher": "aes-gcm-128", "selectors": sel, **extra}
    return [
        {
            "name": "out",
            "direction": "out",
            "spi": 0x2001 if me == "192.0.2.1" else 0x1001,
            "key_env": out_env,
            **common,
        },
        {
            "name": "in",
            "direction": "in",
            "spi": 0x1001 if me == "192.0.2.1" else 0x2001,
            "key_env": in_env,
            **common,
        },
    ]


def gateway_a(**config: Any) -> dict[str, Any]:
    return {
        "sas": sas("192.0.2.1", "198.51.100.2", "A_TO_B", "B_TO_A", "10.1.0.0/16", "10.2.0.0/16"),
        "policies": [{"action": "bypass", "local": "10.1.0.0/16", "remote": "0.0.0.0/0"}],
        **config,
    }


def gateway_b(**config: Any) -> dict[str, Any]:
    return {
        "sas": sas("198.51.100.2", "192.0.2.1", "B_TO_A", "A_TO_B", "10.2.0.0/16", "10.1.0.0/16"),
        **config,
    }


class Gw:
    def __init__(self, config: dict[str, Any]) -> None:
        self.core = Ipsec(IpsecConfig.model_validate(config))
        self.engine = FunctionEngine(self.core)
        self.stores = {t: JsonStore() for t in Ipsec.tables}
        self.seq = 0

    def __call__(self, frames: list[bytes], linktype: int = 1) -> Handled:
        rows = [(T0 + self.seq + i, len(f), f, 1, self.seq + i, "") for i, f in enumerate(frames)]
        self.seq += len(rows)
        return handle(self.engine, PacketBatch.from_rows(linktype, rows), self.stores)


def test_a_seals_and_b_opens_the_same_packets() -> None:
    a, b = Gw(gateway_a()), Gw(gateway_b())
    frames = [udp4("10.1.0.5", "10.2.0.9", 1000 + i, 53, b"q%d" % i) for i in range(8)]
    frames.append(tcp4("10.1.3.4", "10.2.9.9", 40000, 443, flags="S"))
    sealed = a(frames)
    assert sealed.ports == ["pass"] * 9 and a.engine.counters["encrypted"] == 9
    for f in sealed.frames:
        assert f[12:14] == b"\x08\x00" and f[14 + 9] == 50  # IPv4, ESP
        assert f[14 + 12 : 14 + 20] == bytes([192, 0, 2, 1, 198, 51, 100, 2])
        assert f[14 + 6] & 0x40  # DF
    seqs = [int.from_bytes(f[14 + 24 : 14 + 28], "big") for f in sealed.frames]
    assert seqs == list(range(1, 10))  # RFC 4303: the first packet has number 1
    opened = b(sealed.frames)
    assert opened.ports == ["pass"] * 9
    assert opened.frames == frames  # the inner packets, byte for byte, link header kept


def test_output_does_not_depend_on_batch_cuts() -> None:
    frames = [udp4("10.1.0.5", "10.2.0.9", 1000 + i, 53, b"q%d" % i) for i in range(30)]
    whole, cut = Gw(gateway_a()), Gw(gateway_a())
    assert (
        whole(frames).frames
        == cut(frames[:7]).frames + cut(frames[7:19]).frames + cut(frames[19:]).frames
    )


def test_replays_and_old_packets_are_dropped_with_their_reasons() -> None:
    a, b = Gw(gateway_a()), Gw(gateway_b(sas=None) if False else gateway_b())
    sealed = a([udp4("10.1.0.5", "10.2.0.9", 1000 + i, 53) for i in range(3)]).frames
    assert b(sealed).ports == ["pass"] * 3
    again = b([sealed[1], sealed[0]])
    assert again.reasons == ["replay", "replay"] and again.ports == ["drop", "drop"]


def tamper(frame: bytes, at: int) -> bytes:
    out = bytearray(frame)
    out[at] ^= 0x01
    return bytes(out)


def test_tampering_unknown_spis_and_cut_packets_are_dropped() -> None:
    a, b = Gw(gateway_a()), Gw(gateway_b())
    sealed = a([udp4("10.1.0.5", "10.2.0.9", 1, 53, b"x" * 40) for _ in range(2)]).frames
    unknown = sealed[1][: 14 + 20] + b"\x00\x00\x99\x99" + sealed[1][14 + 24 :]
    short = ether(ip4("192.0.2.1", "198.51.100.2", 50, b"\x00\x00\x20"))
    out = b([tamper(sealed[0], -20), unknown, short, sealed[1]])
    assert out.reasons == ["auth_failed", "unknown_spi", "malformed", ""]
    # A forged packet did not move the window: the genuine one with its number passes.
    assert b([sealed[0]]).reasons == [""]


def test_the_window_and_esn_follow_rfc_4303() -> None:
    w = ReplayWindow(64)
    assert w.check(0) == OUTSIDE  # no sender uses 0
    for seq in (1, 5, 3):
        assert w.check(seq) == NEW
        w.accept(seq)
    assert (w.check(3), w.check(4), w.check(100)) == (REPLAY, NEW, NEW)
    w.accept(100)
    assert (w.check(36), w.check(37), w.check(5)) == (OUTSIDE, NEW, OUTSIDE)
    assert ReplayWindow.load(64, w.dump()) == w
    # ESN (Appendix A2.2): near the top of an epoch, a small low value is the next epoch.
    e = ReplayWindow(64, top=(3 << 32) | 0xFFFFFFF0, bits=1)
    assert e.infer(0x00000002) == (4 << 32) | 2
    assert e.infer(0xFFFFFFE0) == (3 << 32) | 0xFFFFFFE0
    early = ReplayWindow(64, top=(5 << 32) | 10, bits=1)
    assert early.infer(0xFFFFFFF0) == (4 << 32) | 0xFFFFFFF0  # just behind, last epoch
    assert early.infer(20) == (5 << 32) | 20


def test_esn_gateways_carry_on_past_two_to_the_32() -> None:
    a = Gw(
        gateway_a(
            sas=sas(
                "192.0.2.1",
                "198.51.100.2",
                "A_TO_B",
                "B_TO_A",
                "10.1.0.0/16",
                "10.2.0.0/16",
                esn=True,
            )
        )
    )
    b = Gw(
        gateway_b(
            sas=sas(
                "198.51.100.2",
                "192.0.2.1",
                "B_TO_A",
                "A_TO_B",
                "10.2.0.0/16",
                "10.1.0.0/16",
                esn=True,
            )
        )
    )
    start = (1 << 32) - 2
    a.stores["seq"].set(b"\x00\x00\x20\x01", start)  # as if 2^32 - 3 numbers were used
    b.stores["sa"].set(b"i\x00\x00\x20\x01" + bytes([198, 51, 100, 2]), [start - 1, "1", 0, 0, 0])
    frames = [udp4("10.1.0.5", "10.2.0.9", 7, 53, b"%d" % i) for i in range(5)]
    sealed = a(frames)
    lows = [int.from_bytes(f[14 + 24 : 14 + 28], "big") for f in sealed.frames]
    assert lows == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 2]
    assert b(sealed.frames).frames == frames


def test_without_esn_the_last_number_is_a_hard_stop_never_a_wrap() -> None:
    a = Gw(gateway_a())
    a.stores["seq"].set(b"\x00\x00\x20\x01", (1 << 32) - 2)
    out = a([udp4("10.1.0.5", "10.2.0.9", 7, 53) for _ in range(4)])
    assert out.reasons == ["", "", "seq_exhausted", "seq_exhausted"]
    assert [r["event"] for r in out.records["events"]] == ["hard_lifetime"]


def test_lifetimes_report_soft_once_and_stop_at_hard() -> None:
    life = {"soft_packets": 2, "hard_packets": 4}
    a = Gw(
        gateway_a(
            sas=sas(
                "192.0.2.1",
                "198.51.100.2",
                "A_TO_B",
                "B_TO_A",
                "10.1.0.0/16",
                "10.2.0.0/16",
                lifetime=life,
            )
        )
    )
    first = a([udp4("10.1.0.5", "10.2.0.9", 7, 53) for _ in range(3)])
    second = a([udp4("10.1.0.5", "10.2.0.9", 7, 53) for _ in range(3)])
    assert first.reasons + second.reasons == [""] * 4 + ["seq_exhausted"] * 2
    events = first.records["events"] + second.records["events"]
    assert [(e["event"], e["packets"]) for e in events] == [
        ("soft_lifetime", 2),
        ("hard_lifetime", 4),
    ]
    assert a.engine.counters["soft_lifetime"] == a.engine.counters["hard_lifetime"] == 1


def test_the_policy_decides_cleartext() -> None:
    a = Gw(
        gateway_a(
            policies=[
                {"action": "discard", "local": "10.1.9.0/24", "remote": "0.0.0.0/0"},
                {"action": "bypass", "local": "10.1.0.0/16", "remote": "0.0.0.0/0"},
            ]
        )
    )
    out = a(
        [
            udp4("10.1.0.5", "8.8.8.8", 5, 53),  # bypass
            udp4("8.8.8.8", "10.1.0.5", 53, 5),  # the reply: bypass (either orientation)
            udp4("10.1.9.5", "8.8.8.8", 5, 53),  # discard entry first
            udp4("10.2.0.5", "10.1.0.8", 5, 53),  # B's traffic in clear: must come protected
            udp4("10.7.0.5", "8.8.8.8", 5, 53),  # nothing covers it
        ]
    )
    assert out.reasons == ["", "", "discard", "unprotected", "no_policy"]
    assert out.ports == ["pass", "pass", "drop", "drop", "drop"]


def test_directions_split_one_gateway_into_two_stages() -> None:
    inbound, outbound = Gw(gateway_a(direction="inbound")), Gw(gateway_a(direction="outbound"))
    clear = udp4("10.1.0.5", "10.2.0.9", 5, 53)
    assert inbound([clear]).frames == [clear]  # left for the outbound stage
    from_b = Gw(gateway_b())([udp4("10.2.0.9", "10.1.0.5", 53, 5)]).frames[0]
    opened = inbound([from_b])
    assert opened.reasons == [""] and outbound(opened.frames).frames == opened.frames
    assert outbound([from_b]).reasons == ["no_policy"]  # ESP is not this stage's to open


def test_decrypted_traffic_outside_the_selectors_is_dropped() -> None:
    sneaky = Gw(
        gateway_b(
            sas=sas("198.51.100.2", "192.0.2.1", "B_TO_A", "A_TO_B", "10.0.0.0/8", "10.1.0.0/16")
        )
    )
    sealed = sneaky([udp4("10.9.0.1", "10.1.0.5", 5, 53)]).frames  # B may only send 10.2/16
    assert Gw(gateway_a())(sealed).reasons == ["policy_mismatch"]


def test_too_big_packets_get_an_icmp_answer_or_a_reason() -> None:
    a = Gw(gateway_a(path_mtu=600))
    df = bytearray(udp4("10.1.0.5", "10.2.0.9", 5, 53, b"x" * 560))
    df[14 + 6] |= 0x40
    df[14 + 10 : 14 + 12] = b"\x00\x00"
    out = a([bytes(df), udp4("10.1.0.5", "10.2.0.9", 5, 53, b"x" * 560)])
    assert (out.ports, out.reasons) == (["pass", "drop"], ["pmtu", "too_big"])
    icmp = out.frames[0]
    assert icmp[:6] == df[6:12] and icmp[14 + 9] == 1  # back to the sender, ICMP
    assert icmp[14 + 12 : 14 + 20] == bytes([192, 0, 2, 1]) + df[14 + 12 : 14 + 16]
    assert icmp[14 + 20 : 14 + 22] == b"\x03\x04"  # fragmentation needed
    mtu = int.from_bytes(icmp[14 + 26 : 14 + 28], "big")
    fits = udp4("10.1.0.5", "10.2.0.9", 5, 53, b"x" * (mtu - 28))
    assert a([fits]).reasons == [""] and len(a([fits]).frames[0]) - 14 <= 600
    big = udp4("10.1.0.5", "10.2.0.9", 5, 53, b"x" * (mtu - 27))
    assert a([big]).reasons == ["too_big"]  # no DF: the sender would not listen


def test_ipv6_inner_gets_packet_too_big() -> None:
    six = sas("192.0.2.1", "198.51.100.2", "A_TO_B", "B_TO_A", "2001:db8:1::/48", "2001:db8:2::/48")
    six[0]["local"] = six[1]["local"] = "2001:db8:ffff::1"
    six[0]["peer"] = six[1]["peer"] = "2001:db8:ffff::2"
    a = Gw({"sas": six, "path_mtu": 1280})
    out = a(
        [
            udp6("2001:db8:1::5", "2001:db8:2::9", 5, 53, b"x" * 1250),
            udp6("2001:db8:1::5", "2001:db8:2::9", 5, 53, b"small"),
        ]
    )
    assert out.reasons == ["pmtu", ""]
    assert out.frames[0][12:14] == b"\x86\xdd" and out.frames[0][14 + 40] == 2  # packet too big
    assert out.frames[1][12:14] == b"\x86\xdd" and out.frames[1][14 + 6] == 50  # ESP over IPv6


def test_ipv4_inner_over_an_ipv6_tunnel_switches_the_ethertype() -> None:
    v6 = sas(
        "2001:db8:ffff::1", "2001:db8:ffff::2", "A_TO_B", "B_TO_A", "10.1.0.0/16", "10.2.0.0/16"
    )
    out = Gw({"sas": v6})([udp4("10.1.0.5", "10.2.0.9", 5, 53)])
    assert out.frames[0][12:14] == b"\x86\xdd" and out.frames[0][14 + 6] == 50


def test_every_packet_of_an_sa_has_one_partition_key_and_the_rest_stays() -> None:
    a = Ipsec(IpsecConfig.model_validate(gateway_a()))
    from_b = Gw(gateway_b())([udp4("10.2.0.9", "10.1.0.5", 53, 5)]).frames[0]
    frames = [
        udp4("10.1.0.5", "10.2.0.9", 5, 53),
        tcp4("10.1.7.7", "10.2.1.1", 9, 443),
        from_b,
        udp4("10.1.0.5", "8.8.8.8", 5, 53),
    ]
    batch = PacketBatch.from_rows(1, [(T0, len(f), f, 1, i, "") for i, f in enumerate(frames)])
    keys = list(a.key_hashes(batch, parse_packet_batch(batch)))
    assert keys == [sa_hash(True, 0x2001), sa_hash(True, 0x2001), sa_hash(False, 0x1001), None]


def test_a_recovered_core_jumps_to_the_reservation() -> None:
    a = Gw(gateway_a(seq_block=16))
    frames = [udp4("10.1.0.5", "10.2.0.9", 5, 53)] * 5
    a(frames)
    assert a.stores["seq"].data == {b"\x00\x00\x20\x01": 17}
    a.core.forget(0)  # the tables may have changed beneath the core
    seqs = [int.from_bytes(f[14 + 24 : 14 + 28], "big") for f in a(frames).frames]
    assert seqs == [17, 18, 19, 20, 21] and a.stores["seq"].data[b"\x00\x00\x20\x01"] == 33


def config_error(config: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as err:
        IpsecConfig.model_validate(config)
    return str(err.value)


def test_config_errors_name_the_field_and_never_show_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = gateway_a()
    wrong = dict(base["sas"][0], key_env="SHORT")
    monkeypatch.setenv("SHORT", "ab" * 7)
    text = config_error({"sas": [wrong]})
    assert "key_env $SHORT" in text and "20 bytes" in text and "ab" * 7 not in text
    missing = dict(base["sas"][0], key_env="NOT_SET_ANYWHERE")
    assert "$NOT_SET_ANYWHERE is not set" in config_error({"sas": [missing]})
    both = dict(base["sas"][0], key_file="k.hex")
    assert "exactly one of key_file" in config_error({"sas": [both]})
    assert "spi" in config_error({"sas": [dict(base["sas"][0], spi=7)]})
    twice = [base["sas"][0], dict(base["sas"][0], name="other")]
    assert "used twice" in config_error({"sas": twice})
    assert "multiple of 32" in config_error({"sas": [dict(base["sas"][1], replay_window=100)]})
    assert "selectors" in config_error({"sas": [dict(base["sas"][0], selectors=[])]})
    bad_net = dict(base["sas"][0], selectors=[{"local": "10.1.0.1/16", "remote": "10.2.0.0/16"}])
    assert "CIDR" in config_error({"sas": [bad_net]})
    key = tmp_path / "k.hex"
    key.write_text(A_TO_B.hex() + "\n")
    from_file = dict(base["sas"][0], key_env=None, key_file="k.hex")
    sa = IpsecConfig.model_validate({"sas": [from_file]}, context={"base_dir": tmp_path}).sas[0]
    assert sa.key == A_TO_B and A_TO_B.hex() not in repr(sa) + str(sa.model_dump())
    assert KEY_BYTES["aes-gcm-128"] == 20


def test_sealed_and_opened_packets_keep_their_length_on_the_wire_true() -> None:
    a = Gw(gateway_a())
    frames = [udp4("10.1.0.5", "10.2.0.9", 5, 53, b"x" * n) for n in (0, 7, 300)]
    rows = [(T0 + i, len(f) + 10, f, 1, i, "") for i, f in enumerate(frames)]  # 10 bytes cut
    out = a.engine.handle(PacketBatch.from_rows(1, rows), BatchState(dict(a.stores)))
    rec = out.packets["pass"].records
    # The length on the wire grows with the packet; what the snaplen cut stays cut.
    assert (rec["orig_len"] - rec["cap_len"]).tolist() == [10, 10, 10]
    assert rec["cap_len"].tolist() == [len(p) for p in out.packets["pass"].packets()]


def congested(frame: bytes) -> bytes:
    """`frame` with CE on its outer IPv4 header (not covered by the ICV), checksum fixed."""
    out = bytearray(frame)
    out[14 + 1] |= 3
    out[14 + 10 : 14 + 12] = b"\x00\x00"
    out[14 + 10 : 14 + 12] = checksum(out[14 : 14 + 20]).to_bytes(2, "big")
    return bytes(out)


def test_a_congestion_mark_outside_reaches_the_inner_packet_rfc_6040() -> None:
    a, b = Gw(gateway_b()), Gw(gateway_a())
    capable = bytearray(udp4("10.2.0.9", "10.1.0.5", 53, 5, b"ect"))
    capable[14 + 1] = 0x02  # ECT(0)
    capable[14 + 10 : 14 + 12] = b"\x00\x00"
    capable[14 + 10 : 14 + 12] = checksum(capable[14:34]).to_bytes(2, "big")
    plain = udp4("10.2.0.9", "10.1.0.5", 53, 5, b"not-ect")
    sealed = a([bytes(capable), plain]).frames
    assert sealed[0][14 + 1] & 3 == 2  # the encapsulator copies ECN outward
    out = b([congested(f) for f in sealed])
    assert (out.ports, out.reasons) == (["pass", "drop"], ["", "ecn"])
    inner = out.frames[0]
    assert inner[14 + 1] & 3 == 3 and checksum(inner[14:34]) == 0  # CE, header still valid
