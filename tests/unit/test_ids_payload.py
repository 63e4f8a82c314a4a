"""The IDS payload keywords (snf.functions.ids.payload) against Suricata's documented behaviour.

Each case is a rule's options, a payload and whether Suricata matches it; the
examples of Suricata's payload-keywords and integer-keywords pages are here
with crafted payloads. No broker.
"""

from __future__ import annotations

import time

import pytest

from snf.functions.ids.options import split_options as _split_options
from snf.functions.ids.payload import (
    PAYLOAD_KEYWORDS,
    PayloadProgram,
    compile_payload,
    fast_pattern,
)
from snf.functions.ids.payload_steps import ContentStep, IsdataatStep, parse_uint, strtoull
from snf.functions.ids.specs import RuleError


def program(options: str) -> PayloadProgram:
    return compile_payload(_split_options(options))


def check(cases: list[tuple[str, bytes, bool]]) -> None:
    for options, payload, expected in cases:
        assert program(options).match(payload) is expected, (options, payload)


def params(*cases: tuple[str, bytes, bool]) -> pytest.MarkDecorator:
    ids = [f"{o[:50]}|{p[:20]!r}" for o, p, _ in cases]
    return pytest.mark.parametrize(("options", "payload", "expected"), cases, ids=ids)


# -- content -------------------------------------------------------------------------

FIREFOX = (
    'content:"User-Agent|3A| Mozilla/5.0 |28|Windows|3B| "; content:"Firefox/3."; distance:0; '
    'content:!"Firefox/3.6.13"; distance:-10;'
)
UA = b"GET / HTTP/1.1\r\nUser-Agent: Mozilla/5.0 (Windows; U) Gecko Firefox/3.6."


@params(
    ('content:"a|0D|bc";', b"xa\rbcx", True),
    ('content:"|61 0D 62 63|";', b"xa\rbcx", True),
    ('content:"a|0D|b|63|";', b"xa\rbcx", True),
    ('content:"a|0D|bc";', b"xa\nbcx", False),
    ('content:"http|3A|//";', b"see http://x", True),
    ('content:"a\\;b\\"c\\\\";', b'.a;b"c\\.', True),
    ('content:"abc";', b"xABCx", False),  # case-sensitive by default
    ('content:"abc"; nocase;', b"xABCx", True),
    ('content:"ABC"; nocase; content:"d";', b"abcD", False),  # nocase is per content
    ('content:"caf|C3 A9|"; nocase;', b"CAF\xc3\xa9", True),  # ASCII letters only fold
    ('content:"\xe9";', "\xe9".encode(), True),  # text is UTF-8
    ('content:!"evil";', b"good", True),
    ('content:!"evil";', b"so evil", False),
    ('content:"a"; rawbytes;', b"a", True),
    (FIREFOX, UA + b"12 rv", True),  # the docs: alert unless the version is 3.6.13
    (FIREFOX, UA + b"13", False),
    (FIREFOX, b"User-Agent: Mozilla/5.0 (Windows; U) Firefox/3.5.1", True),
)
def test_content(options: str, payload: bytes, expected: bool) -> None:
    check([(options, payload, expected)])


@params(
    # The docs: "offset:3; depth:3" checks the payload from the fourth to the sixth byte.
    ('content:"def"; offset:3; depth:3;', b"abcdef", True),
    ('content:"def"; offset:3; depth:3;', b"abcxdef", False),
    ('content:"def"; offset:3;', b"abcxxxxdef", True),
    ('content:"def"; offset:4;', b"abcdef", False),
    ('content:"def"; depth:3; offset:3;', b"abcdef", True),  # either order
    ('content:"GET"; depth:3;', b"GET /", True),
    ('content:"GET"; depth:3;', b" GET /", False),
    ('content:"GET"; depth:4;', b" GET /", True),
    ('content:!"GET"; depth:3;', b" GET /", True),
    ('content:!"GET"; depth:3;', b"GET /", False),
    ('content:"GET|20|"; startswith;', b"GET /", True),
    ('content:"GET|20|"; startswith;', b"xGET /", False),
    ('content:".php"; endswith;', b"/a.php", True),
    ('content:".php"; endswith;', b"/a.php?x=1", False),
    ('content:".php"; endswith;', b"/a.php/b.php", True),  # the last occurrence counts
    ('content:".php"; isdataat:!1,relative;', b"/a.php/b.php", True),  # endswith's long form
    ('content:".php"; isdataat:!1,relative;', b"/a.php/b", False),
    ('content:!".php"; endswith;', b"/a.php", False),
    ('content:!".php"; endswith;', b"/a.php/b", True),
    ('content:!".php"; endswith;', b".php/x.php", False),
    ('content:"ab"; depth:2; endswith;', b"ab", True),
    ('content:"ab"; depth:2; endswith;', b"abab", False),  # the window must reach the end
)
def test_offset_depth_startswith_endswith(options: str, payload: bytes, expected: bool) -> None:
    check([(options, payload, expected)])


def test_isdataat_not_1_relative_after_a_content_becomes_endswith() -> None:
    steps = program('content:".php"; isdataat:!1,relative;').steps
    assert len(steps) == 1 and isinstance(steps[0], ContentStep) and steps[0].endswith
    steps = program('content:".php"; isdataat:!2,relative;').steps
    assert isinstance(steps[1], IsdataatStep)


BACKTRACK = 'content:"x"; content:"y"; distance:0; within:2; content:"z"; distance:0; within:1;'


