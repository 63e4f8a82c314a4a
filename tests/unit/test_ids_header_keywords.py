"""IDS header keywords (functions/ids/header_keywords.py): every keyword, both ways.

Packets are crafted with scapy (IPv4 options spliced in by hand), offsets come from
snf.packet's parser and options from rules._split_options, so each case reads like a
rule. The examples of Suricata's documentation (rules/header-keywords) are checked too.
"""

from __future__ import annotations

import re

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import GRE, Ether
from scapy.packet import Packet, Raw

from snf.functions.ids.header_keywords import (
    HEADER_KEYWORDS,
    HeaderProgram,
    compile_header_keywords,
)
from snf.functions.ids.options import split_options as _split_options
from snf.functions.ids.specs import RuleError
from snf.functions.ids.tunnels import decapsulate
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.scalar import ROW_FIELDS, parse_packet

ETH = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800))
ETH6 = ETH[:12] + b"\x86\xdd"


def frame_of(pkt: Packet | bytes) -> bytes:
    if isinstance(pkt, bytes):  # an IPv4 packet spliced by hand
        return ETH + pkt
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / pkt)


def offsets(frame: bytes) -> tuple[int, int | None, int]:
    row = dict(zip(ROW_FIELDS, parse_packet(LINKTYPE_ETHERNET, frame), strict=True))
    assert row["error"] == "", row["error"]
    return row["l3_off"], None if row["l4_off"] < 0 else row["l4_off"], row["version"]


def program(text: str) -> HeaderProgram:
    prog = compile_header_keywords(_split_options(text))
    assert prog is not None
    return prog


def hit(text: str, pkt: Packet | bytes) -> bool:
    frame = frame_of(pkt)
    return program(text).match(frame, *offsets(frame))


def with_options(pkt: Packet, options: bytes) -> bytes:
    """The IPv4 packet with `options` (padded with EOL) between its header and payload."""
    raw = bytes(pkt)
    options += b"\x00" * (-len(options) % 4)
    head = bytearray(raw[:20])
    head[0] = 0x40 | (5 + len(options) // 4)
    head[2:4] = (len(raw) + len(options)).to_bytes(2, "big")
    return bytes(head) + options + raw[20:]


# -- flags ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "flags", "expected"),
    [
        ("S", "S", True), ("S", "SA", False), ("S", "SE", False), ("S", "", False),
        ("SA", "SA", True), ("SA", "SAP", False), ("FPU", "FPU", True),
        ("S,CE", "SEC", True), ("S,CE", "SA", False), ("S,12", "SC", True),
        ("SA,12", "SAE", True), ("C", "C", True), ("E", "E", True), ("12", "CE", True),
        ("+S", "SA", True), ("+S", "A", False), ("S+", "SAP", True), ("+SA", "SAF", True),
        ("*SA", "S", True), ("*SA", "A", True), ("*SA", "F", False),
        ("!R", "S", True), ("!R", "R", False), ("!R", "RA", False),
        ("!SA", "S", True), ("!SA", "SA", False),  # !: not all of them set, as Suricata
        ("0", "", True), ("0", "A", False), ("+0", "", True), ("+0", "S", False),
        ("!0", "A", True), ("!0", "", False), ("0,CE", "CE", False),
        (" S , C E ", "SCE", True),
    ],
)  # fmt: skip
def test_flags(value: str, flags: str, expected: bool) -> None:
    assert hit(f"flags:{value};", IP() / TCP(flags=flags)) is expected
    assert hit(f"tcp.flags:{value};", IP() / TCP(flags=flags)) is expected


def test_flags_apply_to_tcp_only() -> None:
    assert not hit("flags:!R;", IP() / UDP())
    assert not hit("flags:!R;", IP() / ICMP())
    assert hit("flags:!R;", IPv6() / IPv6ExtHdrHopByHop() / TCP(flags="S"))


# -- seq, ack, window ----------------------------------------------------------------


