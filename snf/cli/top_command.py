"""`snf top PIPELINE`: every worker's /metrics, scraped each interval, as one live table.

Per function and instance: packets per second in, sent and dropped, batches
per second, p50/p99 of each Processor stage over the interval (from the
histogram buckets, interpolated as PromQL's histogram_quantile does), and the
input lag the worker sees. The workers are found through `snf status`
(snf.ops.status: each instance's metrics URL), again at every refresh, so
scaling shows; `--url` scrapes given endpoints instead (a port-forwarded pod).
"""

from __future__ import annotations

import argparse
import math
import time
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from snf.cli.common import console
from snf.errors import SnfError

__all__ = ["COMMANDS", "Reading", "Target", "add_parsers", "parse", "quantile", "top_table"]

# What the table reads (snf.runtime.worker.metrics names them).
TOTALS = {
    "snf_packets_in_total": "in",
    "snf_packets_sent_total": "out",
    "snf_batches_total": "batches",
}
DROPS = "snf_packets_out_total"  # with port="drop"
STAGE_BUCKET = "snf_stage_seconds_bucket"
LAG = "snf_consumer_lag_messages"
STAGES = ("decode", "engine", "journal", "state_apply", "reserve", "produce")
SCRAPE_TIMEOUT = 2.0

_clock = time.monotonic  # the tests replace it: rates are per second of this clock


@dataclass(frozen=True)
class Target:
    url: str
    function: str = "?"
    instance: str = "?"


@dataclass
class Reading:
    """One worker's metrics at one instant (an error instead when it did not answer)."""

    function: str
    instance: str
    time: float
    totals: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # stage -> le -> n
    lag: float | None = None
    error: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.function, self.instance


def add_parsers(sub: argparse._SubParsersAction) -> None:
    tp = sub.add_parser("top", help="live per-instance rates and stage times from /metrics")
    tp.add_argument("pipeline", nargs="?", help="a deployed pipeline (see `snf status`)")
    tp.add_argument("--url", action="append", default=[], help="scrape this URL (repeatable)")
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    tp.add_argument("--once", action="store_true", help="print one table (two scrapes) and exit")


def parse(text: str, target: Target, now: float) -> list[Reading]:
    """The snf samples of one exposition, one Reading per (function, instance) label pair."""
    from prometheus_client.parser import text_string_to_metric_families

    readings: dict[tuple[str, str], Reading] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.startswith("snf_"):
                continue
            key = (s.labels.get("function", target.function), s.labels.get("instance", ""))
            r = readings.get(key)
            if r is None:
                r = readings[key] = Reading(*key, now)
            if s.name in TOTALS:
                r.totals[TOTALS[s.name]] = r.totals.get(TOTALS[s.name], 0.0) + s.value
            elif s.name == DROPS and s.labels.get("port") == "drop":
                r.totals["drops"] = r.totals.get("drops", 0.0) + s.value
            elif s.name == STAGE_BUCKET:
                le = float(s.labels["le"])
                r.buckets.setdefault(s.labels.get("stage", "?"), {})[le] = s.value
            elif s.name == LAG:
                r.lag = (r.lag or 0.0) + s.value
    return list(readings.values())


def scrape(target: Target, now: float) -> list[Reading]:
    try:
        with urllib.request.urlopen(target.url, timeout=SCRAPE_TIMEOUT) as resp:
            text = resp.read().decode("utf-8", "replace")
        return parse(text, target, now) or [Reading(target.function, target.instance, now)]
    except (OSError, ValueError) as exc:  # refused, timed out, HTTP error, not an exposition
        reason = getattr(exc, "reason", None) or exc
        return [Reading(target.function, target.instance, now, error=f"{target.url}: {reason}")]