@params(
    ('content:"Five"; content:"Ten"; within:3; distance:1;', b"Zero Five Ten Fourteen", True),
    ('content:"Five"; content:"Ten"; within:3; distance:2;', b"Zero Five Ten Fourteen", False),
    ('content:"abc"; content:"def"; distance:2;', b"abcxxdef", True),
    ('content:"abc"; content:"def"; distance:3;', b"abcxxdef", False),
    ('content:"abc"; content:"def"; within:5;', b"abcxxdef", True),
    ('content:"abc"; content:"def"; within:4;', b"abcxxdef", False),
    ('content:"abc"; content:"bcd"; distance:-2; within:3;', b"abcd", True),  # negative
    ('content:"cd"; content:"ab"; distance:-4;', b"abcd", True),  # even before the match
    ('content:"ab"; content:"ab"; distance:-50;', b"ab", True),  # clamped at the start
    ('content:"a"; content:"b"; distance:0; within:1;', b"a ab", True),  # retries "a"
    ('content:"a"; content:"b"; distance:0; within:1;', b"aab", True),
    ('content:"a"; content:"b"; distance:0; within:1;', b"a a b", False),
    (BACKTRACK, b"xy_xyz", True),  # "x" retried after "y" runs out
    (BACKTRACK, b"xyyz", True),  # "y" retried
    (BACKTRACK, b"xy_yz", False),  # that "y" is too far from "x"
    (BACKTRACK, b"xy_x__yz", False),
    ('content:"a"; content:!"b"; distance:0; within:1;', b"ab", False),
    ('content:"a"; content:!"b"; distance:0; within:1;', b"abac", True),  # some "a" qualifies
    ('content:"b"; within:2;', b"xb", True),  # relative to the buffer start
    ('content:"b"; within:2;', b"xxb", False),
    ('content:"b"; distance:1;', b"b", False),
)
def test_distance_within(options: str, payload: bytes, expected: bool) -> None:
    check([(options, payload, expected)])


def test_only_within_and_relative_keywords_make_a_match_worth_retrying() -> None:
    # Suricata retries a content only when a later keyword's position depends on it
    # through within, a negated distance or a relative byte_*/isdataat/pcre.
    def retry(options: str) -> list[bool]:
        return [s.retry for s in program(options).steps if isinstance(s, ContentStep)]

    assert retry('content:"a"; content:"b"; distance:0;') == [False, False]
    assert retry('content:"a"; content:"b"; within:4;') == [True, False]
    assert retry('content:"a"; content:!"b"; distance:0;') == [True, False]
    assert retry('content:"a"; isdataat:2,relative;') == [True]
    assert retry('content:"a"; pcre:"/b/R";') == [True]
    assert retry('content:"a"; byte_test:1,=,1,0,relative;') == [True]
    assert retry('content:"a"; byte_test:1,=,1,0;') == [False]
    assert retry('content:"a"; isdataat:1; byte_jump:1,0,relative;') == [False]


def test_a_later_within_needs_the_earlier_position() -> None:
    # Without backtracking the first "a" would decide; Suricata tries each "a" in turn.
    p = program('content:"ab"; content:"c"; distance:1; within:1;')
    assert p.match(b"ab.. ab.c")
    assert not p.match(b"ab.. ab..c")


def test_backtracking_stops_at_suricatas_recursion_limit() -> None:
    hops = ' content:"a"; distance:0; within:50;' * 8
    p = program(f'content:"a";{hops} content:"c"; distance:0; within:1;')
    started = time.perf_counter()
    assert not p.match(b"a" * 200)  # 50**8 paths: given up after 3000 steps
    assert time.perf_counter() - started < 1.0
    assert p.match(b"a" * 9 + b"c")


# -- isdataat, dsize, bsize ----------------------------------------------------------

ABC = b"abcdefgh"


@params(
    # The docs' 32-byte table: absolute needs offset < size, relative offset <= size.
    ("isdataat:31;", bytes(32), True),
    ("isdataat:32;", bytes(32), False),
    ("isdataat:31,relative;", bytes(32), True),
    ("isdataat:32,relative;", bytes(32), True),
    ("isdataat:33,relative;", bytes(32), False),
    # The docs' "abcdefgh" table (payload:"c" there means content:"c").
    ("isdataat:7;", ABC, True),
    ("isdataat:8;", ABC, False),
    ("isdataat:7,relative;", ABC, True),
    ("isdataat:8,relative;", ABC, True),
    ("isdataat:9,relative;", ABC, False),
    ('content:"c"; isdataat:4,relative;', ABC, True),
    ('content:"c"; isdataat:5,relative;', ABC, True),
    ('content:"c"; isdataat:6,relative;', ABC, False),
    ("isdataat:!8;", ABC, True),
    ("isdataat:!7;", ABC, False),
    ('content:"c"; isdataat:!6,relative;', ABC, True),
    ('content:"c"; isdataat:!5,relative, rawbytes;', ABC, False),
    ('content:"a"; isdataat:3,relative;', b"a..a", True),
    ('content:"a"; isdataat:3,relative;', b"..a.a", False),
    ('content:"a"; isdataat:!2,relative;', b"a...a.", True),  # the last "a" is retried into
    ("byte_extract:1,0,n; isdataat:n;", b"\x03abc", True),
    ("byte_extract:1,0,n; isdataat:n;", b"\x04abc", False),
    ("byte_extract:1,0,n; isdataat:!n;", b"\x04abc", True),
)
def test_isdataat(options: str, payload: bytes, expected: bool) -> None:
    check([(options, payload, expected)])