def test_suricata_null_scan_example() -> None:
    rule = 'msg:"GPL SCAN NULL"; flow:stateless; ack:0; flags:0; seq:0; sid:2100623; rev:7;'
    null = IP() / TCP(flags="", seq=0, ack=0)
    assert hit(rule, null)
    assert not hit(rule, IP() / TCP(flags="", seq=1, ack=0))
    assert not hit(rule, IP() / TCP(flags="", seq=0, ack=1))
    assert not hit(rule, IP() / TCP(flags="A", seq=0, ack=0))
    assert hit("seq:4294967295;", IP() / TCP(seq=2**32 - 1))
    assert not hit("seq:4294967295;", IP() / TCP(seq=0))
    assert hit("ack:1;", IP() / TCP(ack=1))
    assert not hit("ack:1;", IP() / UDP())
    assert hit("seq:7;", IPv6() / TCP(seq=7))


def test_window_examples() -> None:
    rule = "flow:stateless; flags:S,12; window:55808;"  # GPL DELETED typot trojan traffic
    assert hit(rule, IP() / TCP(flags="SCE", window=55808))
    assert not hit(rule, IP() / TCP(flags="SCE", window=55809))
    assert hit("window:!1024;", IP() / TCP(window=512))
    assert not hit("window:!1024;", IP() / TCP(window=1024))
    assert not hit("window:!1024;", IP() / UDP())


# -- ttl (an 8-bit integer keyword), tos, id ----------------------------------------


@pytest.mark.parametrize(
    ("value", "matching"),
    [
        ("10", {10}), ("=10", {10}), ("0x0a", {10}), ("!10", "all but 10"), ("!=10", "all but 10"),
        ("<3", {0, 1, 2}), ("<=2", {0, 1, 2}), (">253", {254, 255}), (">=254", {254, 255}),
        ("3-5", {4}), ("3<>6", {4, 5}), ("!3-5", "all but 4"), ("&0xc0=0x40", set(range(64, 128))),
        ("&0xfe!=0", "all but 0 1"), (" < 3 ", {0, 1, 2}),
    ],
)  # fmt: skip
def test_ttl_forms(value: str, matching: set[int] | str) -> None:
    if isinstance(matching, str):
        matching = set(range(256)) - {int(x) for x in matching.split()[2:]}
    prog, frame = program(f"ttl:{value};"), bytearray(frame_of(IP() / UDP()))
    for ttl in range(256):
        frame[14 + 8] = ttl
        assert prog.match(bytes(frame), 14, 34, 4) is (ttl in matching), ttl


def test_ttl_examples_and_ipv6_hop_limit() -> None:
    assert hit('msg:"IP Packet With TTL 0"; ttl:0; classtype:misc-activity; sid:1;', IP(ttl=0))
    assert not hit("ttl:0;", IP(ttl=1))
    assert hit("ttl:<5;", IPv6(hlim=4) / UDP())
    assert not hit("ttl:<5;", IPv6(hlim=64) / UDP())


def test_tos() -> None:
    assert hit("flow:established; tos:8;", IP(tos=8) / TCP())
    assert not hit("tos:8;", IP(tos=9) / TCP())
    assert hit("tos:x88;", IP(tos=0x88)) and hit("tos:X88;", IP(tos=0x88))
    assert hit("tos:!0;", IP(tos=4)) and not hit("tos:!0;", IP(tos=0))
    # TGI HUNT non-DiffServ aware TOS setting: every tos:!N must hold
    hunt = "".join(f"tos:!{n}; " for n in (0, 8, 16, 24, 32, 40, 48, 56))
    assert hit(hunt, IP(tos=4) / TCP())
    assert not hit(hunt, IP(tos=8) / TCP())
    assert hit("tos:184;", IPv6(tc=184) / UDP())  # the traffic class
    assert not hit("tos:184;", IPv6(tc=0) / UDP())


def test_id() -> None:
    rule = "id: 1; dsize: 24; flags: S,12; window: 2048;"  # ET DELETED F5 BIG-IP 3DNS probe
    assert hit(rule, IP(id=1) / TCP(flags="S", window=2048) / Raw(b"\x00" * 24))
    assert not hit(rule, IP(id=2) / TCP(flags="S", window=2048))
    assert hit('id:"65535";', IP(id=65535))
    assert not hit("id:0;", IPv6() / UDP())  # IPv6 has no IP ID
    for value in ("65536", "-1", "x", '"1', "!1"):
        with pytest.raises(RuleError, match="id expects"):
            compile_header_keywords([("id", value)])


# -- ipopts, sameip, ip_proto -------------------------------------------------------