def scrape_all(targets: list[Target]) -> dict[tuple[str, str], Reading]:
    if not targets:
        return {}
    now = _clock()  # one instant per round: the scrapes run side by side
    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        found = [r for rs in pool.map(lambda t: scrape(t, now), targets) for r in rs]
    return {r.key: r for r in found}


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of cumulative bucket counts (le -> n), as histogram_quantile."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    below, below_n = 0.0, 0.0
    for le in bounds:
        n = buckets[le]
        if n >= rank:
            if math.isinf(le):
                return below  # above the highest finite bound: say that bound
            return below + (le - below) * ((rank - below_n) / (n - below_n) if n > below_n else 1)
        below, below_n = le, n
    return below


def _delta(prev: dict[float, float] | None, cur: dict[float, float]) -> dict[float, float]:
    if prev is None or any(cur.get(le, 0.0) < n for le, n in prev.items()):
        return cur  # no earlier reading, or the worker restarted: since its start
    return {le: n - prev.get(le, 0.0) for le, n in cur.items()}


def _rate(prev: Reading | None, cur: Reading, name: str) -> str:
    if prev is None or prev.error or cur.time <= prev.time or name not in cur.totals:
        return "-"
    diff = cur.totals[name] - prev.totals.get(name, 0.0)
    return f"{max(diff, 0.0) / (cur.time - prev.time):,.0f}"  # < 0: a restart


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def _row(prev: Reading | None, cur: Reading) -> list[str]:
    if cur.error:
        return [cur.function, cur.instance, "[red]no answer[/]"] + [""] * (len(STAGES) + 4)
    cells = [cur.function, cur.instance]
    cells += [_rate(prev, cur, name) for name in ("in", "out", "drops", "batches")]
    for stage in STAGES:
        window = _delta(prev.buckets.get(stage) if prev else None, cur.buckets.get(stage, {}))
        p50, p99 = quantile(0.5, window), quantile(0.99, window)
        cells.append("-" if p50 is None else f"{_ms(p50)}/{_ms(p99)}")
    cells.append("-" if cur.lag is None else f"{cur.lag:,.0f}")
    return cells


def top_table(
    title: str, prev: dict[tuple[str, str], Reading], cur: dict[tuple[str, str], Reading]
) -> Table:
    table = Table(title=title)
    columns = ["function", "instance", "in/s", "out/s", "drops/s", "batches/s"]
    columns += [f"{s.removeprefix('state_')}\np50/p99 ms" for s in STAGES] + ["lag"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("function", "instance") else "right")
    for key in sorted(cur):
        table.add_row(*_row(prev.get(key), cur[key]))
    errors = [r.error for r in cur.values() if r.error]
    if errors:
        table.caption = "\n".join(errors)
    return table


def _targets(args: argparse.Namespace) -> tuple[str, list[Target]]:
    if args.url:
        return ", ".join(args.url), [Target(url) for url in args.url]
    if not args.pipeline:
        raise SnfError("snf top needs a deployed pipeline or --url")
    from snf.cli.deploy_commands import _deployment_dir  # a name or a file, as `snf status`
    from snf.ops.status import deployment_status

    # No Kafka round trip per refresh: each worker's own lag is in its metrics.
    status = deployment_status(_deployment_dir(args.pipeline), with_lag=False)
    return status["pipeline"], list(_instance_targets(status))


def _instance_targets(status: dict[str, Any]) -> Iterable[Target]:
    for name, fn in status["functions"].items():
        for inst in fn["instances"]:
            if inst.get("metrics_url"):
                yield Target(inst["metrics_url"], name, str(inst["instance"]))


def _cmd_top(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise SnfError("--interval must be greater than 0")
    title, targets = _targets(args)
    prev = scrape_all(targets)
    if args.once:
        time.sleep(args.interval)
        title, targets = _targets(args)
        out = Console()
        if not out.is_terminal:
            out = Console(width=200)  # a script's pipe: no 80-column squeeze
        out.print(top_table(title, prev, scrape_all(targets)))
        return 0
    from rich.live import Live

    with Live(top_table(title, {}, prev), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(args.interval)
            title, targets = _targets(args)
            cur = scrape_all(targets)
            live.update(top_table(f"{title} (every {args.interval:g}s)", prev, cur), refresh=True)
            prev = cur


COMMANDS = {"top": _cmd_top}
