"""The ids core's TCP stream matching: a content split across segments fires
once, on the segment that completes it; retransmissions, gaps, the other
direction and absolute positions do not join; a new core on the same tables
(a takeover) joins the same bytes."""

from __future__ import annotations

import pytest

from snf.core.engine import FunctionEngine
from snf.functions.ids import Ids, IdsConfig
from snf.functions.ids.options import split_options
from snf.functions.ids.payload import compile_payload
from snf.functions.ids.stream import joinable
from tests.packets import tcp4
from tests.unit.test_ids import Run
from tests.unit.test_ids_flows import fired

C, SRV, ISN, SSN = "10.0.0.1", "10.0.0.2", 1000, 5000


def seg(data: bytes, at: int, flags: str = "PA") -> bytes:
    """A client segment carrying `data` at stream offset `at` (after the SYN)."""
    return tcp4(C, SRV, 40000, 80, flags, data, seq=ISN + 1 + at, ack=SSN + 1)


def reply(data: bytes, at: int) -> bytes:
    return tcp4(SRV, C, 80, 40000, "PA", data, seq=SSN + 1 + at, ack=ISN + 1)


OPEN = [
    tcp4(C, SRV, 40000, 80, "S", seq=ISN),
    tcp4(SRV, C, 80, 40000, "SA", seq=SSN, ack=ISN + 1),
    tcp4(C, SRV, 40000, 80, "A", seq=ISN + 1, ack=SSN + 1),
]
ADMIN = 'alert tcp any any -> any 80 (msg:"admin"; content:"/admin/login"; sid:1;)'


def run_with(rules: list[str], **config: object) -> Run:
    run = Run([])
    run.ids = Ids(IdsConfig(rules=rules, **config))
    run.engine = FunctionEngine(run.ids)
    return run


def test_a_content_split_across_segments_fires_once_on_the_second() -> None:
    frames = [*OPEN, seg(b"GET /adm", 0), seg(b"in/login HTTP/1.1", 8), seg(b"\r\n\r\n", 25)]
    assert fired([ADMIN], frames)[3:] == [[], [1], []]
    assert fired([ADMIN], frames, run_with([ADMIN], stream_window=0))[3:] == [[], [], []]


def test_relative_matches_join_too() -> None:
    relative = 'content:"user="; content:"root"; distance:0; within:6;'
    rule = f"alert tcp any any -> any 80 ({relative} sid:2;)"
    frames = [*OPEN, seg(b"GET /?user=", 0), seg(b"root&x=1", 11)]
    assert fired([rule], frames)[3:] == [[], [2]]


def test_retransmissions_gaps_and_the_other_direction_do_not_join() -> None:
    first, second = seg(b"GET /adm", 0), seg(b"in/login", 8)
    assert fired([ADMIN], [*OPEN, first, second, second])[3:] == [[], [1], []]
    assert fired([ADMIN], [*OPEN, second, first])[3:] == [[], []]  # out of order: a gap
    cross = [*OPEN, seg(b"GET /adm", 0), reply(b"in/login", 0)]
    both = 'alert tcp any any <> any any (content:"/admin/login"; sid:3;)'
    assert fired([both], cross)[3:] == [[], []]


def test_a_midstream_flow_joins_from_its_first_segment() -> None:
    frames = [seg(b"GET /adm", 0), seg(b"in/login", 8)]
    assert fired([ADMIN], frames) == [[], [1]]


def test_a_new_core_on_the_same_tables_joins_the_same_bytes() -> None:
    frames = [*OPEN, seg(b"GET /adm", 0), seg(b"in/login", 8)]
    run = Run([ADMIN])
    first = fired([ADMIN], frames[:4], run)
    run.ids = Ids(IdsConfig(rules=[ADMIN]))  # a takeover: the carry is in the flow table
    run.engine = FunctionEngine(run.ids)
    assert first + fired([ADMIN], frames[4:], run, t0=4_000_000) == [[], [], [], [], [1]]


@pytest.mark.parametrize(
    ("options", "joins"),
    [
        ('content:"a";', True),
        ('content:"a"; content:"b"; distance:0;', True),
        ('content:"a"; pcre:"/b+/R";', True),
        ('content:"a"; depth:10;', False),  # an absolute window: no stream position
        ('content:"a"; startswith;', False),
        ('pcre:"/^GET/";', False),
        ('content:"a"; dsize:>3;', False),
    ],
)
def test_only_rules_without_absolute_positions_join(options: str, joins: bool) -> None:
    assert joinable(compile_payload(split_options(options))) is joins


def test_stream_size_counts_each_side_by_its_sequence_numbers() -> None:
    rules = [
        "alert tcp any any -> any any (stream_size:client,>,9; sid:1;)",
        "alert tcp any any -> any any (stream_size:server,=,1; sid:2;)",
        "alert tcp any any -> any any (stream_size:both,>=,1; sid:3;)",
        "alert tcp any any -> any any (stream_size:either,>,20; sid:4;)",
    ]
    # client: SYN (1) then 8 + 8 bytes; server: SYN/ACK (1), then 30 bytes
    frames = [*OPEN, seg(b"GET /adm", 0), seg(b"in/login", 8), reply(b"x" * 30, 0)]
    assert fired(rules, frames) == [
        [],  # the SYN: client 1, the server not seen
        [2, 3],  # SYN/ACK: server 1
        [2, 3],
        [2, 3],  # client 9
        [1, 2, 3],  # client 17
        [1, 3, 4],  # server 31
    ]
    with pytest.raises(ValueError, match="stream_size never matches a udp rule"):
        IdsConfig(rules=["alert udp any any -> any any (stream_size:client,>,1; sid:9;)"])


def test_tcp_stream_rules_match_the_stream_never_one_packet_alone() -> None:
    rules = [
        'alert tcp-stream any any -> any 80 (content:"/admin"; sid:1;)',
        'alert tcp-pkt any any -> any 80 (content:"/admin"; sid:2;)',
    ]
    frames = [*OPEN, seg(b"GET /admin", 0), seg(b"GET /admin", 0), seg(b" /adm", 10),
              seg(b"in", 15)]  # fmt: skip
    # the first segment starts the stream; the retransmission is no new data; the
    # window already held a match when the split one completes
    assert fired(rules, frames)[3:] == [[1, 2], [2], [], []]
    fresh = [*OPEN, seg(b"GET /adm", 0), seg(b"in", 8)]
    assert fired(rules, fresh)[3:] == [[], [1]]
    inner = tcp4("10.1.0.5", "10.2.0.9", 40000, 80, "PA", b"GET /admin")
    from tests.unit.test_ids_engine import _vxlan

    assert Run(rules).one(_vxlan(inner))[1] == [2]  # no stream inside a tunnel
    with pytest.raises(ValueError, match="tcp-stream rule here needs"):
        IdsConfig(rules=['alert tcp-stream any any -> any any (content:"a"; depth:4; sid:3;)'])


def test_flow_only_stream_and_no_stream_are_tcp_stream_and_tcp_pkt() -> None:
    rules = [
        'alert tcp any any -> any 80 (flow:only_stream; content:"/admin"; sid:1;)',
        'alert tcp any any -> any 80 (flow:no_stream; content:"/admin"; sid:2;)',
        'alert tcp any any -> any 80 (content:"/admin"; sid:3;)',
    ]
    frames = [*OPEN, seg(b"GET /adm", 0), seg(b"in", 8), seg(b" /admin", 10)]
    assert fired(rules, frames)[3:] == [[], [1, 3], [2, 3]]