OPTIONS = {
    "eol": b"\x01\x00", "nop": b"\x01", "rr": b"\x07\x07\x04" + bytes(4),
    "ts": b"\x44\x08\x05\x00" + bytes(4), "sec": b"\x82\x0b" + bytes(9),
    "esec": b"\x85\x03\x00", "lsrr": b"\x83\x07\x04\x01\x02\x03\x04",
    "ssrr": b"\x89\x07\x04\x01\x02\x03\x04", "satid": b"\x88\x04\x00\x01",
    "qs": b"\x19\x08" + bytes(6), "rtralt": b"\x94\x04\x00\x00", "cipso": b"\x86\x06" + bytes(4),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_ipopts_each_option(name: str) -> None:
    assert hit(f"ipopts:{name};", with_options(IP() / UDP(), OPTIONS[name]))
    assert hit("ipopts:any;", with_options(IP() / UDP(), OPTIONS[name]))
    others = b"".join(v for k, v in OPTIONS.items() if k not in (name, "eol", "nop"))
    if name not in ("eol", "nop"):
        assert not hit(f"ipopts:{name};", with_options(IP() / UDP(), b"\x01" + others[:36]))
    assert not hit(f"ipopts:{name};", IP() / UDP())


def test_ipopts_list_ends() -> None:
    lsrr = OPTIONS["lsrr"]
    assert hit("ipopts:lsrr;", with_options(IP(), b"\x01\x01" + lsrr))
    assert not hit("ipopts:lsrr;", with_options(IP(), b"\x00" + lsrr))  # after EOL
    assert not hit("ipopts:lsrr;", with_options(IP(), b"\x07\x01" + lsrr))  # bad length
    assert not hit("ipopts:lsrr;", with_options(IP(), b"\x07\x28" + lsrr))  # past the header
    assert hit("ipopts:eol;", with_options(IP(), b"\x01"))  # padding is EOL
    assert hit("ipopts: LSRR ;", with_options(IP(), lsrr))  # any case, as Suricata
    assert not hit("ipopts:any;", IP() / UDP())
    assert not hit("ipopts:any;", IPv6() / UDP())  # IPv6 has no IPv4 options


def test_ipopts_refused() -> None:
    for text in ("ipopts:foo;", "ipopts;", "ipopts:lsrre;"):
        with pytest.raises(RuleError, match="ipopts expects one of eol, nop, rr, "):
            program(text)
    with pytest.raises(RuleError, match="once per rule"):
        program("ipopts:ts; ipopts:rr;")


def test_sameip() -> None:
    rule = 'msg:"IP Packet with the same source and destination IP"; sameip;'
    assert hit(rule, IP(src="1.2.3.4", dst="1.2.3.4"))
    assert not hit(rule, IP(src="1.2.3.4", dst="1.2.3.5"))
    assert hit(rule, IPv6(src="2001:db8::1", dst="2001:db8::1") / UDP())
    assert not hit(rule, IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP())
    with pytest.raises(RuleError, match="sameip takes no value"):
        program("sameip:1;")


@pytest.mark.parametrize(
    ("value", "pkt", "expected"),
    [
        ("1", IP() / ICMP(), True), ("ICMP", IP() / ICMP(), True), ("icmp", IP() / UDP(), False),
        ("103", IP(proto=103), True), ("PIM", IP(proto=103), True), ("!6", IP() / UDP(), True),
        ("!6", IP() / TCP(), False), ("<6", IP() / TCP(), False), ("<7", IP() / ICMP(), True),
        (">16", IP() / UDP(), True), (">16", IP() / TCP(), False), ("gre", IP() / GRE(), True),
        ("ipv6-icmp", IPv6() / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest(), True),
        ("hopopt", IPv6() / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest(), False),
        ("udp", IPv6() / IPv6ExtHdrFragment(offset=8) / UDP(), True),
    ],
)  # fmt: skip
def test_ip_proto(value: str, pkt: Packet, expected: bool) -> None:
    assert hit(f"ip_proto:{value};", pkt) is expected


def test_ip_proto_refused_and_combined() -> None:
    for value in ("foo", "256", "<0", ">255", "", "!", "1 2"):
        with pytest.raises(RuleError, match="ip_proto"):
            program(f"ip_proto:{value};")
    both = "ip_proto:!6; ip_proto:!17;"  # several must all hold
    assert hit(both, IP() / ICMP()) and not hit(both, IP() / UDP())


# -- fragbits, fragoffset -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "flags", "expected"),
    [
        ("M", "MF", True), ("M", "MF+DF", False), ("D", "DF", True), ("R", "evil", True),
        ("MD", "MF+DF", True), ("+D", "DF", True), ("+D", "MF+DF", True), ("+D", "MF", False),
        ("*MR", "MF", True), ("*MR", "DF", False), ("!D", "MF", True), ("!D", "DF", False),
        ("!MD", "MF", True), ("!MD", "MF+DF", False), ("!M", "", True),
    ],
)  # fmt: skip
def test_fragbits(value: str, flags: str, expected: bool) -> None:
    assert hit(f"fragbits:{value};", IP(flags=flags) / UDP()) is expected


