"""`snf top` (snf.cli.top_command) against a stdlib HTTP server serving canned expositions."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from snf.cli import top_command
from snf.cli.main import main
from snf.runtime.worker.metrics import STAGES, sample_names


def exposition(packets_in: int, sent: int, drops: tuple[int, int], engine: tuple[int, int]) -> str:
    """One worker's answer: counters, two drop reasons, engine-stage buckets, lag."""
    labels = 'pipeline="edge",function="fw",instance="0"'
    fast, slow = engine
    return f"""\
# HELP snf_packets_in_total Packets the function's core received.
# TYPE snf_packets_in_total counter
snf_packets_in_total{{{labels}}} {packets_in}
# TYPE snf_packets_sent_total counter
snf_packets_sent_total{{{labels}}} {sent}
# TYPE snf_packets_out_total counter
snf_packets_out_total{{{labels},port="pass",reason=""}} {sent}
snf_packets_out_total{{{labels},port="drop",reason="default"}} {drops[0]}
snf_packets_out_total{{{labels},port="drop",reason="rule:1"}} {drops[1]}
# TYPE snf_batches_total counter
snf_batches_total{{{labels}}} {fast + slow}
# TYPE snf_stage_seconds histogram
snf_stage_seconds_bucket{{{labels},stage="engine",le="0.001"}} {fast}
snf_stage_seconds_bucket{{{labels},stage="engine",le="0.0025"}} {fast + slow}
snf_stage_seconds_bucket{{{labels},stage="engine",le="+Inf"}} {fast + slow}
snf_stage_seconds_sum{{{labels},stage="engine"}} 0.01
snf_stage_seconds_count{{{labels},stage="engine"}} {fast + slow}
# TYPE snf_consumer_lag_messages gauge
snf_consumer_lag_messages{{{labels},partition="0"}} 4
snf_consumer_lag_messages{{{labels},partition="1"}} 6
"""


# Two seconds apart (the test's clock): +2000 in, +1600 sent, +400 dropped, +4 batches,
# of which 2 took at most 1 ms and 2 at most 2.5 ms.
FIRST = exposition(1000, 800, (150, 50), (5, 5))
SECOND = exposition(3000, 2400, (450, 150), (7, 7))


@pytest.fixture
def server() -> Iterator[str]:
    answers = iter([FIRST])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = next(answers, SECOND).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/metrics"
    finally:
        httpd.shutdown()
        httpd.server_close()


def rows(out: str) -> dict[str, list[str]]:
    """The table's body rows by their first two cells."""
    found = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) >= 3:
            found[f"{cells[0]}/{cells[1]}"] = cells[2:]
    return found


def test_once_prints_rates_stage_quantiles_and_lag(
    server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(top_command, "_clock", itertools.count(0.0, 2.0).__next__)
    refused = "http://127.0.0.1:9/metrics"  # discard port: nothing listens
    assert main(["top", "--url", server, "--url", refused, "--once", "--interval", "0.01"]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    fw = table["fw/0"]
    assert fw[:4] == ["1,000", "800", "200", "2"]  # in, out, drops, batches per second
    engine = fw[4 + STAGES.index("engine")]
    assert engine == "1.00/2.47"  # ms: p50 at the 1 ms bound, p99 interpolated to 2.5
    assert fw[4 + STAGES.index("decode")] == "-"  # not observed
    assert fw[-1] == "10"  # lag summed over partitions
    assert "?/?" in table and "refused" in out.lower()  # a row for the silent one, and why


def test_top_needs_a_pipeline_or_urls(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--once"]) == 1
    assert "needs a deployed pipeline or --url" in capsys.readouterr().err


def test_the_deployment_s_instances_are_the_targets() -> None:
    status = {
        "functions": {
            "fw": {
                "instances": [
                    {"instance": 0, "metrics_url": "http://127.0.0.1:4001/metrics"},
                    {"instance": 1, "metrics_url": None},  # starting: no stats.json yet
                ]
            },
            "nat": {"instances": [{"instance": 0, "metrics_url": "http://127.0.0.1:4002/metrics"}]},
        }
    }
    assert list(top_command._instance_targets(status)) == [
        top_command.Target("http://127.0.0.1:4001/metrics", "fw", "0"),
        top_command.Target("http://127.0.0.1:4002/metrics", "nat", "0"),
    ]


def test_quantiles_interpolate_within_buckets_as_promql_does() -> None:
    buckets = {0.001: 2.0, 0.0025: 4.0, float("inf"): 4.0}
    assert top_command.quantile(0.5, buckets) == pytest.approx(0.001)
    assert top_command.quantile(0.25, buckets) == pytest.approx(0.0005)
    assert top_command.quantile(0.75, buckets) == pytest.approx(0.00175)
    # Beyond the highest finite bound: that bound; nothing observed: no answer.
    assert top_command.quantile(0.99, {0.001: 1.0, float("inf"): 10.0}) == 0.001
    assert top_command.quantile(0.5, {0.001: 0.0, float("inf"): 0.0}) is None


def test_top_reads_only_names_the_worker_exports() -> None:
    names = {*top_command.TOTALS, top_command.DROPS, top_command.STAGE_BUCKET, top_command.LAG}
    assert names <= sample_names()
    assert top_command.STAGES == STAGES
