"""ipsec's ICMP 'too big' answers are rate-limited per outbound SA, in packet time.

RFC 4443 §2.4 (f) asks ICMPv6 error messages to be rate-limited; the gateway does
so for both versions, with a GCRA of `pmtu_answers` per second in bursts of as
many. The limiter's state is in the SA's `sa` table value, so a successor core
continues it and a Kafka run answers the same packets as --local.
"""

from __future__ import annotations

from tests.packets import udp4
from tests.unit.test_ipsec import Gw, gateway_a, keys

__all__ = ["keys"]  # the key environment, autouse


def too_big_with_df() -> bytes:
    df = bytearray(udp4("10.1.0.5", "10.2.0.9", 5, 53, b"x" * 560))
    df[14 + 6] |= 0x40
    df[14 + 10 : 14 + 12] = b"\x00\x00"  # the parser does not check IPv4 checksums
    return bytes(df)


def test_pmtu_answers_follow_their_rate_in_packet_time_across_a_takeover() -> None:
    a = Gw(gateway_a(path_mtu=600, pmtu_answers=3))
    df = too_big_with_df()
    assert a([df] * 5).reasons == ["pmtu"] * 3 + ["too_big"] * 2  # a burst of 3
    a.seq += 400_000_000  # 0.4 s of packet time later: one more answer is due
    assert a([df] * 2).reasons == ["pmtu", "too_big"]
    a.core.forget(0)  # a successor reads the limiter from the table
    assert a([df]).reasons == ["too_big"]
    assert len(a.stores["sa"].data[b"o\x00\x00\x20\x01"]) == 4  # packets, bytes, flags, due
    a.seq += 2_000_000_000
    assert a([df] * 4).reasons == ["pmtu"] * 3 + ["too_big"]


def test_an_sa_that_never_answered_keeps_its_three_field_value() -> None:
    a = Gw(gateway_a())
    a([udp4("10.1.0.5", "10.2.0.9", 5, 53, b"q")])
    assert a.stores["sa"].data[b"o\x00\x00\x20\x01"] == [1, 29, 0]