def test_fragbits_and_fragoffset_example() -> None:
    rule = 'msg:"ET EXPLOIT Invalid non-fragmented packet with fragment offset>0"; '
    rule += "fragbits: M; fragoffset: >0;"
    assert hit(rule, IP(flags="MF", frag=185) / Raw(b"x" * 8))
    assert not hit(rule, IP(flags="MF", frag=0) / UDP())
    assert not hit(rule, IP(flags=0, frag=185) / Raw(b"x" * 8))


@pytest.mark.parametrize(
    ("value", "frag", "expected"),
    [("0", 0, True), ("0", 1, False), (">0", 1, True), ("<100", 99, True), ("<100", 100, False),
     ("!0", 0, False), ("!0", 8191, True), ("8191", 8191, True)],
)  # fmt: skip
def test_fragoffset(value: str, frag: int, expected: bool) -> None:
    assert hit(f"fragoffset:{value};", IP(frag=frag) / Raw(b"x" * 8)) is expected


def test_fragments_of_ipv6() -> None:
    first = IPv6() / IPv6ExtHdrFragment(m=1, offset=0) / UDP()
    later = IPv6() / IPv6ExtHdrFragment(m=0, offset=185) / Raw(b"x" * 8)
    assert hit("fragbits:M; fragoffset:0;", first)
    assert hit("fragbits:!M; fragoffset:185;", later)
    assert not hit("fragoffset:>0;", first)
    assert hit("fragoffset:0; fragbits:!M;", IPv6() / UDP())  # no Fragment header
    assert not hit("fragbits:*DR;", first)  # IPv6 has neither D nor R


# -- ICMP --------------------------------------------------------------------------------


def test_itype_icode_examples() -> None:
    exceeded = 'msg:"GPL MISC Time-To-Live Exceeded in Transit"; icode:0; itype:11;'
    assert hit(exceeded, IP() / ICMP(type=11, code=0))
    assert not hit(exceeded, IP() / ICMP(type=11, code=1))
    assert not hit(exceeded, IP() / ICMP(type=3, code=0))
    assert hit("itype:>10;", IP() / ICMP(type=11)) and not hit("itype:>10;", IP() / ICMP(type=10))
    assert hit("icode:>5;", IP() / ICMP(type=3, code=6))
    assert hit("itype:10<>20;", IP() / ICMP(type=11))
    assert not hit("itype:10<>20;", IP() / ICMP(type=10))  # ranges are exclusive
    assert hit("itype:128;", IPv6() / ICMPv6EchoRequest())
    assert not hit("itype:8;", IP() / UDP(sport=8))
    short = frame_of(IP(proto=1) / Raw(b"\x00" * 7))  # an ICMP header needs 8 bytes
    assert not program("itype:0;").match(short, 14, 34, 4)


def test_icmp_id_seq_example() -> None:
    smurf = "dsize:4; icmp_id:0; icmp_seq:0; itype:8;"  # GPL SCAN Broadscan Smurf Scanner
    assert hit(smurf, IP() / ICMP(type=8, id=0, seq=0) / Raw(b"abcd"))
    assert not hit(smurf, IP() / ICMP(type=8, id=1, seq=0))
    assert not hit(smurf, IP() / ICMP(type=8, id=0, seq=1))
    assert hit("icmp_id:7; icmp_seq:9;", IPv6() / ICMPv6EchoReply(id=7, seq=9))
    assert hit('icmp_id:"13";', IP() / ICMP(type=13, id=13))  # timestamp has an id
    assert not hit("icmp_id:0;", IP() / ICMP(type=3, code=1))  # unreachable has none


