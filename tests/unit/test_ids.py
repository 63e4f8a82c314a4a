"""IDS core: rule syntax and errors, matching, action order, alerts, and a model check.

Rules in the matching and property tests are written as plain dicts (see
tests/ids_model.py), rendered to Snort syntax for the core and given as
they are to the independent dpkt model.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from snf.core.engine import FunctionEngine
from snf.core.limits import MAX_FILE_BYTES
from snf.core.tables import BatchState
from snf.functions.ids import Ids, IdsConfig
from snf.functions.ids.match import Matcher
from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.parse import parse_packet_batch
from tests.harness import JsonStore, handle
from tests.ids_model import model_run
from tests.packets import (
    arp,
    ether,
    fragments4,
    icmp4_echo,
    icmp6_echo,
    ip4,
    read_pcap,
    tcp4,
    tcp6,
    udp4,
    udp6,
)

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
SOURCE = 0x5EED

# -- rendering rule dicts to Snort syntax ------------------------------------------


def spec_text(spec: Any) -> str:
    if isinstance(spec, tuple):
        return ("!" if spec[0] == "!" else "$") + (
            spec_text(spec[1]) if spec[0] == "!" else spec[1]
        )
    if isinstance(spec, list):
        return "[" + ", ".join(spec_text(s) for s in spec) + "]"
    return str(spec)


def content_text(pattern: bytes, rnd: random.Random | None = None) -> str:
    """Printable bytes as text (\\" \\; \\\\ escaped), the rest as |hex|; rnd mixes it up."""
    out: list[str] = []
    hexes: list[str] = []
    for b in pattern:
        ch = chr(b)
        as_hex = rnd is not None and rnd.random() < 0.25
        if 0x20 <= b < 0x7F and ch != "|" and not as_hex:
            if hexes:
                out.append("|" + " ".join(hexes) + "|")
                hexes = []
            out.append("\\" + ch if ch in '"\\;' else ch)
        else:
            hexes.append(f"{b:02X}" if rnd and rnd.random() < 0.5 else f"{b:02x}")
    if hexes:
        out.append("|" + " ".join(hexes) + "|")
    return "".join(out)


def render(rule: dict[str, Any], rnd: random.Random | None = None) -> str:
    head = " ".join(
        [rule["action"], rule["proto"], spec_text(rule["src"]), spec_text(rule["sport"]),
         rule["dir"], spec_text(rule["dst"]), spec_text(rule["dport"])]
    )  # fmt: skip
    opts = []
    if "msg" in rule:
        msg = rule["msg"].replace("\\", "\\\\").replace('"', '\\"').replace(";", "\\;")
        opts.append(f'msg:"{msg}";')
    for c in rule.get("contents", []):
        opts.append(f'content:"{content_text(c["pattern"], rnd)}";')
        mods = []
        if c.get("nocase"):
            mods.append("nocase;")
        if c.get("offset") is not None:
            mods.append(f"offset:{c['offset']};")
        if c.get("depth") is not None:
            mods.append(f"depth:{c['depth']};")
        if rnd:
            rnd.shuffle(mods)
        opts.extend(mods)
    opts.append(f"sid:{rule['sid']};")
    if "rev" in rule:
        opts.append(f"rev:{rule['rev']};")
    return f"{head} ({' '.join(opts)})"


def rule(action: str = "alert", proto: str = "ip", sid: int = 1, **fields: Any) -> dict[str, Any]:
    base = {"src": "any", "sport": "any", "dir": "->", "dst": "any", "dport": "any"}
    return {"action": action, "proto": proto, "sid": sid, **base, **fields}


def content(pattern: bytes, nocase: bool = False, offset: int | None = None,
            depth: int | None = None) -> dict[str, Any]:  # fmt: skip
    return {"pattern": pattern, "nocase": nocase, "offset": offset, "depth": depth}


# -- harness -----------------------------------------------------------------


class Run:
    """One Ids core in a FunctionEngine fed batches of (ts_ns, frame); packet ids
    count up from 0."""

    def __init__(self, rules: Sequence[dict | str], vars_: dict | None = None) -> None:
        texts = [r if isinstance(r, str) else render(r) for r in rules]
        self.ids = Ids(IdsConfig.model_validate({"rules": texts, "vars": vars_ or {}}))
        self.engine = FunctionEngine(self.ids)
        self.stores = {name: JsonStore() for name in Ids.tables}  # flows live across batches
        self.seq = 0

    def __call__(
        self, packets: Sequence[tuple[int, bytes]], batch_size: int = 512
    ) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
        verdicts: list[tuple[str, str]] = []
        alerts: list[dict[str, Any]] = []
        for start in range(0, len(packets), batch_size):
            rows = []
            for ts, frame in packets[start : start + batch_size]:
                rows.append((ts, len(frame), frame, SOURCE, self.seq, ""))
                self.seq += 1
            batch = PacketBatch.from_rows(LINKTYPE_ETHERNET, rows)
            done = handle(self.engine, batch, self.stores)
            assert not done.rewritten
            verdicts.extend(zip(done.ports, done.reasons, strict=True))
            alerts.extend(done.records.get("alerts", []))
        return verdicts, alerts

    @property
    def counters(self) -> dict[str, int]:
        return self.engine.counters

    def one(self, frame: bytes) -> tuple[tuple[str, str], list[int]]:
        """(port, reason) and the alerting sids of one packet."""
        verdicts, alerts = self([(T0, frame)])
        return verdicts[0], [a["sid"] for a in alerts]


def sids(rules: Sequence[dict | str], frame: bytes, vars_: dict | None = None) -> list[int]:
    return Run(rules, vars_).one(frame)[1]


def config_error(config: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as info:
        IdsConfig.model_validate(config)
    error = info.value.errors()[0]
    assert error["type"] in ("ids_rule", "extra_forbidden"), error
    return error


def with_ids(packets: Sequence[tuple[int, bytes]]) -> list[tuple[int, bytes, str]]:
    return [(ts, frame, f"{SOURCE:016x}:{i}") for i, (ts, frame) in enumerate(packets)]


HTTP = b"GET /index.html HTTP/1.1\r\nHost: Example.ORG\r\nUser-Agent: x\r\n\r\n"

# -- the class and its config ---------------------------------------------------


def test_class_contract() -> None:
    assert (Ids.kind, Ids.ports, Ids.record_ports, Ids.tables) == (
        "ids", ("pass", "drop"), ("alerts",), ("flow", "thresh")
    )  # fmt: skip
    assert Ids.key == "flow"  # flowbits and flow state: both directions on one partition
    assert all(field.description for field in IdsConfig.model_fields.values())


def test_registered() -> None:
    from snf.core.registry import get_function

    assert get_function("ids") is Ids


def test_every_syntax_element_compiles() -> None:
    text = (
        "ALERT TCP [10.0.0.0/8, !10.1.0.0/16] [1024:, !8080] <> $HOME any "
        r'(msg:"a \"quoted\" \; msg \\"; content:"GET |20 2f|x|0d0A|"; nocase; offset:2; '
        'depth:40; content:"|00|"; sid:7; rev:3)'
    )
    config = IdsConfig(rules=[text, "# a comment", "  ", "pass ip any any -> any any (sid:8;)"],
                       vars={"HOME": "192.168.0.0/16"})  # fmt: skip
    first, second = config.compiled
    assert (first.action, first.proto, first.protos, first.bidirectional) == (
        "alert", "tcp", (6,), True
    )  # fmt: skip
    assert (first.sid, first.rev, first.msg, first.where) == (7, 3, 'a "quoted" ; msg \\', "rule 1")
    assert first.fast == (b"GET  /x\r\n", True)  # the longest content prefilters
    assert first.payload is not None and second.payload is None
    assert first.payload.match(b"..get  /X\r\n\x00")  # nocase, from offset 2
    assert not first.payload.match(b"get  /X\r\n\x00")  # before its offset
    assert not first.payload.match(b"..get  /X\r\n")  # no |00|
    assert first.src == ((((10 << 24), (10 << 24) + (1 << 16) - 1),
                          ((10 << 24) + (2 << 16), (11 << 24) - 1)), ())  # fmt: skip
    assert first.sport == (((1024, 8079), (8081, 65535)),)
    assert first.dst == ((((192 << 24) + (168 << 16), (192 << 24) + (169 << 16) - 1),), ())
    assert (second.action, second.proto, second.protos, second.rev, second.msg) == (
        "pass", "ip", None, 1, ""
    )  # fmt: skip
    assert second.where == "rule 4"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('content:"abc"', b"abc"),
        ('content:"|41 42|"', b"AB"),
        ('content:"|4142|c|0a|"', b"ABc\n"),
        (r'content:"a\"b\;c\\d"', b'a"b;c\\d'),
        ('content:"  spaced |7c| "', b"  spaced | "),
        ('content:"caf\u00e9"', "caf\u00e9".encode()),
    ],
)
def test_content_encoding(text: str, pattern: bytes) -> None:
    (compiled,) = IdsConfig(rules=[f"alert ip any any -> any any ({text}; sid:1;)"]).compiled
    assert compiled.fast == (pattern, False)


