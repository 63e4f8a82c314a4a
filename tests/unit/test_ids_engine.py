"""The ids core with Suricata's payload and header keywords, its actions, alert
fields, tunnels and partly supported rulesets: each case a rule set and crafted
packets, judged through the FunctionEngine (tests/unit/test_ids.py's Run).
The keywords alone are tests/unit/test_ids_payload.py and
test_ids_header_keywords.py; decapsulation alone is test_ids_tunnels.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import GRE, Ether
from scapy.layers.vxlan import VXLAN

from snf.core.engine import FunctionEngine
from snf.functions.ids import Ids, IdsConfig
from tests.packets import tcp4, tcp6, udp4
from tests.unit.test_ids import Run

HTTP = b"GET /admin/login.php?user=root HTTP/1.1\r\nHost: x\r\n\r\n"
ANY = "alert tcp any any -> any any"


def one(rules: list[str], frame: bytes) -> tuple[tuple[str, str], list[int]]:
    return Run(rules).one(frame)


@pytest.mark.parametrize(
    ("options", "fires"),
    [
        ('content:"GET"; content:"admin"; distance:1; within:10;', True),
        ('content:"GET"; content:"admin"; distance:0; within:6;', False),
        ('content:"GET"; content:"admin"; distance:0; within:7;', True),
        ('content:"GET"; content:!"passwd";', True),
        ('content:"GET"; content:!"login";', False),
        ('pcre:"/user=(root|admin)/";', True),  # no content: matched without a prefilter
        ('content:"get"; nocase; pcre:"/^\\s+\\/ADMIN/Ri";', True),
        ('content:"login"; pcre:"/^\\.php/R";', True),
        ('content:"login"; pcre:"/^\\.asp/R";', False),
        ("dsize:>40;", True),
        ("dsize:<10;", False),
        ('content:"GET"; startswith; content:"|0d 0a 0d 0a|"; endswith;', True),
        ('content:"user="; byte_test:1,=,0x72,0,relative;', True),  # 'r' of root
        ('content:"user="; isdataat:100,relative;', False),
        ('content:"ad"; fast_pattern; content:"/admin/login"; depth:20;', True),
    ],
)
def test_payload_keywords_decide_in_the_core(options: str, fires: bool) -> None:
    frame = tcp4(flags="PA", payload=HTTP)
    assert one([f"{ANY} ({options} sid:1;)"], frame)[1] == ([1] if fires else [])


@pytest.mark.parametrize(
    ("options", "frame", "fires"),
    [
        ("flags:S;", tcp4(flags="S"), True),
        ("flags:S;", tcp4(flags="SA"), False),
        ("flags:S+;", tcp4(flags="SA"), True),
        ("ttl:<65;", tcp4(), True),  # tests.packets sends TTL 64
        ("ttl:>64;", tcp4(), False),
        ("window:!0;", tcp4(), True),
    ],
)
def test_header_keywords_read_the_packet(options: str, frame: bytes, fires: bool) -> None:
    assert one([f"{ANY} ({options} sid:1;)"], frame)[1] == ([1] if fires else [])


def test_reject_drops_noalert_drops_silently_and_alerts_carry_the_rule() -> None:
    frame = tcp4(flags="PA", payload=HTTP)
    rules = [
        'reject tcp any any -> any 80 (msg:"r"; content:"admin"; sid:10; gid:3; '
        "classtype:web-application-attack; priority:1; reference:url,example.com/a; "
        "metadata:created_at 2026_12_04;)",
        f'{ANY} (content:"GET"; noalert; sid:2;)',
    ]
    verdicts, alerts = Run(rules)([(0, frame)])
    assert verdicts == [("drop", "sid:10")]
    (alert,) = alerts  # the noalert rule matched without a record
    assert {k: alert[k] for k in ("sid", "gid", "action", "classtype", "priority")} == {
        "sid": 10, "gid": 3, "action": "reject", "classtype": "web-application-attack",
        "priority": 1,
    }  # fmt: skip
    assert alert["references"] == ["url,example.com/a"]
    assert alert["metadata"] == ["created_at 2026_12_04"]
    assert one(['drop tcp any any -> any any (content:"GET"; noalert; sid:4;)'], frame) == (
        ("drop", "sid:4"),
        [],
    )


def run_with(**config: object) -> Run:
    """A Run of an IdsConfig with more than rules."""
    run = Run([])
    run.ids = Ids(IdsConfig.model_validate(config))
    run.engine = FunctionEngine(run.ids)
    return run


def test_packet_alert_max_keeps_the_lowest_sids() -> None:
    rules = [f'{ANY} (content:"GET"; sid:{sid};)' for sid in range(30, 0, -1)]
    frame = tcp4(flags="PA", payload=HTTP)
    assert Run(rules).one(frame)[1] == list(range(1, 16))  # Suricata's default: 15
    assert run_with(rules=rules, packet_alert_max=5).one(frame)[1] == [1, 2, 3, 4, 5]


def _vxlan(inner: bytes) -> bytes:
    outer = Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=5555, dport=4789)
    return bytes(outer / VXLAN(vni=42) / Ether(inner))


def test_rules_look_inside_tunnels_with_the_inner_tuple() -> None:
    inner = tcp4("10.1.0.5", "10.2.0.9", 40000, 80, "PA", HTTP)
    gre = bytes(Ether() / IP(src="192.0.2.1", dst="192.0.2.3") / GRE() / IP(inner[14:]))
    rules = [
        'drop tcp 10.1.0.0/16 any -> any 80 (msg:"in"; content:"/admin/"; sid:5;)',
        'alert udp any any -> any 4789 (msg:"outer"; sid:6;)',
    ]
    run = Run(rules)
    verdicts, alerts = run([(0, _vxlan(inner)), (1, gre)])
    assert verdicts == [("drop", "sid:5"), ("drop", "sid:5")]
    assert sorted(a["sid"] for a in alerts) == [5, 5, 6]  # both inner packets, the outer UDP
    vx = next(a for a in alerts if a["sid"] == 5 and a["tunnel"]["layers"][0]["type"] == "vxlan")
    assert (vx["src"], vx["sport"], vx["dst"], vx["dport"]) == ("10.1.0.5", 40000, "10.2.0.9", 80)
    assert vx["tunnel"]["src_ip"] == "192.0.2.1" and vx["tunnel"]["depth"] == 1
    assert vx["tunnel"]["layers"][0]["vni"] == 42
    outer = next(a for a in alerts if a["sid"] == 6)
    assert "tunnel" not in outer and outer["dport"] == 4789
    assert run.counters["tunneled"] == 2


def test_a_tunnel_that_cannot_be_opened_is_counted_and_the_outer_packet_judged() -> None:
    cut = udp4(dport=4789, payload=b"\x08\x00")  # a VXLAN header cut short
    run = Run(["alert udp any any -> any 4789 (sid:7;)"])
    assert run.one(cut) == (("pass", ""), [7])
    assert run.counters["tunnel_errors"] == 1


def test_a_ruleset_loads_what_it_supports_and_lists_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "et.rules"
    path.write_text(
        f'{ANY} (msg:"ok"; content:"GET"; sid:1;)\n'
        'alert http any any -> any any (msg:"app layer"; sid:2;)\n'
        f'{ANY} (msg:"not yet"; content:"a"; http_uri; sid:3;)\n'
        f'{ANY} (msg:"fine too"; flags:S; sid:4;)\n'
    )
    with caplog.at_level(logging.WARNING, logger="snf.functions.ids"):
        config = IdsConfig(rules_file=str(path))
    assert [r.sid for r in config.compiled] == [1, 4]
    assert config.skipped == [
        (f"{path}:2", "protocol 'http' is not supported (docs/functions/ids.md)"),
        (f"{path}:3", "option 'http_uri' is not supported (docs/functions/ids.md)"),
    ]
    assert "2 rules loaded, 2 skipped" in caplog.text and f"{path}:3" in caplog.text
    with pytest.raises(ValidationError, match=r"et.rules:2: protocol 'http' is not supported"):
        IdsConfig(rules_file=str(path), strict=True)


def test_inline_rules_are_strict_unless_told_otherwise() -> None:
    rules = [f"{ANY} (sid:1;)", f'{ANY} (content:"a"; http_uri; sid:2;)']
    with pytest.raises(ValidationError, match="rule 2: option 'http_uri' is not supported"):
        IdsConfig(rules=rules)
    config = IdsConfig(rules=rules, strict=False)
    assert [r.sid for r in config.compiled] == [1]
    assert config.skipped == [
        ("rule 2", "option 'http_uri' is not supported (docs/functions/ids.md)")
    ]


def test_a_syntax_error_fails_even_a_lenient_ruleset(tmp_path: Path) -> None:
    path = tmp_path / "bad.rules"
    path.write_text(f'{ANY} (content:"abc"; depth:2; sid:1;)\n')
    with pytest.raises(ValidationError, match=r"bad\.rules:1: depth must be >="):
        IdsConfig(rules_file=str(path))


def test_action_order_decides_which_matching_action_wins() -> None:
    frame = tcp4(flags="PA", payload=HTTP)
    rules = [
        'pass tcp any any -> any any (content:"GET"; sid:1;)',
        'drop tcp any any -> any any (content:"admin"; sid:2;)',
        f'{ANY} (content:"login"; sid:3;)',
    ]
    assert run_with(rules=rules).one(frame) == (("pass", ""), [])  # Suricata's default
    drop_first = run_with(rules=rules, action_order=["drop", "pass", "reject", "alert"])
    assert drop_first.one(frame) == (("drop", "sid:2"), [2])  # the pass stops only the alert
    with pytest.raises(ValidationError, match="action_order must list"):
        IdsConfig(rules=rules, action_order=["drop", "pass", "alert", "alert"])


def test_suppress_leaves_out_alerts_not_actions() -> None:
    frame = tcp4("10.0.0.1", "10.0.0.2", flags="PA", payload=HTTP)
    rules = [
        'drop tcp any any -> any any (content:"GET"; sid:5;)',
        f'{ANY} (content:"admin"; sid:6;)',
    ]
    every = run_with(rules=rules, suppress=[{"sig_id": 5}])
    assert every.one(frame) == (("drop", "sid:5"), [6])
    by_src = [{"sig_id": 6, "track": "by_src", "ip": "$HOME"}]
    home = run_with(rules=rules, suppress=by_src, vars={"HOME": "10.0.0.0/8"})
    assert home.one(frame)[1] == [5]
    assert home.one(tcp4("192.0.2.1", "10.0.0.2", flags="PA", payload=HTTP))[1] == [5, 6]
    with pytest.raises(ValidationError, match="give track and ip together"):
        IdsConfig(rules=rules, suppress=[{"sig_id": 6, "track": "by_dst"}])


def test_address_ranges_as_suricata_writes_them() -> None:
    rules = [
        "alert tcp 10.0.0.5-10.0.0.9 any -> any any (sid:1;)",
        "alert tcp ![10.0.0.5-10.0.0.9, 2001:db8::1-2001:db8::ff] any -> any any (sid:2;)",
        "alert tcp 2001:db8::10-2001:db8::20 any -> any any (sid:3;)",
    ]
    run = Run(rules)
    assert run.one(tcp4("10.0.0.5"))[1] == [1]
    assert run.one(tcp4("10.0.0.9"))[1] == [1]
    assert run.one(tcp4("10.0.0.10"))[1] == [2]
    assert run.one(tcp6("2001:db8::15", "2001:db8::99"))[1] == [3]
    assert run.one(tcp6("2001:db8::100", "2001:db8::99"))[1] == [2]
    with pytest.raises(ValidationError, match="lo <= hi"):
        IdsConfig(rules=["alert tcp 10.0.0.9-10.0.0.5 any -> any any (sid:1;)"])