@pytest.mark.parametrize(
    ("options", "sizes"),
    [
        # The docs' dsize examples: sizes that match among 7..21.
        ("dsize:10;", {10}),
        ("dsize:<10;", {7, 8, 9}),
        ("dsize:<=10;", {7, 8, 9, 10}),
        ("dsize:>8;", set(range(9, 22))),
        ("dsize:>=10;", set(range(10, 22))),
        ("dsize:8<>20;", set(range(9, 20))),  # ranges are exclusive
        ("dsize:!9;", set(range(7, 22)) - {9}),
        ("dsize:8-20;", set(range(9, 20))),
        ("dsize:!8-20;", {7, 8, 20, 21}),
        ("dsize:=0xa;", {10}),
        ("dsize:&0x0c=0x08;", {8, 9, 10, 11}),
        ("dsize:&0x0c!=0x08;", set(range(7, 22)) - {8, 9, 10, 11}),
        # bsize, the docs' dns.query examples, on the payload.
        ('content:"google.com"; bsize:10;', {10}),
        ('content:"google.com"; bsize:<25;', set(range(10, 22))),
        ('content:"google.com"; bsize:<=20;', set(range(10, 21))),
        ('content:"google.com"; bsize:>8;', set(range(10, 22))),
        ('content:"google.com"; bsize:>=8;', set(range(10, 22))),
        ('content:"google.com"; bsize:8<>20;', set(range(10, 20))),
        ('content:"google.com"; bsize:12-15;', {13, 14}),
    ],
)
def test_dsize_and_bsize(options: str, sizes: set[int]) -> None:
    p = program(options)
    for n in range(7, 22):
        payload = b"google.com".ljust(n, b".")[:n]
        assert p.match(payload) is (n in sizes and (n >= 10 or "content" not in options)), n


def test_bsize_middle_example_and_an_empty_buffer() -> None:
    p = program('content:"middle"; bsize:6<>15;')
    assert [n for n in range(4, 20) if p.match(b"middle".ljust(n, b"_"))] == list(range(7, 15))
    assert program("bsize:0;").match(b"")
    assert program("dsize:0;").match(b"")
    assert not program('content:!"a";').match(b"")  # Suricata skips an empty payload
    assert not program("isdataat:!1;").match(b"")
    assert program("").match(b"")


@pytest.mark.parametrize(
    ("text", "bits", "spec"),
    [
        ("19", 64, ("=", 19, 0)), ("=0x13", 64, ("=", 19, 0)), ("!0x14", 64, ("!=", 20, 0)),
        ("!=20", 64, ("!=", 20, 0)), (">21", 64, (">", 21, 0)), (">=21", 64, (">=", 21, 0)),
        ("<22", 64, ("<", 22, 0)), ("<=22", 64, ("<=", 22, 0)), ("19-22", 64, ("<>", 19, 22)),
        ("!19-22", 64, ("!<>", 19, 22)), (" 8 <> 20 ", 16, ("<>", 8, 20)),
        ("&0xc0=0x80", 64, ("&", 0xC0, 0x80)), ("&0xc0!=0", 64, ("!&", 0xC0, 0)),
        ("2kb", 64, ("=", 2048, 0)), ("1MiB", 64, ("=", 1 << 20, 0)),
        ("65535", 16, ("=", 65535, 0)),
    ],
)  # fmt: skip
def test_integer_forms(text: str, bits: int, spec: tuple[str, int, int]) -> None:
    assert tuple(parse_uint("bsize", text, bits)) == spec


@pytest.mark.parametrize(
    "text",
    ["", "abc", "<0", ">=0", "<=65535", ">65535", "65536", "64kb", "5-6", "6-5", "= -1",
     "&0x0c=0x10"],
)  # fmt: skip
def test_integer_forms_that_suricata_refuses(text: str) -> None:
    with pytest.raises(RuleError, match="dsize expects"):
        parse_uint("dsize", text, 16)


# -- pcre ------------------------------------------------------------------------------