ANY = "alert tcp any any -> any any"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alert tcp any any => any any (sid:1;)",
         "expected '->' or '<>' after the source port, found '=>'"),
        ("alert tcp any any any any (sid:1;)",
         "expected '->' or '<>' after the source port, found 'any'"),
        ("alert tcp any any -> any (sid:1;)",
         "expected the destination port after the destination address, found '('"),
        ("alert tcp any any -> any any any (sid:1;)", "expected '(' after the destination port"),
        ("alert tcp any any -> any any", "expected '(' and the options"),
        ("alert tcp any any -> any any (sid:1;", "expected ')' at the end"),
        ("bogus tcp any any -> any any (sid:1;)", "unknown action 'bogus'"),
        ("alert foo any any -> any any (sid:1;)", "unknown protocol 'foo'"),
        ("alert http any any -> any any (sid:1;)", "protocol 'http' is not supported"),
        (f"{ANY} (foo; sid:1;)", "option 'foo' is not supported"),
        (f'{ANY} (content:"a"; http_uri; sid:1;)', "option 'http_uri' is not supported"),
        (f"{ANY} (flow:established,sideways; sid:1;)", "flow expects established"),
        (f"{ANY} (flowbits:set,a|b; sid:1;)", "flowbits:set takes one name"),
        (f"{ANY} (threshold:type limit, count 1, seconds 9; sid:1;)", "threshold expects exactly"),
        ("alert udp any any -> any any (flags:S; sid:1;)", "flags never matches a udp rule"),
        (f"{ANY} (msg:\"x\";)", "missing sid"),
        (f"{ANY} (sid:0;)", "sid expects an integer 1..4294967295"),
        (f"{ANY} (sid:abc;)", "sid expects an integer"),
        (f"{ANY} (sid:1; sid:2;)", "duplicate option 'sid'"),
        (f"{ANY} (sid:1; rev:0;)", "rev expects an integer"),
        (f"{ANY} (msg:x; sid:1;)", "msg expects a quoted string"),
        (f"{ANY} (msg:\"a;b\"; sid:1;)", "unescaped ';' inside a quoted string"),
        (f"{ANY} (msg:\"a\\xb\"; sid:1;)", 'invalid escape "\\x" in msg'),
        (f"{ANY} (msg:\"ab; sid:1;)", "unescaped ';'"),
        (f"{ANY} (msg:\"ab)", "unterminated quoted string"),
        (f"{ANY} (content:\"\"; sid:1;)", "empty content"),
        (f"{ANY} (content:\"|4|\"; sid:1;)", "bad |hex| block"),
        (f"{ANY} (content:\"|zz|\"; sid:1;)", "bad |hex| block"),
        (f"{ANY} (content:\"a|41\"; sid:1;)", "unterminated |hex| block"),
        (f"{ANY} (content; sid:1;)", "content expects a quoted string"),
        (f"{ANY} (nocase; content:\"a\"; sid:1;)", "nocase needs a content before it"),
        (f"{ANY} (offset:1; content:\"a\"; sid:1;)", "offset needs a content before it"),
        (f"{ANY} (content:\"a\"; nocase; nocase; sid:1;)", "nocase given twice"),
        (f"{ANY} (content:\"a\"; nocase:1; sid:1;)", "nocase takes no value"),
        (f"{ANY} (content:\"a\"; offset:-1; sid:1;)", "offset expects an integer or a byte_e"),
        (f"{ANY} (content:\"abc\"; depth:2; sid:1;)", "depth must be >= the content's length"),
        (f"{ANY} (content:\"a\"; depth:0; sid:1;)", "depth must be >= the content's length"),
        (f"{ANY} (sid:1;; rev:2;)", "empty option"),
        ("alert tcp 10.0.0.300 any -> any any (sid:1;)", "source address '10.0.0.300'"),
        ("alert tcp 10.0.0.1/8 any -> any any (sid:1;)", "has host bits set"),
        ("alert tcp any 70000 -> any any (sid:1;)", "expected a port 0..65535"),
        ("alert tcp any 9:3 -> any any (sid:1;)", "lo <= hi"),
        ("alert tcp any http -> any any (sid:1;)", "source port 'http'"),
        ("alert tcp any any -> [1.2.3.4, 5.6.7.8 any (sid:1;)", "missing ']'"),
        ("alert tcp any any -> [1.2.3.4,] any (sid:1;)", "expected a value before ']'"),
        ("alert tcp any any -> !any any (sid:1;)", "matches no address"),
        ("alert tcp any any -> any [1:5, !1:5] (sid:1;)", "matches no port"),
        ("alert tcp $NOPE any -> any any (sid:1;)", "undefined variable $NOPE"),
        ("alert icmp any 80 -> any any (sid:1;)", "an icmp rule has no ports"),
        ("alert ip any any -> any 1:5 (sid:1;)", "an ip rule has no ports"),
    ],
)  # fmt: skip
def test_rule_errors_name_the_rule_and_the_reason(text: str, problem: str) -> None:
    good = "alert ip any any -> any any (sid:99;)"
    err = config_error({"rules": [good, "# comment", text]})
    assert err["loc"] == ("rules", 2)
    assert err["msg"].startswith("rule 3: "), err["msg"]
    assert problem in err["msg"], err["msg"]


