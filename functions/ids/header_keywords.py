"""Suricata header keywords for IDS rules (a helper of snf.functions.ids).

    flags (tcp.flags) seq ack window | ttl tos id ipopts fragbits fragoffset
    ip_proto sameip | itype icode icmp_id icmp_seq

compile_header_keywords() picks the options it owns out of a rule's
(name, value) list (options.split_options) and compiles them once into a
HeaderProgram: a tuple of small checks. Every 8-bit field (TCP flags, ttl,
tos, ip_proto, itype, icode) becomes a 256-entry table, so a check is a byte
read and an index. HeaderProgram.match() reads the raw frame at the offsets it
is given, so one program judges a packet and the inner packet of a tunnel.
Forms, semantics, IPv6 choices and refusals: docs/functions/ids-headers-tunnels.md.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .specs import RuleError
from .tunnels import ipv6_chain

__all__ = ["HEADER_KEYWORDS", "HeaderProgram", "compile_header_keywords"]

TCP_KEYWORDS = frozenset({"flags", "tcp.flags", "seq", "ack", "window"})
ICMP_KEYWORDS = frozenset({"itype", "icode", "icmp_id", "icmp_seq"})
IP_KEYWORDS = frozenset({"ttl", "tos", "id", "ipopts", "fragbits", "fragoffset", "ip_proto"})
IP_KEYWORDS |= {"sameip"}
HEADER_KEYWORDS = TCP_KEYWORDS | ICMP_KEYWORDS | IP_KEYWORDS

# (frame, l3, l4 or -1, end of the IP packet, version, upper protocol, fragment word) -> bool.
# The fragment word has the IPv4 layout (R 0x8000, D 0x4000, M 0x2000, offset 0x1FFF),
# also for IPv6, where it comes from the Fragment header (0 without one).
Check = Callable[[bytes, int, int, int, int, int, int], bool]

_WALK = frozenset({"ip_proto", "fragbits", "fragoffset"})
_NUM = r"(?:0[xX][0-9a-fA-F]+|[0-9]+)"
_UINT = re.compile(
    rf"(?P<neg>!)?(?P<a>{_NUM})(?:-|<>)(?P<b>{_NUM})"
    rf"|&(?P<mask>{_NUM})(?P<mop>!?=)(?P<mval>{_NUM})"
    rf"|(?P<op><=|>=|!=|[<>=!])?(?P<v>{_NUM})"
)
_U8_FORMS = (
    "an 8-bit integer test: N, =N, !N, <N, <=N, >N, >=N, A-B or A<>B (exclusive), "
    "!A-B, &M=V or &M!=V, with numbers 0..255 in decimal or 0x hex"
)
_FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40}
_FLAG_BITS |= {"C": 0x80, "1": 0x80, "2": 0x40}  # 1 and 2: the old names of CWR and ECE
_FRAG_BITS = {"M": 1, "D": 2, "R": 4}
_IPOPTS = {"eol": 0, "nop": 1, "rr": 7, "ts": 68, "sec": 130, "esec": 133, "lsrr": 131}
_IPOPTS |= {"ssrr": 137, "satid": 136, "qs": 25, "rtralt": 148, "cipso": 134, "any": -1}
_ICMP_ID_TYPES = {4: frozenset({0, 8, 13, 14, 15, 16, 17, 18}), 6: frozenset({128, 129})}
# /etc/protocols names (and IANA keywords), so that rules load the same on every host.
_PROTO_NAMES = {
    "ip": 0, "hopopt": 0, "icmp": 1, "igmp": 2, "ggp": 3, "ipencap": 4, "ip-encap": 4,
    "ipv4": 4, "st": 5, "tcp": 6, "egp": 8, "igp": 9, "pup": 12, "udp": 17, "hmp": 20,
    "xns-idp": 22, "rdp": 27, "iso-tp4": 29, "dccp": 33, "xtp": 36, "ddp": 37,
    "idpr-cmtp": 38, "ipv6": 41, "ipv6-route": 43, "ipv6-frag": 44, "idrp": 45, "rsvp": 46,
    "gre": 47, "esp": 50, "ah": 51, "skip": 57, "ipv6-icmp": 58, "ipv6-nonxt": 59,
    "ipv6-opts": 60, "rspf": 73, "vmtp": 81, "eigrp": 88, "ospf": 89, "ospfigp": 89,
    "ax.25": 93, "ipip": 94, "etherip": 97, "encap": 98, "pim": 103, "ipcomp": 108,
    "vrrp": 112, "l2tp": 115, "isis": 124, "sctp": 132, "fc": 133, "mobility-header": 135,
    "udplite": 136, "mpls-in-ip": 137, "manet": 138, "hip": 139, "shim6": 140, "wesp": 141,
    "rohc": 142, "ethernet": 143,
}  # fmt: skip


class HeaderProgram(NamedTuple):
    """The header keywords of one rule; match() is true when every one holds."""

    keywords: tuple[str, ...]  # the keyword names, in rule order
    checks: tuple[Check, ...]
    l4_protos: frozenset[int] | None  # {6} with TCP keywords, {1, 58} with ICMP ones, else None
    walk: bool  # IPv6 extension headers are walked only for the protocol or a Fragment header

    def match(
        self, frame: bytes, l3: int, l4: int | None, version: int, limit: int | None = None
    ) -> bool:
        """Whether the packet whose IP header is at frame[l3] satisfies every keyword.

        `l4` is the offset of the TCP/ICMP header (None when there is none, as for a
        non-first fragment); `limit` where the packet's bytes end (len(frame) by
        default, so a batch buffer can be given as it is). A packet cut short never
        raises: a check whose field is missing does not match.
        """
        n = len(frame) if limit is None else min(limit, len(frame))
        if version == 4:
            if l3 < 0 or n - l3 < 20:
                return False
            end = l3 + (frame[l3 + 2] << 8 | frame[l3 + 3])
            proto, word = frame[l3 + 9], frame[l3 + 6] << 8 | frame[l3 + 7]
        elif version == 6:
            if l3 < 0 or n - l3 < 40:
                return False
            plen = frame[l3 + 4] << 8 | frame[l3 + 5]
            end = l3 + 40 + plen if plen else n  # 0: a jumbogram, to the captured end
            proto, word = frame[l3 + 6], 0
            if self.walk:
                proto, _, frag = ipv6_chain(frame, l3, min(end, n))
                if frag >= 0:  # the IPv6 offset in the IPv4 place, M as IPv4's MF
                    word = (frag >> 3) | (frag & 1) << 13
        else:
            return False
        end = min(end, n)
        at = -1 if l4 is None else l4
        for check in self.checks:  # noqa: SIM110 (a plain loop: all() on a generator is slower)
            if not check(frame, l3, at, end, version, proto, word):
                return False
        return True


def compile_header_keywords(options: Sequence[tuple[str, str | None]]) -> HeaderProgram | None:
    """The HeaderProgram of a rule's options (None when it has no header keyword).

    Options not in HEADER_KEYWORDS are ignored. A keyword given twice must hold
    twice (tos:!0; tos:!8). Raises RuleError naming the keyword and what it expects.
    """
    names: list[str] = []
    checks: list[Check] = []
    for name, value in options:
        if name not in HEADER_KEYWORDS:
            continue
        if name == "ipopts" and name in names:
            raise RuleError("ipopts may appear once per rule (it matches one option)")
        checks.append(_COMPILERS[name](name, value))
        names.append(name)
    if not names:
        return None
    tcp = [n for n in names if n in TCP_KEYWORDS]
    icmp = [n for n in names if n in ICMP_KEYWORDS]
    if tcp and icmp:
        raise RuleError(f"{tcp[0]} (TCP) and {icmp[0]} (ICMP) in one rule can never both match")
    l4 = frozenset({6}) if tcp else frozenset({1, 58}) if icmp else None
    walk = bool(l4) or bool(_WALK & set(names))
    return HeaderProgram(tuple(names), tuple(checks), l4, walk)


# -- values ------------------------------------------------------------------------


def _fail(name: str, expects: str, value: str | None) -> RuleError:
    got = "no value" if value is None else repr(value)
    return RuleError(f"{name} expects {expects}, got {got}")


def _plain(name: str, value: str | None, top: int, quotes: bool = False) -> int:
    """A decimal number 0..top (Suricata also takes "N" in quotes for id and icmp_*)."""
    text = (value or "").strip()
    if quotes and len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    if not text.isdecimal() or not text.isascii() or int(text) > top:
        raise _fail(name, f"a decimal number 0..{top}", value)
    return int(text)


def _table(name: str, value: str | None, test: Callable[[int], bool]) -> bytes:
    table = bytes(test(v) for v in range(256))
    if not any(table):
        raise RuleError(f"{name}:{value} matches no value")
    return table


def _u8(name: str, value: str | None) -> bytes:
    """Suricata's unsigned integer test (rules/integer-keywords), as a 256-entry table."""
    m = _UINT.fullmatch("".join((value or "").split()))
    if m is None:
        raise _fail(name, _U8_FORMS, value)
    numbers = ((k, v) for k, v in m.groupdict().items() if v and k not in ("neg", "mop", "op"))
    g = {k: int(v, 16 if v[:2] in ("0x", "0X") else 10) for k, v in numbers}
    if any(v > 255 for v in g.values()):
        raise _fail(name, _U8_FORMS, value)
    if m["a"]:
        a, b, neg = g["a"], g["b"], bool(m["neg"])
        if a >= b:
            raise RuleError(f"{name}:{value}: a range A-B needs A < B")
        return _table(name, value, lambda x: (a < x < b) != neg)
    if m["mask"]:
        mask, want, eq = g["mask"], g["mval"], m["mop"] == "="
        return _table(name, value, lambda x: ((x & mask) == want) == eq)
    compare, v = _COMPARE[m["op"] or ""], g["v"]
    return _table(name, value, lambda x: compare(x, v))