@params(
    ('pcre:"/[0-9]{6}/";', b"code 123456", True),
    ('pcre:"/[0-9]{6}/";', b"code 12345", False),
    ('content:"NICK "; pcre:"/NICK .*USA.*[0-9]{3,}/i";', b"NICK fooUSAbar123", True),
    ('content:"NICK "; pcre:"/NICK .*USA.*[0-9]{3,}/i";', b"NICK foo usa bar 123", True),
    ('content:"NICK "; pcre:"/NICK .*USA.*[0-9]{3,}/";', b"NICK foo usa bar 123", False),
    ('pcre:"/a.b/";', b"a\nb", False),
    ('pcre:"/a.b/s";', b"a\nb", True),
    ('pcre:"/^b/";', b"a\nb", False),
    ('pcre:"/^b/m";', b"a\nb", True),
    ('pcre:"/a b # comment/x";', b"ab", True),
    ('pcre:"/b/A";', b"ab", False),
    ('pcre:"/b/A";', b"ba", True),
    ('pcre:"/a$/";', b"a\n", True),
    ('pcre:"/a$/E";', b"a\n", False),  # $ only at the very end
    ('pcre:"/a.*c/"; isdataat:!1,relative;', b"abcbc", True),  # greedy: ends at the end
    ('pcre:"/a.*c/G"; isdataat:!1,relative;', b"abcbc", False),  # G: ungreedy
    ('pcre:"/evil/BO";', b"so evil", True),  # B and O change nothing here
    ('pcre:!"/evil/";', b"good", True),
    ('pcre:!"/evil/";', b"evil", False),
    ('content:"abc"; pcre:"/^d/R";', b"abcd", True),  # R: ^ is the previous match end
    ('content:"abc"; pcre:"/^d/R";', b"abcxd", False),
    ('content:"abc"; pcre:"/d/R";', b"dabc", False),
    ('content:"abc"; pcre:"/\\Gd/R";', b"abcd", True),
    ('pcre:"/a./"; content:"z"; distance:0; within:1;', b"abXacz", True),  # pcre retried
    ('pcre:"/a./"; content:"z"; distance:0; within:1;', b"abXacy", False),
    ('pcre:"/x/"; content:"HTTP"; within:5;', b"..x HTTP", True),  # within after a pcre
    ('pcre:"/\\x{41}\\x42\\d/";', b"AB1", True),  # PCRE2 syntax, not Python's
    ('pcre:"/\\w/";', b"\xe9\xe8", False),  # \w is ASCII: no UTF, no Unicode classes
    ('pcre:"/a\\;b\\"/";', b'a;b"', True),  # escapes of the rule string stay regex escapes
    ('pcre:"/(a+)+$/";', b"a" * 30 + b"b", False),  # Suricata's match limit: no match
    ('pcre:!"/(a+)+$/";', b"a" * 30 + b"b", False),  # a matching error is no match either
    ('pcre:"/$/"; content:"z"; distance:0;', b"xy", False),  # an empty match at the end
)
def test_pcre(options: str, payload: bytes, expected: bool) -> None:
    check([(options, payload, expected)])


def test_the_docs_within_after_pcre_example() -> None:
    buf = b"GET /AllWorkAndNoPlayMakesWillADullBoy HTTP/1.0User-Agent: Wget/1.11.4"
    rule = 'pcre:"/AllWorkAndNoPlayMakesWillADullBoy/"; content:"HTTP"; within:5;'
    assert program(rule).match(buf)


# -- byte_test, byte_jump, byte_extract, byte_math -----------------------------------

B4 = b"\x00\x01\x00\x02"


@params(
    # The docs' byte_test examples, with payloads long enough for each.
    ('content:"|00 01 00 02|"; byte_test:2,=,0x01,0;', B4, True),
    ('content:"|00 01 00 02|"; byte_test:2,=,0x03,2,relative;', B4 + b"\xff\xff\x00\x03", True),
    ('content:"|00 01 00 02|"; byte_test:2,=,0x03,2,relative;', B4 + b"\xff\xff\x00\x04", False),
    ('content:"|00 01 00 02|"; byte_test:2,!=,0x06,0;', B4, True),
    ('content:"|00 01 00 02|"; byte_test:2,!=,0x01,0;', B4, False),
    ('content:"|00 01 00 02|"; byte_test:2,>,1000,1,relative;', B4 + b"\x00\x03\xe9", True),
    ('content:"|00 01 00 02|"; byte_test:2,>,1000,1,relative;', B4 + b"\x00\x03\xe8", False),
    ('content:"|00 01 00 02|"; byte_test:2,&,0x01,12,relative;', B4 + bytes(12) + b"\0\3", True),
    ('content:"|00 01 00 02|"; byte_test:2,&,0x01,12,relative;', B4 + bytes(12) + b"\0\2", False),
    ('content:"foobar"; byte_test:4,=,1337,1,relative,string,dec;', b"foobar 1337", True),
    ('content:"foobar"; byte_test:4,=,1337,1,relative,string,dec;', b"foobar 1338", False),
    ("byte_test:2,=,1,0,little;", b"\x01\x00", True),
    ("byte_test:2,=,1,0,big;", b"\x01\x00", False),
    ("byte_test:2,!,1,0;", b"\x00\x02", True),  # a lone ! is !=
    ("byte_test:2,<=,2,0;", b"\x00\x02", True),
    ("byte_test:2,>=,3,0;", b"\x00\x02", False),
    ("byte_test:1,^,5,0;", b"\x05", False),  # Suricata's ^ is "XOR is not zero"
    ("byte_test:1,^,5,0;", b"\x04", True),
    ("byte_test:1,!&,0x80,0;", b"\x7f", True),
    ("byte_test:2,=,3,0,bitmask 0x0ff0;", b"\x00\x3f", True),  # masked, shifted right 4
    ("byte_test:2,=,3,0, bitmask 0x0ff0;", b"\x00\x4f", False),
    ("byte_test:3,=,255,0,string,hex;", b"0ff", True),
    ("byte_test:3,=,255,0,string,hex;", b"0xff", False),  # 3 bytes: "0xf" is 15
    ("byte_test:4,=,255,0,string,hex;", b"0xff", True),
    ("byte_test:3,=,8,0,string,oct;", b"010", True),
    ("byte_test:4,=,16,0,string;", b"0x10", True),  # no base: C's automatic prefixes
    ("byte_test:4,=,8,0,string;", b"0010", True),
    ("byte_test:4,=,12,0,string,dec;", b"12ab", True),  # digits up to the first non-digit
    ("byte_test:2,=,0,0,string,dec;", b"ab", False),  # no digits: no match
    ("byte_test:21,>,0,0,string,dec;", b"9" * 21, False),  # more than 64 bits
    ('content:"ab"; byte_test:1,=,0x61,-2,relative;', b"ab", True),  # back before the cursor
    ("byte_test:4,=,1,0;", b"\x00\x00\x01", False),  # past the end
    ("byte_test:1,=,1,-1;", b"\x01", False),
    ('content:"z"; byte_test:1,=,1,0,relative;', b"z", False),  # nothing after the cursor
    ("byte_extract:1,0,v; byte_test:1,=,v,1;", b"\x07\x07", True),
    ("byte_extract:1,0,v; byte_test:1,=,v,1;", b"\x07\x08", False),
    ("byte_extract:1,0,n; byte_test:n,=,0x0102,1;", b"\x02\x01\x02", True),
    ("byte_extract:1,0,n; byte_test:n,=,1,1;", b"\x09" + bytes(9), False),  # n > 8 bytes
    ("byte_extract:1,0,o; byte_test:1,=,0x55,o;", b"\x02\x00\x55", True),
)
def test_byte_test(options: str, payload: bytes, expected: bool) -> None:
    check([(options, payload, expected)])


