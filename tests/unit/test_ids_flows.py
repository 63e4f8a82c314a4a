"""The ids core's flow state, as Suricata documents it: `flow` (established,
direction, midstream), `flowbits` (set, unset, toggle, isset, isnotset, |, &,
noalert, order within a packet), `threshold` (limit, threshold, both) and
`detection_filter`, and that the state is in the function's tables: a new
core on the same tables (a takeover) decides exactly as the old one would
have, and expired flows are swept."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from snf.core.contract import SweepContext
from snf.core.engine import FunctionEngine
from snf.core.tables import BatchState
from snf.functions.ids import Ids, IdsConfig
from tests.packets import tcp4, udp4
from tests.unit.test_ids import Run

S = 1_000_000_000
C, SRV = "10.0.0.1", "10.0.0.2"


def c2s(flags: str, payload: bytes = b"", sport: int = 40000) -> bytes:
    return tcp4(C, SRV, sport, 80, flags, payload)


def s2c(flags: str, payload: bytes = b"", sport: int = 40000) -> bytes:
    return tcp4(SRV, C, 80, sport, flags, payload)


HANDSHAKE = [c2s("S"), s2c("SA"), c2s("A")]


def fired(rules: list[str], frames: list[bytes], run: Run | None = None, t0: int = 0) -> list:
    """Per frame, the sids that alerted (frames 1 ms apart from t0)."""
    run = run or Run(rules)
    _, alerts = run([(t0 + k * 1_000_000, f) for k, f in enumerate(frames)])
    by_id: dict[str, list[int]] = {}
    for a in alerts:
        by_id.setdefault(a["packet_id"], []).append(a["sid"])
    ids = [f"{0x5EED:016x}:{run.seq - len(frames) + k}" for k in range(len(frames))]
    return [by_id.get(i, []) for i in ids]


def test_established_after_the_handshake_and_by_direction() -> None:
    rules = [
        "alert tcp any any -> any any (flow:established,to_server; sid:1;)",
        "alert tcp any any -> any any (flow:established,to_client; sid:2;)",
        "alert tcp any any -> any any (flow:not_established; sid:3;)",
        "alert tcp any any -> any any (flow:stateless; sid:4;)",
        "alert tcp any any -> any any (flow:from_client; sid:5;)",
    ]
    frames = [*HANDSHAKE, c2s("PA", b"GET /"), s2c("PA", b"200"), c2s("R")]
    assert fired(rules, frames) == [
        [3, 4, 5],  # SYN
        [3, 4],  # SYN/ACK: from the server
        [1, 4, 5],  # the ACK that completes the handshake
        [1, 4, 5],
        [2, 4],
        [3, 4, 5],  # after a RST the flow is closed
    ]


def test_a_flow_picked_up_midstream() -> None:
    rule = "alert tcp any any -> any any (flow:established,to_server; sid:1;)"
    frames = [c2s("PA", b"x"), s2c("A"), c2s("PA", b"y")]
    assert fired([rule], frames) == [[], [], []]
    run = Run([])
    run.ids = Ids(IdsConfig(rules=[rule], midstream=True))
    run.engine = FunctionEngine(run.ids)
    assert fired([rule], frames, run) == [[1], [], [1]]  # the first sender is the client


def test_udp_is_established_once_both_directions_were_seen() -> None:
    rule = "alert udp any any -> any any (flow:established; sid:1;)"
    frames = [udp4(C, SRV, 5000, 53), udp4(C, SRV, 5000, 53), udp4(SRV, C, 53, 5000),
              udp4(C, SRV, 5000, 53)]  # fmt: skip
    assert fired([rule], frames) == [[], [], [1], [1]]


def test_flowbits_set_on_one_packet_tested_on_later_ones() -> None:
    rules = [
        'alert tcp any any -> any 80 (content:"login"; flowbits:set,auth; noalert; sid:1;)',
        'alert tcp any 80 -> any any (content:"200"; flowbits:isset,auth; sid:2;)',
        'alert tcp any 80 -> any any (content:"200"; flowbits:isnotset,auth; sid:3;)',
        'alert tcp any any -> any 80 (content:"logout"; flowbits:unset,auth; sid:4;)',
    ]
    frames = [
        *HANDSHAKE,
        s2c("PA", b"200 before"),  # 3: auth not set
        c2s("PA", b"POST /login"),  # noalert: sets auth silently
        s2c("PA", b"200 OK"),  # 2
        c2s("PA", b"GET /logout"),  # 4 unsets
        s2c("PA", b"200 bye"),  # 3 again
    ]
    assert fired(rules, frames)[3:] == [[3], [], [2], [4], [3]]
    other_flow = [c2s("S", sport=41000), s2c("PA", b"200", sport=41000)]
    assert fired(rules, [*frames, *other_flow])[-1] == [3]  # bits belong to one flow


def test_flowbits_toggle_any_all_and_order_within_a_packet() -> None:
    rules = [
        # sid 1 tests a bit that sid 9 sets on the same packet: setters go first
        'alert tcp any any -> any any (content:"a"; flowbits:isset,x; sid:1;)',
        'alert tcp any any -> any any (content:"a"; flowbits:set,x; flowbits:noalert; sid:9;)',
        'alert tcp any any -> any any (content:"t"; flowbits:toggle,y; flowbits:noalert; sid:10;)',
        'alert tcp any any -> any any (content:"q"; flowbits:isset,x|y; sid:2;)',
        'alert tcp any any -> any any (content:"q"; flowbits:isset,x&y; sid:3;)',
        'alert tcp any any -> any any (content:"q"; flowbits:isnotset,y; sid:4;)',
    ]
    frames = [c2s("S"), c2s("PA", b"q"), c2s("PA", b"a"), c2s("PA", b"q"), c2s("PA", b"t"),
              c2s("PA", b"q"), c2s("PA", b"t"), c2s("PA", b"q")]  # fmt: skip
    assert fired(rules, frames) == [[], [4], [1], [2, 4], [], [2, 3], [], [2, 4]]


def _every(rule: str, n: int, gap_s: float = 1.0) -> list[list[int]]:
    frames = [udp4(C, SRV, 5000 + k, 53, b"q") for k in range(n)]
    run = Run([rule])
    out = []
    for k, f in enumerate(frames):
        _, alerts = run([(int(k * gap_s * S), f)])
        out.append([a["sid"] for a in alerts])
    return out


def test_threshold_limit_threshold_both_and_detection_filter() -> None:
    base = 'alert udp any any -> any 53 (content:"q"; sid:7; '
    limit = _every(base + "threshold:type limit, track by_src, count 2, seconds 60;)", 5)
    assert limit == [[7], [7], [], [], []]
    every = _every(base + "threshold:type threshold, track by_src, count 3, seconds 60;)", 7)
    assert every == [[], [], [7], [], [], [7], []]
    both = _every(base + "threshold:type both, track by_dst, count 3, seconds 60;)", 6)
    assert both == [[], [], [7], [], [], []]
    after = _every(base + "detection_filter:track by_src, count 2, seconds 60;)", 5)
    assert after == [[], [], [7], [7], [7]]
    window = _every(base + "threshold:type limit, track by_rule, count 1, seconds 10;)", 4, 6.0)
    assert window == [[7], [], [7], []]  # a new window every 10 s of packet time


def test_a_drop_held_back_by_its_threshold_does_not_drop() -> None:
    after_one = "detection_filter:track by_src, count 1, seconds 60;"
    rule = f'drop udp any any -> any 53 (content:"q"; {after_one} sid:8;)'
    run = Run([rule])
    verdicts, _ = run([(k, udp4(C, SRV, 5000 + k, 53, b"q")) for k in range(3)])
    assert verdicts == [("pass", ""), ("drop", "sid:8"), ("drop", "sid:8")]


def test_a_new_core_on_the_same_tables_decides_as_the_old_one() -> None:
    rules = [
        'alert tcp any any -> any 80 (content:"login"; flowbits:set,auth; sid:1;)',
        "alert tcp any 80 -> any any (flow:established; flowbits:isset,auth; sid:2;)",
        'alert tcp any any -> any 80 (content:"x"; threshold:type limit, track by_src, '
        "count 1, seconds 60; sid:3;)",
    ]
    frames = [*HANDSHAKE, c2s("PA", b"login x"), s2c("PA", b"ok"), c2s("PA", b"x")]
    whole = fired(rules, frames)
    run = Run(rules)
    first = fired(rules, frames[:4], run)
    run.ids = Ids(IdsConfig(rules=rules))  # a takeover: nothing in memory, the tables kept
    run.engine = FunctionEngine(run.ids)
    assert (
        first + fired(rules, frames[4:], run, t0=4_000_000)
        == whole
        == [[], [], [], [1, 3], [2], []]
    )


def test_flows_expire_in_packet_time_and_are_swept() -> None:
    rules = ["alert tcp any any -> any any (flow:established; sid:1;)"]
    run = Run([])
    run.ids = Ids(IdsConfig(rules=rules, flow_timeouts={"established": 5}))
    run.engine = FunctionEngine(run.ids)
    assert fired(rules, HANDSHAKE, run)[-1] == [1]
    assert fired(rules, [c2s("A")], run, t0=3 * S) == [[1]]
    assert fired(rules, [c2s("A")], run, t0=9 * S) == [[]]  # 6 s idle: a new, untracked flow
    state = BatchState(run.stores, partition=0)
    run.ids.sweep(state, SweepContext(0, 200 * S))
    state.write_back()
    assert run.stores["flow"].data == {}


def test_a_full_flow_table_evicts_and_counts() -> None:
    rules = ["alert tcp any any -> any any (flow:established; sid:1;)"]
    run = Run([])
    run.ids = Ids(IdsConfig(rules=rules, max_flows=2))
    run.engine = FunctionEngine(run.ids)
    fired(rules, [c2s("S", sport=p) for p in (1, 2, 3, 4)], run)
    assert len(run.stores["flow"].data) == 2 and run.counters["evicted"] == 2


def test_rules_on_the_flow_do_not_match_inside_tunnels() -> None:
    from tests.unit.test_ids_engine import _vxlan

    inner = tcp4("10.1.0.5", "10.2.0.9", 40000, 80, "PA", b"GET /")
    rules = [
        'alert tcp any any -> any 80 (content:"GET"; sid:1;)',
        'alert tcp any any -> any 80 (content:"GET"; flow:established; sid:2;)',
        'alert tcp any any -> any 80 (content:"GET"; flow:stateless; sid:3;)',
    ]
    assert Run(rules).one(_vxlan(inner))[1] == [1, 3]


def _config_run(rules: list[str], **config: object) -> Run:
    run = Run([])
    run.ids = Ids(IdsConfig(rules=rules, **config))
    run.engine = FunctionEngine(run.ids)
    return run


def test_a_threshold_line_becomes_the_rules_threshold() -> None:
    rule = 'alert udp any any -> any 53 (content:"q"; sid:7;)'
    line = {"sig_id": 7, "type": "limit", "track": "by_src", "count": 2, "seconds": 60}
    run = _config_run([rule], thresholds=[line])
    got = [run.one(udp4(C, SRV, 5000 + k, 53, b"q"))[1] for k in range(4)]
    assert got == [[7], [7], [], []]
    with pytest.raises(ValidationError, match="no rule 1:8 is loaded"):
        IdsConfig(rules=[rule], thresholds=[{**line, "sig_id": 8}])


def test_a_rate_filter_switches_the_action_for_its_timeout() -> None:
    rule = 'alert udp any any -> any 53 (content:"q"; sid:7;)'
    rf = {"sig_id": 7, "track": "by_src", "count": 2, "seconds": 10, "new_action": "drop",
          "timeout": 5}  # fmt: skip
    run = _config_run([rule], rate_filter=[rf])
    verdicts = []
    for k, t in enumerate([0, 1, 2, 3, 6, 8, 20]):  # seconds
        v, alerts = run([(t * S, udp4(C, SRV, 5000 + k, 53, b"q"))])
        verdicts.append((v[0][0], [a["action"] for a in alerts]))
    assert verdicts == [
        ("pass", ["alert"]), ("pass", ["alert"]),
        ("drop", ["drop"]),  # the third within 10 s: drop for 5 s
        ("drop", ["drop"]), ("drop", ["drop"]),  # at 3 and 6 s: still until 7 s
        ("drop", ["drop"]),  # at 8 s: the fifth in the window, again for 5 s
        ("pass", ["alert"]),  # a new window
    ]  # fmt: skip


def test_flowint_counts_per_flow_and_tests_in_suricatas_order() -> None:
    rules = [
        'alert tcp any any -> any 80 (content:"login"; flowint:fails,+,1; noalert; sid:1;)',
        'alert tcp any any -> any 80 (content:"login"; flowint:fails,>,2; sid:2;)',
        'alert tcp any any -> any 80 (content:"reset"; flowint:fails,=,0; noalert; sid:3;)',
        'alert tcp any any -> any 80 (content:"peek"; flowint:fails,notset; sid:4;)',
        'alert tcp any any -> any 80 (content:"peek"; flowint:fails,==,best; sid:5;)',
        'alert tcp any any -> any 80 (content:"best"; flowint:best,=,fails; noalert; sid:6;)',
    ]
    frames = [c2s("S"), c2s("PA", b"peek")] + [c2s("PA", b"login")] * 4
    frames += [c2s("PA", b"best"), c2s("PA", b"peek"), c2s("PA", b"reset")]
    frames += [c2s("PA", b"login"), c2s("PA", b"peek")]
    # fails: 1, 2, 3 (> 2), 4; best = 4; peek: 4 == 4; reset: 0; login: 1; peek: 1 != 4
    assert fired(rules, frames) == [[], [4], [], [], [2], [2], [], [5], [], [], []]
    other = [c2s("PA", b"login", sport=41000)] * 3
    assert fired(rules, [*frames, *other])[-3:] == [[], [], [2]]  # one count per flow
    with pytest.raises(ValidationError, match="flowint expects"):
        IdsConfig(rules=["alert tcp any any -> any any (flowint:x,*,2; sid:1;)"])