def test_duplicate_sid() -> None:
    err = config_error({"rules": [f"{ANY} (sid:5;)", f"{ANY} (sid:6;)", f"{ANY} (sid:5;)"]})
    assert err["loc"] == ("rules", 2)
    assert err["msg"] == "rule 3: duplicate sid 5 (also rule 1)"


def test_exactly_one_source_of_rules(tmp_path: Path) -> None:
    assert "exactly one of rules" in config_error({})["msg"]
    path = tmp_path / "r.rules"
    path.write_text("")
    assert "exactly one" in config_error({"rules": [], "rules_file": str(path)})["msg"]
    assert "Extra inputs" in config_error({"rules": [], "rule": []})["msg"]


def test_rules_file_comments_blank_lines_and_line_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = ["# header comment", "", f'{ANY} (msg:"one"; sid:1;)', "   # indented comment",
             "\t", f'{ANY} (content:"x"; sid:2;)']  # fmt: skip
    (tmp_path / "rules.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    config = IdsConfig(rules_file="rules.txt")
    assert [(r.sid, r.where) for r in config.compiled] == [(1, "rules.txt:3"), (2, "rules.txt:6")]
    assert IdsConfig(rules_file=str(tmp_path / "rules.txt")).compiled[1].sid == 2  # absolute
    # A relative path resolves against the validation context's base_dir when given.
    monkeypatch.chdir("/")
    ctx = IdsConfig.model_validate({"rules_file": "rules.txt"}, context={"base_dir": tmp_path})
    assert len(ctx.compiled) == 2
    # Errors carry the path as written and the 1-based line number.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules.txt").write_text("\n".join([*lines] * 2 + ["alert tcp any any => any any"]))
    err = config_error({"rules_file": "rules.txt"})
    assert err["loc"] == ("rules_file",)
    assert err["msg"] == "rules.txt:9: duplicate sid 1 (also rules.txt:3)"
    (tmp_path / "rules.txt").write_text("\n" * 11 + "alert tcp any any => any any (sid:1;)\n")
    assert config_error({"rules_file": "rules.txt"})["msg"] == (
        "rules.txt:12: expected '->' or '<>' after the source port, found '=>'"
    )
    assert "cannot read rules file" in config_error({"rules_file": "missing.rules"})["msg"]


def test_a_rules_file_is_a_small_regular_file_and_never_quoted(tmp_path: Path) -> None:
    def problem(path: str | Path) -> str:
        err = config_error({"rules_file": str(path)})
        assert err["loc"] == ("rules_file",)
        return err["msg"]

    os.mkfifo(tmp_path / "fifo")  # reading it would block until a writer came
    assert problem(tmp_path / "fifo").endswith("rules file must be a regular file, not a FIFO")
    assert problem("/dev/zero").endswith("must be a regular file, not a device")
    assert problem(tmp_path).endswith("must be a regular file, not a directory")
    big = tmp_path / "big.rules"
    big.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    assert problem(big) == f"{big}: rules file is larger than {MAX_FILE_BYTES} bytes (the limit)"
    # A file that is not a rules file: named by its line, its content never shown.
    secret = tmp_path / "shadow"
    secret.write_text(f"{ANY} (sid:1;)\ns3cr3t:$6$hash:19000:0:99999:7:::\n")
    msg = problem(secret)
    assert msg == f"{secret}:2: not a rule: expected it to start with alert, drop, pass or reject"
    secret.write_bytes(b"\n\ns3cr3t\xff\n")
    assert problem(secret) == f"{secret}: rules file is not UTF-8 text (line 3)"
    with pytest.raises(ValidationError) as info:
        IdsConfig.model_validate({"rules_file": str(secret)})
    assert "s3cr3t" not in str(info.value)


def test_vars_address_and_port_nested_negated() -> None:
    vars_ = {"HOME_NET": "[10.0.0.0/8, 2001:db8::/32]", "EXTERNAL_NET": "!$HOME_NET",
             "HTTP_PORTS": "[80,8080]", "WEB": [80, "8000:8100"], "DNS": 53}  # fmt: skip
    rules = [
        "alert tcp $EXTERNAL_NET any -> $HOME_NET $HTTP_PORTS (sid:1;)",
        "alert tcp any any -> any $WEB (sid:2;)",
        "alert udp any any -> any $DNS (sid:3;)",
        "alert tcp any any -> any !$HTTP_PORTS (sid:4;)",
    ]
    assert sids(rules, tcp4("8.8.8.8", "10.1.2.3", 999, 80), vars_) == [1, 2]
    assert sids(rules, tcp4("10.0.0.9", "10.1.2.3", 999, 80), vars_) == [2]
    assert sids(rules, tcp6("2001:db9::1", "2001:db8::5", 999, 8080), vars_) == [1, 2]
    assert sids(rules, tcp4("8.8.8.8", "10.1.2.3", 999, 8050), vars_) == [2, 4]
    assert sids(rules, udp4("8.8.8.8", "10.1.2.3", 999, 53), vars_) == [3]
    assert IdsConfig(rules=[], vars={"WEB": [80, "8000:8100"]}).vars == {"WEB": "[80, 8000:8100]"}


@pytest.mark.parametrize(
    ("vars_", "rule_text", "loc", "problem"),
    [
        ({"A": "nonsense"}, None, ("vars",), "$A: neither an address spec"),
        ({"A": "$B"}, None, ("vars",), "undefined variable $B"),
        (
            {"A": "[$B]", "B": "!$A"},
            None,
            ("vars",),
            "$A: variables refer to each other in a loop: $A -> $B -> $A",
        ),
        ({"A": "$A"}, None, ("vars",), "in a loop: $A -> $A"),
        ({"bad-name": "any"}, None, ("vars",), "bad variable name 'bad-name'"),
        ({"1A": "any"}, None, ("vars",), "must not start with a digit"),
        ({"A": True}, None, ("vars",), "expected a spec string"),
        ({"A": []}, None, ("vars",), "expected a spec string"),
        ({"P": "80"}, "alert tcp $P any -> any any (sid:1;)", ("rules", 0), "in variable $P"),
        ({"N": "10.0.0.0/8"}, "alert tcp any $N -> any any (sid:1;)", ("rules", 0), "port"),
    ],
)
def test_var_errors(vars_: dict, rule_text: str | None, loc: tuple, problem: str) -> None:
    err = config_error({"vars": vars_, "rules": [rule_text] if rule_text else []})
    assert err["loc"] == loc
    assert problem in err["msg"], err["msg"]


def test_two_hundred_rules_compile_quickly() -> None:
    texts = [
        f"alert tcp [10.{i % 250}.0.0/16, !10.{i % 250}.1.0/24] any -> any [{i}, 1024:] "
        f'(msg:"rule {i}"; content:"pattern-{i}|00|"; nocase; offset:{i % 7}; '
        f'content:"x{i}y"; depth:{100 + i}; sid:{1000 + i};)'
        for i in range(200)
    ]
    start = time.perf_counter()
    ids = Ids(IdsConfig(rules=texts))
    assert time.perf_counter() - start < 1.0
    assert len(ids.matcher.rules) == 200
    frame = tcp4("10.7.9.9", "1.1.1.1", 5, 2000, "PA", b"..PATTERN-7\x00 x7y")
    assert Run(texts).one(frame)[1] == [1007]


# -- matching on crafted packets ----------------------------------------------


@pytest.mark.parametrize(
    ("c", "payload", "hit"),
    [
        (content(b"GET"), HTTP, True),
        (content(b"get"), HTTP, False),
        (content(b"get", nocase=True), HTTP, True),
        (content(b"HOST: example.org", nocase=True), HTTP, True),
        (content(b"Host:"), HTTP, True),
        (content(b"\r\n\r\n"), HTTP, True),
        (content(b"GET", offset=0, depth=3), HTTP, True),
        (content(b"GET", offset=1), HTTP, False),
        (content(b"/index", offset=4, depth=6), HTTP, True),
        (content(b"/index", offset=4, depth=7), HTTP, True),
        (content(b"/index", offset=5), HTTP, False),
        (content(b"/index", depth=9), HTTP, False),
        (content(b"/index", depth=10), HTTP, True),
        (content(b"\x00\xff"), b"ab\x00\xffcd", True),
        (content(b"\x00\xff", nocase=True), b"ab\x00\xffcd", True),
        (content(b"A\x00b", nocase=True), b"xa\x00Bx", True),
        (content(b"a"), b"", False),
        (content(b"x", offset=9), b"0123456789", False),
        (content(b"9", offset=9, depth=1), b"0123456789", True),
        (content(b"\xc9"), b"\xe9", False),  # nocase is ASCII-only, as in Snort
        (content(b"\xc9", nocase=True), b"\xe9", False),
    ],
)
def test_content_modifiers(c: dict, payload: bytes, hit: bool) -> None:
    frame = tcp4("10.0.0.1", "10.0.0.2", 4000, 80, "PA", payload)
    assert sids([rule(contents=[c])], frame) == ([1] if hit else [])


def test_every_content_of_a_rule_is_required() -> None:
    both = rule(contents=[content(b"GET"), content(b"example.org", nocase=True)])
    order = rule(sid=2, contents=[content(b"Host"), content(b"GET")])  # order does not matter
    one_missing = rule(sid=3, contents=[content(b"GET"), content(b"POST")])
    same = rule(sid=4, contents=[content(b"GET"), content(b"GET", offset=1)])  # each on its own
    frame = tcp4("10.0.0.1", "10.0.0.2", 4000, 80, "PA", HTTP)
    assert sids([both, order, one_missing, same], frame) == [1, 2]


def test_overlapping_and_repeated_occurrences() -> None:
    # The second "aa" starts at 1 (overlapping the first); only it lies in [1, 3).
    r = rule(contents=[content(b"aa", offset=1, depth=2)])
    assert sids([r], udp4(payload=b"aaa")) == [1]
    assert sids([r], udp4(payload=b"aab")) == []
    far = rule(contents=[content(b"ab", offset=6)])
    assert sids([far], udp4(payload=b"ab ab ab")) == [1]


@pytest.mark.parametrize(
    ("frame", "payload_hit"),
    [
        (tcp4(payload=b"xxNEEDLExx"), True),
        (tcp4(payload=b"xxNEEDLExx", options=b"\x01\x01\x01\x01"), True),  # IPv4 options
        (udp4(payload=b"NEEDLE"), True),
        (tcp4(payload=b"NEEDLE", vlan=[100, 7]), True),
        (tcp4(payload=b"NEEDLE", mpls=[16, 17]), True),
        (tcp6(payload=b"NEEDLE", ext=[(0, bytes(7)), (60, bytes(7))]), True),  # hop-by-hop, dst
        (udp6(payload=b"NEEDLE"), True),
        (icmp4_echo(payload=b"NEEDLE"), True),
        (icmp6_echo(payload=b"NEEDLE"), True),
        (ether(ip4("10.0.0.1", "10.0.0.2", 47, b"..NEEDLE..")), True),  # GRE: the IP payload
        (arp(), False),
    ],
)
def test_payload_per_protocol(frame: bytes, payload_hit: bool) -> None:
    r = rule(contents=[content(b"NEEDLE")])
    assert sids([r], frame) == ([1] if payload_hit else [])


def test_payload_excludes_headers_and_ethernet_padding() -> None:
    # "NEEDLE" in the TCP header (options) or in the Ethernet trailer is no payload.
    frame = tcp4(payload=b"abc") + b"NEEDLE"
    assert sids([rule(contents=[content(b"NEEDLE")])], frame) == []
    assert sids([rule(contents=[content(b"abc", offset=0, depth=3)])], frame) == [1]
    ping = icmp4_echo(ident=0x4E45, payload=b"x")  # the echo id bytes are "NE"
    assert sids([rule(contents=[content(b"NE")])], ping) == []
    # UDP: the 8-byte header is skipped, so offsets count from the payload.
    assert sids([rule(contents=[content(b"Q", offset=0, depth=1)])], udp4(payload=b"Q")) == [1]


def test_protocols() -> None:
    rules = [rule(proto="tcp", sid=1), rule(proto="udp", sid=2), rule(proto="icmp", sid=3),
             rule(proto="ip", sid=4)]  # fmt: skip
    assert sids(rules, tcp4()) == [1, 4]
    assert sids(rules, udp4()) == [2, 4]
    assert sids(rules, icmp4_echo()) == [3, 4]
    assert sids(rules, icmp6_echo()) == [3, 4]  # icmp covers ICMPv6 too
    assert sids(rules, tcp6()) == [1, 4]
    assert sids(rules, ether(ip4("10.0.0.1", "10.0.0.2", 47, bytes(8)))) == [4]
    assert sids(rules, arp()) == []


@pytest.mark.parametrize(
    ("fields", "hit"),
    [
        ({"src": "10.0.0.1"}, True),
        ({"src": "10.0.0.0/24", "dst": "10.0.0.2"}, True),
        ({"src": "10.0.0.2"}, False),
        ({"src": ("!", "10.0.0.1")}, False),
        ({"src": ("!", "192.168.0.0/16")}, True),
        ({"src": ["192.168.0.0/16", "10.0.0.1"]}, True),
        ({"src": ["10.0.0.0/8", ("!", "10.0.0.1")]}, False),
        ({"src": [("!", "10.0.0.5"), ("!", "10.0.0.6")]}, True),
        ({"src": ("!", ["10.0.0.0/8", "1.1.1.1"])}, False),
        ({"src": "2001:db8::/32"}, False),  # an IPv6 net never holds an IPv4 address
        ({"sport": 4000}, True),
        ({"sport": 4001}, False),
        ({"dport": "80:90"}, True),
        ({"dport": ":80"}, True),
        ({"dport": ":79"}, False),
        ({"dport": "81:"}, False),
        ({"dport": "80:"}, True),
        ({"dport": ("!", 80)}, False),
        ({"dport": [443, ("!", 80)]}, False),
        ({"dport": ["1:1000", ("!", 443)]}, True),
        ({"dport": [("!", 443)]}, True),
        ({"sport": 80, "dport": 4000}, False),  # the reverse direction
        ({"sport": 80, "dport": 4000, "dir": "<>"}, True),
        ({"src": "10.0.0.2", "dst": "10.0.0.1", "dir": "<>"}, True),
        ({"src": "10.0.0.2", "sport": 4000, "dir": "<>"}, False),  # sides stay paired
    ],
)
def test_header_fields(fields: dict, hit: bool) -> None:
    frame = tcp4("10.0.0.1", "10.0.0.2", 4000, 80)
    assert sids([rule(proto="tcp", **fields)], frame) == ([1] if hit else [])


def test_ipv6_addresses() -> None:
    frame = udp6("2001:db8::1", "fd00::9", 5353, 53, b"q")
    assert sids([rule(src="2001:db8::/32", dst="fd00::9")], frame) == [1]
    assert sids([rule(src=("!", "2001:db8::1"))], frame) == []
    assert sids([rule(src="10.0.0.0/8")], frame) == []
    assert sids([rule(proto="udp", src="fd00::/8", dir="<>", sport=53)], frame) == [1]


def test_fragments() -> None:
    first, *later = fragments4("10.0.0.1", "10.0.0.2", 1234, 53, b"NEEDLE" * 10, frag_size=16)
    rules = [
        rule(proto="udp", sid=1),
        rule(proto="ip", sid=2),
        rule(sid=3, src="10.0.0.1"),
        rule(sid=4, contents=[content(b"NEEDLE")]),
        rule(proto="udp", sid=5, dport=53),
    ]
    assert sids(rules, first) == [1, 2, 3, 4, 5]  # the first fragment has its L4 header
    for frame in later:  # no L4 header: only content-less ip rules
        assert sids(rules, frame) == [2, 3]


def test_non_ip_passes_and_malformed_drops() -> None:
    run = Run([rule(sid=1)])
    truncated = ether(ip4("10.0.0.1", "10.0.0.2", 6, b"\x00\x50"))  # 2 bytes of TCP
    bad_offset = bytearray(tcp4(payload=b"abcd"))
    bad_offset[14 + 20 + 12] = 0xF0  # data offset 60 bytes: past the segment
    short_offset = bytearray(tcp4(payload=b"abcd"))
    short_offset[14 + 20 + 12] = 0x40  # 16 bytes: less than a TCP header
    verdicts, alerts = run(
        [(T0, arp()), (T0, truncated), (T0, bytes(bad_offset)), (T0, bytes(short_offset))]
    )
    assert verdicts == [("pass", ""), ("drop", "malformed"), ("drop", "malformed"),
                        ("drop", "malformed")]  # fmt: skip
    assert alerts == []


# -- actions ----------------------------------------------------------------------


def test_action_order() -> None:
    frame = tcp4("10.0.0.1", "10.0.0.2", 4000, 80, "PA", HTTP)
    get = [content(b"GET")]
    alert5 = rule("alert", sid=5, contents=get)
    drop9 = rule("drop", sid=9)
    drop7 = rule("drop", "tcp", sid=7, contents=get)
    pass_ = rule("pass", sid=100, src="10.0.0.1")
    no_match = rule("drop", sid=1, src="1.1.1.1")
    assert Run([alert5]).one(frame) == (("pass", ""), [5])
    assert Run([alert5, drop9, drop7, no_match]).one(frame) == (("drop", "sid:7"), [5, 7, 9])
    assert Run([drop9, alert5, pass_]).one(frame) == (("pass", ""), [])  # pass silences all
    assert Run([drop9, rule("pass", sid=8, src="1.1.1.1")]).one(frame) == (("drop", "sid:9"), [9])
    assert Run([no_match]).one(frame) == (("pass", ""), [])


def test_alert_record_fields() -> None:
    rules = [
        rule("drop", "tcp", sid=20, rev=4, msg='say "hi"; ok', contents=[content(b"GET")]),
        rule("alert", "ip", sid=3, msg="any"),
    ]
    run = Run(rules)
    run.seq = 41
    frames = [(T0 + 123_456_789, tcp6("2001:db8::1", "2001:db8::2", 4000, 80, "PA", HTTP)),
              (T0 + 5, ether(ip4("10.0.0.1", "10.0.0.2", 47, b"")))]  # fmt: skip
    verdicts, alerts = run(frames)
    assert verdicts == [("drop", "sid:20"), ("pass", "")]
    common = {"ts": (T0 + 123_456_789) / 1e9, "ts_ns": T0 + 123_456_789,
              "packet_id": f"{SOURCE:016x}:41", "proto": "TCP", "src": "2001:db8::1",
              "sport": 4000, "dst": "2001:db8::2", "dport": 80}  # fmt: skip
    assert alerts == [
        {**common, "sid": 3, "rev": 1, "gid": 1, "msg": "any", "action": "alert"},
        {**common, "sid": 20, "rev": 4, "gid": 1, "msg": 'say "hi"; ok', "action": "drop"},
        {"ts": (T0 + 5) / 1e9, "ts_ns": T0 + 5, "packet_id": f"{SOURCE:016x}:42", "sid": 3,
         "rev": 1, "gid": 1, "msg": "any", "action": "alert", "proto": "47", "src": "10.0.0.1",
         "sport": None, "dst": "10.0.0.2", "dport": None},
    ]  # fmt: skip
    assert list(alerts[0]) == ["ts", "ts_ns", "packet_id", "sid", "rev", "gid", "msg", "action",
                               "proto", "src", "sport", "dst", "dport"]  # fmt: skip
    assert run.counters == {"in": 2, "pass": 1, "drop:sid:20": 1, "alerts": 3, "tunnel_errors": 1}


def test_content_rules_are_not_looped_per_packet(monkeypatch: pytest.MonkeyPatch) -> None:
    # 300 content rules; a packet that holds none of their anchors checks no header.
    texts = [f'alert tcp any any -> any any (content:"needle-{i:03d}"; sid:{i + 1};)'
             for i in range(300)]  # fmt: skip
    run = Run(texts)
    calls: list[int] = []
    header = Matcher._header

    def counting(self: Matcher, i: int, *args: Any) -> bool:
        calls.append(i)
        return header(self, i, *args)

    monkeypatch.setattr(Matcher, "_header", counting)
    assert run.one(tcp4(payload=b"haystack without any of them" * 20))[1] == []
    assert calls == []
    assert run.one(tcp4(payload=b"..needle-042..needle-007"))[1] == [8, 43]
    assert sorted(calls) == [7, 42]


# -- properties: the model, batch boundaries, random bytes --------------------------

HOSTS4 = ["10.0.0.1", "10.0.0.2", "192.168.1.1", "8.8.8.8"]
HOSTS6 = ["2001:db8::1", "2001:db8::2", "fd00::5"]
NETS = ["10.0.0.0/8", "10.0.0.1", "192.168.1.0/24", "8.8.8.8", "2001:db8::/32", "fd00::5"]
PORTS = [80, 53, 1234, 1023, 1024, 55, 8080]
PORT_SPECS = [80, 53, "1024:", ":1023", "50:60", 8080]
ALPHABET = b'aAbB|;"\\\x00\xff '
VARS = {"HOME": "[10.0.0.0/8, 2001:db8::/32]", "WEB": "[80, 8080]"}
MODEL_VARS = {"HOME": ["10.0.0.0/8", "2001:db8::/32"], "WEB": [80, 8080]}


def _spec(rnd: random.Random, pool: list, var: str) -> Any:
    pick = rnd.random()
    if pick < 0.45:
        return "any"
    if pick < 0.65:
        return rnd.choice(pool)
    if pick < 0.75:
        return ("!", rnd.choice(pool))
    if pick < 0.85:
        return ("$", var) if rnd.random() < 0.7 else ("!", ("$", var))
    items = [rnd.choice(pool) for _ in range(rnd.randint(1, 3))]
    return [("!", x) if rnd.random() < 0.3 else x for x in items]


def _random_rules(rnd: random.Random, sids_: Sequence[int]) -> list[dict[str, Any]]:
    """Random rules, leaving out the few whose address or port spec is empty ([a, !a])."""
    out = []
    for sid in sids_:
        r = _random_rule(rnd, sid)
        try:
            IdsConfig(rules=[render(r)], vars=VARS)
        except ValidationError as exc:
            assert "matches no" in str(exc)
            continue
        out.append(r)
    return out


def _random_rule(rnd: random.Random, sid: int) -> dict[str, Any]:
    proto = rnd.choice(["tcp", "udp", "icmp", "ip", "ip"])
    ports = proto in ("tcp", "udp")
    r = rule(rnd.choice(["alert"] * 6 + ["drop"] * 3 + ["pass"]), proto, sid,
             src=_spec(rnd, NETS, "HOME"), dst=_spec(rnd, NETS, "HOME"),
             sport=_spec(rnd, PORT_SPECS, "WEB") if ports else "any",
             dport=_spec(rnd, PORT_SPECS, "WEB") if ports else "any",
             dir=rnd.choice(["->", "<>"]), msg=f"r{sid}", rev=rnd.randint(1, 3))  # fmt: skip
    contents = []
    for _ in range(rnd.choice([0, 1, 1, 1, 2, 3])):
        pattern = bytes(rnd.choice(ALPHABET) for _ in range(rnd.randint(1, 3)))
        offset = rnd.choice([None, None, 0, 1, 3, 6])
        depth = rnd.choice([None, None, len(pattern), len(pattern) + rnd.randint(0, 6)])
        contents.append(content(pattern, rnd.random() < 0.4, offset, depth))
    r["contents"] = contents
    return r


def _random_packet(rnd: random.Random) -> bytes:
    payload = bytes(rnd.choice(ALPHABET) for _ in range(rnd.randint(0, 24)))
    v4 = rnd.random() < 0.7
    a, b = rnd.sample(HOSTS4 if v4 else HOSTS6, 2)
    sp, dp = rnd.choice(PORTS), rnd.choice(PORTS)
    kind = rnd.randrange(5)
    if kind == 0:
        return (tcp4 if v4 else tcp6)(a, b, sp, dp, "PA", payload)
    if kind == 1:
        return (udp4 if v4 else udp6)(a, b, sp, dp, payload)
    if kind == 2:
        return (icmp4_echo if v4 else icmp6_echo)(a, b, payload=payload)
    if kind == 3 and v4:
        return rnd.choice(fragments4(a, b, sp, dp, payload * 2 + bytes(16), frag_size=16))
    if kind == 3:
        return tcp6(a, b, sp, dp, "PA", payload, ext=[(0, bytes(7))], vlan=rnd.choice([None, 5]))
    return ether(ip4(a, b, 47, payload), vlan=rnd.choice([None, 9])) if v4 else arp()


def test_random_rules_and_payloads_match_the_model() -> None:
    rnd = random.Random(11)
    total_alerts = 0
    for _ in range(15):
        rules = _random_rules(rnd, rnd.sample(range(1, 500), 25))
        texts = [render(r, rnd) for r in rules]
        packets = [(T0 + i, _random_packet(rnd)) for i in range(120)]
        run = Run(texts, VARS)
        verdicts, alerts = run(packets, batch_size=rnd.choice([1, 16, 512]))
        expected = model_run(with_ids(packets), rules, MODEL_VARS)
        assert (verdicts, alerts) == expected
        total_alerts += len(alerts)
    assert total_alerts > 500  # not vacuous


CAPTURE_RULES = [
    rule("alert", "tcp", 1, msg="GET", dport=80, contents=[content(b"GET ", depth=4)]),
    rule("alert", "tcp", 2, dir="<>", contents=[content(b"Host\x3a")]),
    rule("alert", "ip", 3, msg="wiki", contents=[content(b"wikipedia", nocase=True)]),
    rule("drop", "tcp", 4, sport=80, contents=[content(b"HTTP/1.1 200", depth=12)]),
    rule("alert", "udp", 5, dport=53, contents=[content(b"\x00\x01\x00\x00", offset=4, depth=4)]),
    rule("pass", "tcp", 6, contents=[content(b"favicon", nocase=True)]),
    rule("alert", "icmp", 7),
    rule("alert", "ip", 8, src=["10.0.0.0/8", "192.168.0.0/16"], dst=("!", ("$", "HOME"))),
    rule("alert", "tcp", 9, contents=[content(b"content-type: text/html", nocase=True)]),
    rule("drop", "udp", 10, contents=[content(b"\x00")]),
    rule("alert", "ip", 11, src="::/0"),
    rule("alert", "tcp", 12, dport=[("!", 80), "1:1023"], sport=("$", "WEB")),
    rule("alert", "tcp", 13, contents=[content(b"gzip"), content(b"\r\n\r\n", offset=100)]),
]


@pytest.mark.parametrize(
    "name", ["zeek-http-bro.org.pcap", "zeek-wikipedia.pcap", "tcpreplay-test.pcap"]
)
def test_real_captures_match_the_model(traffic: Callable[[str], Path], name: str) -> None:
    linktype, packets = read_pcap(traffic(name))
    assert linktype == LINKTYPE_ETHERNET
    vars_ = {"HOME": "[10.0.0.0/8, 192.168.0.0/16]", "WEB": "[80, 8080]"}
    model_vars = {"HOME": ["10.0.0.0/8", "192.168.0.0/16"], "WEB": [80, 8080]}
    verdicts, alerts = Run(CAPTURE_RULES, vars_)(packets, batch_size=100)
    assert (verdicts, alerts) == model_run(with_ids(packets), CAPTURE_RULES, model_vars)
    assert len({a["sid"] for a in alerts}) >= 3  # several rules fire on every capture


def test_batch_boundaries_do_not_matter() -> None:
    rnd = random.Random(3)
    rules = _random_rules(rnd, range(1, 41))
    packets = [(T0 + i * NS, _random_packet(rnd)) for i in range(400)]
    results = []
    for size in (1, 7, 512):
        run = Run([render(r) for r in rules], VARS)
        results.append((*run(packets, batch_size=size), run.counters))
    assert results[0] == results[1] == results[2]
    assert results[0][1] and any(reason.startswith("sid:") for _, reason in results[0][0])


def test_never_raises_on_random_bytes() -> None:
    rnd = random.Random(7)
    good = [tcp4(payload=HTTP), tcp6(payload=b"abc"), icmp6_echo(), udp4(payload=b"x" * 30),
            *fragments4(payload=bytes(40), frag_size=16)]  # fmt: skip
    packets = []
    for _ in range(1500):
        frame = bytearray(rnd.choice(good))
        for _ in range(rnd.randint(0, 4)):
            frame[rnd.randrange(len(frame))] = rnd.randrange(256)
        packets.append((T0, bytes(frame[: rnd.randint(0, len(frame))])))
    rules = [rule(contents=[content(b"GET", offset=2)]), rule("drop", "tcp", 2, dport="0:1000"),
             rule(sid=3, contents=[content(b"\x00", nocase=True)])]  # fmt: skip
    verdicts, _ = Run(rules)(packets)
    assert len(verdicts) == len(packets)


@pytest.mark.parametrize(
    "damage",
    [
        {"dport": []},  # a port list shorter than the batch
        {"src": [b"\x01" * 40]},  # an address of no IP version
        {"l3_off": [9999]},  # offsets past the packet
        {"l4_off": [10**6]},
    ],
)
def test_inconsistent_headers_give_malformed_not_an_exception(damage: dict[str, list]) -> None:
    frame = tcp4(payload=HTTP)
    rules = [rule(sid=1), rule(sid=2, contents=[content(b"GET")])]
    ids = Ids(IdsConfig(rules=[render(r) for r in rules]))
    batch = PacketBatch.from_rows(LINKTYPE_ETHERNET, [(T0, len(frame), frame, 1, 0, "")])
    headers = parse_packet_batch(batch, vectorise=False)
    broken = Headers(**{f: getattr(headers, f) for f in Headers.__dataclass_fields__})
    for name, value in damage.items():
        setattr(broken, name, value)
    verdicts = ids.process(batch, broken, BatchState(BatchState.memory(Ids.tables)))
    assert (verdicts.ports, verdicts.reasons, verdicts.records) == (
        ["drop"], ["malformed"], {"alerts": []}
    )  # fmt: skip


def test_a_bad_rule_fails_the_pipeline_load_on_its_line() -> None:
    from snf.pipeline.errors import PipelineError
    from snf.pipeline.loader import parse_pipeline

    text = """name: t
functions:
  - name: ids
    function: ids
    config:
      vars: {HOME_NET: "10.0.0.0/8"}
      rules:
        - alert tcp any any -> $HOME_NET 80 (msg:"ok"; sid:1;)
        - alert tcp any any -> any any (foo; sid:2;)
"""
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, "p.yaml")
    where = "p.yaml:9: functions[0].config.rules[1]: rule 2"
    assert str(info.value) == f"{where}: option 'foo' is not supported (docs/functions/ids.md)"