@params(
    # The docs' byte_jump examples.
    ('content:"Alice"; byte_jump:2,0; content:"Bob"; distance:0;', b"\x00\x03abcBobAlice", True),
    ('content:"Alice"; byte_jump:2,0; content:"Bob"; distance:0;', b"\x00\x04abcBobAlice", False),
    (
        'byte_jump:2,0; byte_jump:2,0,relative; content:"foobar"; distance:0; within:6;',
        b"\x00\x02xx\x00\x01yfoobar",
        True,
    ),
    (
        'byte_jump:2,0; byte_jump:2,0,relative; content:"foobar"; distance:0; within:6;',
        b"\x00\x02xx\x00\x02yfoobar",
        False,
    ),
    (
        'byte_jump:0,0, from_end, post_offset -8; content:"|6c 33 33 74|"; distance:0; within:4;',
        b"headerl33t1234",
        True,
    ),
    (
        'byte_jump:0,0, from_end, post_offset -8; content:"|6c 33 33 74|"; distance:0; within:4;',
        b"headerl33t12345",
        False,
    ),
    ('byte_jump:1,0,from_beginning; content:"X"; distance:0; within:1;', b"\x03abXc", True),
    ('byte_jump:1,0,multiplier 2; content:"X"; distance:0; within:1;', b"\x02abcdX", True),
    ('byte_jump:1,0,align; content:"X"; distance:0; within:1;', b"\x02abcdX", True),  # 2 -> 4
    ('byte_jump:1,0,align; content:"X"; distance:0; within:1;', b"\x02abX", False),
    ('byte_jump:1,0,post_offset 1; content:"X"; distance:0; within:1;', b"\x01abX", True),
    ('byte_jump:2,0,string,dec; content:"X"; distance:0; within:1;', b"03abcX", True),
    ('byte_jump:1,0,little; content:"X"; distance:0; within:1;', b"\x01aX", True),
    ('byte_jump:1,0,post_offset -100; content:"A"; distance:0; within:1;', b"A", True),
    ("byte_jump:1,0;", b"\x05abc", False),  # past the end
    ("byte_jump:1,0;", b"\x03abc", True),  # exactly the end is fine
    ('content:"x"; byte_jump:0,0,relative;', b"abx", True),  # 0 bytes at the very end
)
def test_byte_jump(options: str, payload: bytes, expected: bool) -> None:
    check([(options, payload, expected)])


@params(
    # The docs' byte_extract examples.
    ('content:"Alice"; byte_extract:2,0,size; content:"Bob"; distance:size; within:3;',
     b"\x00\x03xyzBobAlice", True),
    ('content:"Alice"; byte_extract:2,0,size; content:"Bob"; distance:size; within:3;',
     b"\x00\x03xyz.BobAlice", False),
    ('content:"|00 FF|"; byte_extract:1,0,len,relative; content:"|5c 00|"; distance:2; within:len;',
     b"\x00\xff\x04zz\x5c\x00", True),
    ('content:"|00 FF|"; byte_extract:1,0,len,relative; content:"|5c 00|"; distance:2; within:len;',
     b"\x00\xff\x01zz\x5c\x00", False),
    ('content:"|00 FF|"; byte_extract:2,0,cmp_ver,relative; content:"FooBar"; distance:0; '
     'byte_test:2,=,cmp_ver,0;', b"\x12\x34\x00\xff\x12\x34FooBar", True),
    ('content:"|00 FF|"; byte_extract:2,0,cmp_ver,relative; content:"FooBar"; distance:0; '
     'byte_test:2,=,cmp_ver,0;', b"\x12\x35\x00\xff\x12\x34FooBar", False),
    ('byte_extract:1,0,n,multiplier 3; content:"X"; offset:n; depth:1;', b"\x02abcdeX", True),
    ('byte_extract:1,0,n,align 4; content:"X"; offset:n; depth:1;', b"\x01abcX", True),
    ('byte_extract:2,0,n,little; content:"X"; offset:n; depth:1;', b"\x03\x00\x00X", True),
    ('byte_extract:2,0,n,string; content:"X"; offset:n; depth:1;', b"04abX", True),
    ('byte_extract:2,0,n,string,hex; content:"X"; offset:n;', b"0f" + bytes(13) + b"X", True),
    ('byte_extract:1,0,n; content:"X"; depth:n;', b"\x03aX", True),
    ('byte_extract:1,0,n; content:"X"; depth:n;', b"\x02aX", False),
    ('byte_extract:1,0,n; content:"X"; offset:1; depth:n;', b"\x02aX", True),  # from offset
    ('content:"ab"; byte_extract:1,1,v,relative; content:"c"; distance:0; within:1;',
     b"ab.\x00c", True),  # the cursor moves past the bytes read
)  # fmt: skip
def test_byte_extract(options: str, payload: bytes, expected: bool) -> None:
    check([(options, payload, expected)])