_COMPARE = {"": operator.eq, "=": operator.eq, "!": operator.ne, "!=": operator.ne}
_COMPARE |= {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _ops(name: str, value: str | None, top: int, forms: str, ops: str = "!<>") -> Callable:
    """[!|<|>]N with N 0..top (the operators in `ops`): the test of a value."""
    m = re.fullmatch(rf"([{ops}]?)\s*([0-9]{{1,10}})", (value or "").strip())
    if m is None or int(m[2]) > top:
        raise _fail(name, forms, value)
    compare, n = _COMPARE[m[1]], int(m[2])
    if not any(compare(x, n) for x in (0, n, top)):  # the extremes: <0 and >top
        raise RuleError(f"{name}:{value} matches no value")
    return lambda x: compare(x, n)


# -- IP keywords -------------------------------------------------------------------


def _ttl(name: str, value: str | None) -> Check:
    table = _u8(name, value)  # IPv6: the hop limit
    return lambda f, l3, l4, end, v, p, w: table[f[l3 + 8] if v == 4 else f[l3 + 7]] == 1


def _tos(name: str, value: str | None) -> Check:
    m = re.fullmatch(r"(!?)\s*(?:([0-9]{1,3})|[xX]([0-9a-fA-F]{1,2}))", (value or "").strip())
    if m is None or (m[2] and int(m[2]) > 255):
        raise _fail(name, "[!]N with N 0..255 in decimal, or [!]xHH in hex (x88)", value)
    n, neg = int(m[2]) if m[2] else int(m[3], 16), m[1] == "!"
    table = bytes((x == n) != neg for x in range(256))
    return lambda f, l3, l4, end, v, p, w: (  # IPv6: the traffic class
        table[f[l3 + 1] if v == 4 else (f[l3] & 15) << 4 | f[l3 + 1] >> 4] == 1
    )


def _id(name: str, value: str | None) -> Check:
    n = _plain(name, value, 65535, quotes=True)  # IPv4 only: IPv6 has no IP ID
    return lambda f, l3, l4, end, v, p, w: v == 4 and (f[l3 + 4] << 8 | f[l3 + 5]) == n


def _ipopts(name: str, value: str | None) -> Check:
    want = _IPOPTS.get((value or "").strip().lower())
    if want is None:
        raise _fail(name, "one of " + ", ".join(_IPOPTS), value)
    if want < 0:  # any: the header has option bytes at all
        return lambda f, l3, l4, end, v, p, w: v == 4 and f[l3] & 15 > 5
    return lambda f, l3, l4, end, v, p, w: v == 4 and _has_option(f, l3, end, want)


def _has_option(f: bytes, l3: int, end: int, want: int) -> bool:
    """Whether an IPv4 option of type `want` comes before EOL or a malformed option."""
    at, stop = l3 + 20, min(l3 + ((f[l3] & 15) << 2), end)
    while at < stop:
        kind = f[at]
        if kind <= 1:  # EOL (ends the list) or NOP, one byte each
            if kind == want:
                return True
            if kind == 0:
                return False
            at += 1
            continue
        if stop - at < 2 or f[at + 1] < 2 or stop - at < f[at + 1]:
            return False  # a bad length: the options after it cannot be read
        if kind == want:
            return True
        at += f[at + 1]
    return False


def _fragbits(name: str, value: str | None) -> Check:
    m = re.fullmatch(r"([+*!]?)\s*([MDR]+)", (value or "").strip())
    if m is None:
        raise _fail(name, "[+|*|!] and some of M, D, R (fragbits:M, fragbits:!D)", value)
    want = sum({_FRAG_BITS[c] for c in m[2]})
    table = bytes(_bits_match(x, m[1], want) for x in range(8))
    # bits 0x8000 R, 0x4000 D, 0x2000 M -> R 4, D 2, M 1: a table index 0..7
    return lambda f, l3, l4, end, v, p, w: table[(w >> 15 & 1) << 2 | (w >> 13 & 3)] == 1


def _bits_match(bits: int, modifier: str, want: int) -> bool:
    if modifier == "+":
        return bits & want == want  # these, plus any others
    if modifier == "*":
        return bits & want != 0
    if modifier == "!":
        return bits & want != want  # as Suricata: not all of them set
    return bits == want


def _fragoffset(name: str, value: str | None) -> Check:
    test = _ops(name, value, 8191, "[!|<|>] and an offset 0..8191 (in 8-byte units)")
    return lambda f, l3, l4, end, v, p, w: test(w & 0x1FFF)


def _ip_proto(name: str, value: str | None) -> Check:
    m = re.fullmatch(r"([!<>]?)\s*(\S+)", (value or "").strip())
    token = m[2].lower() if m else ""
    n = int(token) if token.isdecimal() and token.isascii() else _PROTO_NAMES.get(token)
    if m is None or n is None or n > 255:
        forms = "[!|<|>] and a protocol number 0..255 or name (tcp, udp, gre, ipv6-icmp, ...)"
        raise _fail(name, forms, value)
    compare = _COMPARE[m[1]]  # IPv6: the protocol after the extension headers
    table = _table(name, value, lambda x: compare(x, n))
    return lambda f, l3, l4, end, v, p, w: table[p] == 1


def _sameip(name: str, value: str | None) -> Check:
    if value is not None:
        raise RuleError(f"sameip takes no value, got {value!r}")
    return lambda f, l3, l4, end, v, p, w: (
        f[l3 + 12 : l3 + 16] == f[l3 + 16 : l3 + 20]
        if v == 4
        else f[l3 + 8 : l3 + 24] == f[l3 + 24 : l3 + 40]
    )


# -- TCP keywords ------------------------------------------------------------------


def _flags(name: str, value: str | None) -> Check:
    forms = "[!|*|+]<FSRPAUCE, or 0>[,<FSRPAUCE to ignore>] (S, SA+, !R, 0, S,CE or S,12)"
    test, comma, ignore = "".join((value or "").split()).partition(",")
    mods = [c for c in test if c in "!*+"]
    letters = test.strip("!*+")
    if len(mods) > 1 or (mods and test[0] not in "!*+" and test[-1] not in "!*+"):
        raise _fail(name, forms + ", with one modifier at most", value)
    if not letters or any(c not in _FLAG_BITS and c != "0" for c in letters):
        raise _fail(name, forms, value)
    if comma and (not ignore or any(c not in _FLAG_BITS for c in ignore)):
        raise _fail(name, forms, value)
    if "0" in letters and letters != "0":
        raise RuleError(f"{name}:{value}: 0 (no flag set) cannot be combined with flags")
    modifier = mods[0] if mods else ""
    if letters == "0" and modifier == "*":
        raise RuleError(f"{name}:{value} matches no packet (*0: any of no flags)")
    want = 0 if letters == "0" else sum({_FLAG_BITS[c] for c in letters})
    keep = 0xFF & ~sum({_FLAG_BITS[c] for c in ignore})
    table = bytes(_flags_match(x, modifier, want, keep) for x in range(256))
    return lambda f, l3, l4, end, v, p, w: p == 6 and 0 <= l4 <= end - 20 and table[f[l4 + 13]] == 1


def _flags_match(flags: int, modifier: str, want: int, keep: int) -> bool:
    """Suricata's FlagsMatch: the masked flags against the rule's, by modifier."""
    if not want and flags:  # flags:0 (no flag set); !0 is any flag set
        return modifier == "!"
    return _bits_match(flags & keep, modifier, want)


def _tcp_number(offset: int) -> Callable[[str, str | None], Check]:
    """seq (offset 4) or ack (offset 8): a 32-bit number, compared as its 4 bytes."""

    def compile_(name: str, value: str | None) -> Check:
        want = _plain(name, value, 2**32 - 1).to_bytes(4, "big")
        return lambda f, l3, l4, end, v, p, w: (
            p == 6 and 0 <= l4 <= end - 20 and f[l4 + offset : l4 + offset + 4] == want
        )

    return compile_


def _window(name: str, value: str | None) -> Check:
    test = _ops(name, value, 65535, "[!] and a window size 0..65535", ops="!")
    return lambda f, l3, l4, end, v, p, w: (
        p == 6 and 0 <= l4 <= end - 20 and test(f[l4 + 14] << 8 | f[l4 + 15])
    )


# -- ICMP keywords -----------------------------------------------------------------


def _icmp_header(f: bytes, l4: int, end: int, v: int, p: int) -> bool:
    """An ICMP (over IPv4) or ICMPv6 (over IPv6) header of 8 bytes is there."""
    return 0 <= l4 <= end - 8 and ((v == 4 and p == 1) or (v == 6 and p == 58))


def _icmp_byte(offset: int) -> Callable[[str, str | None], Check]:
    """itype (offset 0) or icode (offset 1): Suricata's 8-bit integer test."""

    def compile_(name: str, value: str | None) -> Check:
        table = _u8(name, value)
        return lambda f, l3, l4, end, v, p, w: (
            _icmp_header(f, l4, end, v, p) and table[f[l4 + offset]] == 1
        )

    return compile_


def _icmp_word(offset: int) -> Callable[[str, str | None], Check]:
    """icmp_id (offset 4) or icmp_seq (6): only in messages that have them (echo, ...)."""

    def compile_(name: str, value: str | None) -> Check:
        want = _plain(name, value, 65535, quotes=True).to_bytes(2, "big")
        return lambda f, l3, l4, end, v, p, w: (
            _icmp_header(f, l4, end, v, p)
            and f[l4] in _ICMP_ID_TYPES[v]
            and f[l4 + offset : l4 + offset + 2] == want
        )

    return compile_


_COMPILERS: dict[str, Callable[[str, str | None], Check]] = {
    "flags": _flags, "tcp.flags": _flags, "seq": _tcp_number(4), "ack": _tcp_number(8),
    "window": _window, "ttl": _ttl, "tos": _tos, "id": _id, "ipopts": _ipopts,
    "fragbits": _fragbits, "fragoffset": _fragoffset, "ip_proto": _ip_proto, "sameip": _sameip,
    "itype": _icmp_byte(0), "icode": _icmp_byte(1), "icmp_id": _icmp_word(4),
    "icmp_seq": _icmp_word(6),
}  # fmt: skip