REFUSED = {
    "flags": [None, "", "X", "s", "S!A", "+!S", "S0", "0S", "*0", "S,", "S,0", "S,X", "S,CE,A"],
    "seq": ["-1", "4294967296", "0x10", None], "ack": ["x", None, ""],
    "window": ["65536", ">5", "<5", ""],
    "ttl": [None, "", "256", "0x100", "5-3", "5-5", "4-5", "<0", ">255", "abc", "&0x0f=0x10"],
    "tos": [None, "", "256", "0x88", "x", "!", "x100", "<8"],
    "fragbits": ["X", "m", "", "+", "MX", "M+", None],
    "fragoffset": ["8192", "<0", ">8191", "abc", None],
    "itype": ["256", "20<>10", None], "icode": ["x", None],
    "icmp_id": ["65536", "!5"], "icmp_seq": ["<5", ""],
}  # fmt: skip


@pytest.mark.parametrize(
    ("keyword", "value"), [(k, v) for k, values in REFUSED.items() for v in values]
)
def test_refused(keyword: str, value: str | None) -> None:
    with pytest.raises(RuleError, match=f"^{re.escape(keyword)}"):
        compile_header_keywords([(keyword, value)])


# -- programs -------------------------------------------------------------------------


def test_compile_picks_its_own_options() -> None:
    options = _split_options('msg:"x"; content:"abc"; nocase; sid:1; flow:established;')
    assert compile_header_keywords(options) is None
    prog = program('msg:"x"; ttl:3; content:"a"; flags:S; sid:1;')
    assert prog.keywords == ("ttl", "flags")
    assert prog.l4_protos == frozenset({6})
    assert program("itype:8;").l4_protos == frozenset({1, 58})
    assert program("ttl:8; sameip;").l4_protos is None
    assert {"flags", "tcp.flags", "ipopts", "icmp_seq", "sameip"} <= HEADER_KEYWORDS
    with pytest.raises(RuleError, match=r"flags \(TCP\) and itype \(ICMP\)"):
        program("flags:S; itype:8;")
    with pytest.raises(RuleError, match=r"^ttl expects an 8-bit integer test: N, .*got '300'$"):
        program("ttl:300;")


def test_non_first_fragments_have_no_l4_header() -> None:
    later = frame_of(IP(frag=100, proto=6) / Raw(bytes(40)))
    assert offsets(later)[1] is None
    assert not program("flags:0;").match(later, 14, None, 4)
    assert program("ttl:64;").match(later, 14, None, 4)


def test_inner_packet_of_a_tunnel() -> None:
    inner = IP(src="10.9.9.9", dst="10.9.9.9", ttl=3) / TCP(flags="S", window=7)
    frame = frame_of(IP(src="1.1.1.1", dst="2.2.2.2") / GRE() / inner)
    (packet,) = decapsulate(frame, 14)
    prog = program("flags:S; window:7; ttl:3; sameip; ip_proto:tcp;")
    assert prog.match(frame, packet.l3, packet.l4, packet.version)
    assert not prog.match(frame, *offsets(frame))  # the outer GRE packet


def test_cut_frames_never_raise() -> None:
    packets = [
        IP(tos=8, flags="DF") / TCP(flags="SA"),
        with_options(IP() / TCP(), OPTIONS["lsrr"] + OPTIONS["ts"]),
        IP() / ICMP(type=8) / Raw(b"ab"), IPv6() / IPv6ExtHdrHopByHop() / TCP(),
        IPv6() / IPv6ExtHdrFragment(m=1) / ICMPv6EchoRequest(),
    ]  # fmt: skip
    progs = [program(t) for t in ("flags:S; seq:0; ack:0; window:!0;", "ipopts:ts; tos:8;",
             "itype:8; icode:0; icmp_id:0; icmp_seq:0;", "fragbits:M; fragoffset:0; sameip;",
             "ip_proto:6; ttl:>0; id:1;")]  # fmt: skip
    for pkt in packets:
        frame = frame_of(pkt)
        l3, l4, version = offsets(frame)
        for cut in range(len(frame) + 1):
            for prog in progs:
                alone = prog.match(frame[:cut], l3, l4, version)
                # in a batch buffer, `limit` keeps it from the next packet's bytes
                assert prog.match(frame[:cut] + frame, l3, l4, version, limit=cut) is alone
                prog.match(frame[:cut], l3 + 7, l4, 10 - version)  # even at the wrong place