ONE = "byte_math:bytes 1, offset 0, oper {}, rvalue {}, result r; byte_test:1,=,r,1;"
MATH_BUF = b"\x00\x04\x93\xf3abcd\x00\x00\x00\x07\x00\x00\x01\x00"
MATH = (
    'content:"|00 04 93 F3|"; content:"|00 00 00 07|"; distance:4; within:4; '
    "byte_math:bytes 4, offset 0, oper +, rvalue 248, result var, relative;"
)


@params(
    # The docs' byte_math examples.
    (MATH, b"\x00\x04\x93\xf3abcd\x00\x00\x00\x07\x00\x00\x00\x01", True),
    (MATH, b"\x00\x04\x93\xf3abcd\x00\x00\x00\x07\x00\x00\x01", False),  # 3 bytes left
    (MATH + " byte_test:4,=,var,16;", MATH_BUF + b"\x00\x00\x01\xf8", True),  # 256 + 248
    (MATH + " byte_test:4,=,var,16;", MATH_BUF + b"\x00\x00\x01\x00", False),
    ("byte_extract: 1, 0, extracted_val, relative; byte_math: bytes 1, offset 1, oper +, "
     "rvalue extracted_val, result var; byte_test: 2, =, var, 13;",
     b"\x05\x07" + bytes(11) + b"\x00\x0c", True),
    ("byte_extract: 1, 0, extracted_val, relative; byte_math: bytes 1, offset 1, oper +, "
     "rvalue extracted_val, result var; byte_test: 2, =, var, 13;",
     b"\x05\x07" + bytes(11) + b"\x00\x0d", False),
    (ONE.format("-", 1), b"\x05\x04", True),
    (ONE.format("*", 3), b"\x05\x0f", True),
    (ONE.format("/", 2), b"\x05\x02", True),
    (ONE.format("/", 0), b"\x05\x00", False),  # division by zero never matches
    (ONE.format("<<", 4), b"\x01\x10", True),
    (ONE.format(">>", 1), b"\x08\x04", True),
    ("byte_math:bytes 2, offset 0, oper +, rvalue 0, result r, endian little; "
     "byte_test:1,=,r,2;", b"\x07\x00\x07", True),
    ("byte_math:bytes 2, offset 0, oper +, rvalue 1, result r, string dec; "
     "byte_test:1,=,r,2;", b"41*", True),  # 41 + 1 = 42 = "*"
    ("byte_math:bytes 1, offset 0, oper +, rvalue 0, result r, bitmask 0xf0; "
     "byte_test:1,=,r,1;", b"\x3a\x03", True),
    ("byte_math:bytes 1, offset 0, oper -, rvalue 2, result r; byte_test:8,=,r,1;",
     b"\x01" + b"\xff" * 8, True),  # 64-bit wrap
)  # fmt: skip
def test_byte_math(options: str, payload: bytes, expected: bool) -> None:
    check([(options, payload, expected)])


@pytest.mark.parametrize(
    ("text", "base", "result"),
    [
        (b"  42x", 10, (42, 4)), (b"-1", 10, ((1 << 64) - 1, 2)), (b"0x1f", 0, (31, 4)),
        (b"017", 0, (15, 3)), (b"0x", 16, (0, 1)), (b"zz", 10, (0, 0)), (b"+7", 8, (7, 2)),
        (b"18446744073709551616", 10, None), (b"18446744073709551615", 10, ((1 << 64) - 1, 20)),
    ],
)  # fmt: skip
def test_strings_are_read_as_c_reads_them(
    text: bytes, base: int, result: tuple[int, int] | None
) -> None:
    assert strtoull(text, base) == result


# -- fast_pattern ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ('content:"ab"; content:"longest"; content:"abc";', (b"longest", False)),
        ('content:"ab"; fast_pattern; content:"longest";', (b"ab", False)),
        ('content:"ab"; content:"Longest"; nocase;', (b"Longest", True)),
        ('content:"ab"; content:"long"; fast_pattern:only;', (b"long", False)),
        ('content:"abcdef"; fast_pattern:1,3; content:"longest";', (b"bcd", False)),
        ('content:"abcdef"; fast_pattern:1,0;', (b"abcdef", False)),
        ('content:"ab"; content:"xy";', (b"ab", False)),  # a tie: the first
        ('content:!"negated and long"; content:"ab";', (b"ab", False)),
        ('content:!"negated"; fast_pattern; content:"ab";', (b"ab", False)),
        ('content:!"only negated";', None),
        ('pcre:"/x/"; dsize:3;', None),
    ],
)
def test_fast_pattern(options: str, expected: tuple[bytes, bool] | None) -> None:
    assert fast_pattern(program(options)) == expected


MATH2 = "byte_math:bytes 2, offset 0, oper +, rvalue 1, result r"

# -- compile errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('content:"";', "empty content"),
        ("content:abc;", "content expects a quoted string"),
        ('content:"a\\x";', "invalid escape"),
        ("nocase;", "nocase needs a content before it"),
        ('content:"a"; nocase; nocase;', "nocase given twice for one content"),
        ('content:"a"; nocase:1;', "nocase takes no value"),
        ('content:"a"; rawbytes; rawbytes;', "rawbytes given twice"),
        ("distance:0;", "distance needs a content before it"),
        ("endswith;", "endswith needs a content before it"),
        ('content:"abc"; depth:2;', "depth must be >= the content's length (3 bytes), got 2"),
        ('content:"abc"; within:2;', "within must be >= the content's length (3 bytes), got 2"),
        ('content:"abc"; within:-5;', "within must be >= the content's length"),
        ('content:"a"; depth:70000;', "depth expects an integer"),
        ('content:"a"; offset:-1;', "offset expects an integer"),
        ('content:"a"; offset;', "offset expects a value"),
        ('content:"a"; distance:1048577;', "distance expects an integer"),
        ('content:"a"; distance:1.5;', "distance expects an integer"),
        ('content:"a"; offset:1; distance:1;', "distance cannot be mixed with offset/depth"),
        ('content:"a"; within:5; depth:5;', "depth cannot be mixed with distance/within"),
        ('content:"a"; offset:1; offset:2;', "offset given twice for one content"),
        ('content:"a"; within:3; within:2;', "within given twice for one content"),
        ('content:"a"; startswith; offset:1;', "offset cannot be mixed with startswith"),
        ('content:"a"; startswith; distance:1;', "distance cannot be mixed with startswith"),
        ('content:"a"; depth:4; startswith;', "startswith cannot be mixed with depth"),
        ('content:"a"; startswith; startswith;', "startswith given twice"),
        ('content:"a"; distance:x;', "distance: unknown variable 'x'"),
        ('content:"a"; byte_extract:1,0,n; content:"b"; depth:m;', "depth: unknown variable 'm'"),
        ('content:"a"; fast_pattern; content:"b"; fast_pattern;', "only one content in a rule"),
        ('content:"a"; fast_pattern; fast_pattern;', "fast_pattern given twice"),
        ('content:"a"; fast_pattern:only; depth:3;', "fast_pattern:only"),
        ('content:"a"; depth:3; fast_pattern:only;', "fast_pattern:only cannot be used"),
        ('content:!"a"; fast_pattern:only;', "fast_pattern:only cannot be used on a negated"),
        ('content:"abc"; fast_pattern:2,2;', "offset + length (4) exceeds the content's length"),
        ('content:"abc"; fast_pattern:65535,2;', "fast_pattern length expects"),
        ('content:"abc"; fast_pattern:boo;', "fast_pattern expects no value, only"),
        ('content:"one"; fast_pattern:only; content:"two"; distance:10;', "fast_pattern:only"),
        ('content:!"a"; fast_pattern; distance:1;', "negated content that has fast_pattern"),
        ('content:!"a"; offset:1; fast_pattern;', "fast_pattern cannot be used on a negated"),
        ("isdataat:70000;", "isdataat expects an integer"),
        ("isdataat:5,foo;", "isdataat expects [!]<offset>"),
        ("isdataat:n;", "isdataat: unknown variable 'n'"),
        ('pcre:"/a/Q";', "pcre: flag 'Q' selects the HTTP response body buffer"),
        ('pcre:"/a/U";', "pcre: flag 'U' selects the normalized HTTP URI buffer"),
        ('pcre:"/a/Ri";', "pcre with R (relative) needs a content or pcre before it"),
        ('pcre:"/a/q";', "pcre: unknown flag 'q'"),
        ('pcre:"/(a/";', "pcre: /(a/ does not compile: missing closing parenthesis at offset 2"),
        ('pcre:"/\\C/";', "does not compile"),
        ('pcre:"a";', 'pcre expects a quoted "/regex/flags"'),
        ("pcre:/a/;", 'pcre expects a quoted "/regex/flags"'),
        ('pcre:"/a";', "pcre: missing the closing '/'"),
        ('pcre:"/a\\/";', "pcre: missing the closing '/'"),
        ('pcre:"/(a)/, pkt:x";', "capturing into pkt:, flow: or alert: variables"),
        ("dsize:1; dsize:2;", "dsize given twice"),
        ("dsize:<0;", "dsize expects N, =N"),
        ("dsize:70000;", "dsize expects"),
        ("bsize:lots;", "bsize expects"),
        ('dsize:<5; content:"abcde";', "dsize allows at most 4 bytes but content b'abcde' needs 5"),
        ('content:"abc"; offset:3; dsize:5;', "needs 6"),
        ('content:"google.com"; bsize:5;', "bsize allows at most 5 bytes"),
        ("byte_test:2,<>,1,0;", "operator must be one of <,>,=,<=,>=,&,^ (with optional !)"),
        ("byte_test:9,=,1,0;", "byte_test: cannot read more than 8 bytes without string"),
        ("byte_test:24,=,1,0,string;", "byte_test: cannot read more than 23 bytes with string"),
        ("byte_test:2,=,1,0,dec;", "byte_test: a base (dec, hex, oct) needs string"),
        ("byte_test:2,=,1,0,string,dec,hex;", "give one base"),
        ("byte_test:2,=,1,0,dce;", "byte_test: dce takes the byte order from the DCE/RPC header"),
        ("byte_test:2,=,1;", "byte_test expects <bytes>"),
        ("byte_test:2,=,1,0,foo;", "byte_test: unknown option 'foo'"),
        ("byte_test:2,=,1,0,RELATIVE;", "byte_test: unknown option 'RELATIVE'"),
        ("byte_test:2,=,x,0;", "byte_test: unknown variable 'x'"),
        ("byte_test:2,=,1x,0;", "byte_test value expects a number"),
        ("byte_test:2,=,1,0,bitmask;", "byte_test: unknown option 'bitmask'"),
        ("byte_jump:2,0,from_end,from_beginning;", "from_end and from_beginning cannot both"),
        ("byte_jump:2,0,multiplier 0;", "byte_jump multiplier expects an integer 1..65535"),
        ("byte_jump:2,70000;", "byte_jump offset expects an integer -65535..65535"),
        ("byte_jump:2,0,post_offset 70000;", "byte_jump post_offset expects"),
        ("byte_jump:2,0,dce;", "byte_jump: dce"),
        ("byte_jump:2,0,hex;", "byte_jump: a base (dec, hex, oct) needs string"),
        ("byte_jump:9,0;", "byte_jump: cannot read more than 8 bytes"),
        ("byte_jump:2;", "byte_jump expects <bytes>, <offset>"),
        ("byte_extract:2,0;", "byte_extract expects <bytes>, <offset>, <name>"),
        ("byte_extract:9,0,x;", "byte_extract: cannot read more than 8 bytes without string"),
        ("byte_extract:21,0,x,string;", "cannot read more than 20 bytes with string"),
        ("byte_extract:15,0,x,string,hex;", "cannot read more than 14 bytes with string"),
        ("byte_extract:24,0,x,string,oct;", "cannot read more than 23 bytes with string"),
        ("byte_extract:2,0,x,hex;", "byte_extract: hex must follow string"),
        ("byte_extract:2,0,x,string,big;", "string and big/little cannot both be given"),
        ("byte_extract:2,0,x,align 3;", "byte_extract: align must be 2 or 4"),
        ("byte_extract:2,0,x,relative,relative;", "byte_extract: relative given twice"),
        ("byte_extract:2,0,x,big,little;", "byte_extract: endian given twice"),
        ("byte_extract:2,0,x,multiplier 65536;", "byte_extract multiplier expects"),
        ("byte_extract:2,0,x,slice;", "byte_extract: unknown option 'slice'"),
        ("byte_extract:2,0,x,dce;", "byte_extract: dce"),
        ("byte_extract:2,0,1x;", "variable name must be a letter"),
        ("byte_extract:2,40000,x;", "byte_extract offset expects an integer -32768..32767"),
        ("byte_math:bytes 2, offset 0, oper +, rvalue 1;", "byte_math expects bytes N"),
        ("byte_math:bytes 2, offset 0, oper +, rvalue 1, relative;", "byte_math: missing result"),
        ("byte_math:bytes 11, offset 0, oper +, rvalue 1, result r;", "byte_math bytes expects"),
        ("byte_math:bytes 5, offset 0, oper <<, rvalue 1, result r;", "bytes must be 1..4"),
        ("byte_math:bytes 2, offset 0, oper %, rvalue 1, result r;", "oper must be one of"),
        ("byte_math:bytes 2, offset 70000, oper +, rvalue 1, result r;", "byte_math offset"),
        ("byte_math:bytes 2, offset 0, oper +, rvalue 4294967296, result r;", "byte_math rvalue"),
        (f"{MATH2}, relative;", "byte_math: relative needs a content or pcre before it"),
        (f"{MATH2}, endian dce;", "byte_math: dce"),
        (f"{MATH2}, dce;", "byte_math: dce"),
        (f"{MATH2}, endian middle;", "byte_math: endian must be big or little"),
        (f"{MATH2}, string bin;", "byte_math: string must be hex, dec or oct"),
        (f"{MATH2}, bitmask 0xfffffffff;", "bitmask must be a hex number of 32 bits"),
        (f"{MATH2}, relative, relative;", "byte_math: relative given twice"),
        ("byte_math:bytes 2, offset 0, oper +, oper -, rvalue 1, result r;", "oper given twice"),
        ("byte_math:bytes 2, offset 0, oper +, rvalue v, result r;", "unknown variable 'v'"),
        (f"{MATH2}, foo 1;", "byte_math: unknown option 'foo'"),
    ],
)  # fmt: skip
def test_compile_errors(options: str, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        program(options)
    assert message in str(caught.value), str(caught.value)


# -- the API ----------------------------------------------------------------------------


def test_other_options_are_left_to_the_caller() -> None:
    p = program('msg:"x"; content:"a"; flow:established; sid:1; rev:2; classtype:foo;')
    assert len(p.steps) == 1 and p.match(b"a")
    assert {"content", "pcre", "byte_math", "dsize", "fast_pattern"} <= PAYLOAD_KEYWORDS
    assert not {"msg", "sid", "flow", "http_uri"} & PAYLOAD_KEYWORDS


def test_a_program_is_immutable_and_reusable() -> None:
    p = program('content:"a"; byte_extract:1,0,n,relative; content:"b"; distance:n; within:1;')
    with pytest.raises(AttributeError):
        p.steps = ()  # type: ignore[misc]
    assert p.match(b"a\x01xb") and not p.match(b"a\x02xb") and p.match(b"a\x02xxb")
    assert compile_payload([("content", '"a"')], {"HOME_NET": "any"}).match(b"a")
