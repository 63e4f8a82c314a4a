"""`snf dlq PIPELINE FUNCTION`: what a function dead-lettered, and why; --replay puts it back.

Each dead letter is listed once per source offset (a takeover that redoes an
event sends its dead letter again), newest last, with the reason headers the
worker set (snf.runtime.worker.dead_letters).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from snf.cli.common import add_brokers, console, pipeline_file, require_brokers
from snf.errors import SnfError

__all__ = ["COMMANDS", "add_parsers", "summaries"]

PREFIX = "snf.errors."


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dlq", help="list a function's dead letters (and --replay them)")
    p.add_argument("pipeline", help="pipeline file (or a deployed pipeline's name)")
    p.add_argument("function", help="the function whose dead letters to show")
    add_brokers(p)
    p.add_argument("--json", action="store_true", help="one JSON object per dead letter")
    p.add_argument(
        "--replay",
        action="store_true",
        help="send them back to the function's input, reason headers removed",
    )


def summaries(records: list[Any]) -> list[dict[str, Any]]:
    """One dict per source offset: where it was, why, its size and headers."""
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in records:
        why = {
            k[len(PREFIX) :]: v.decode("utf-8", "replace")
            for k, v in r.headers
            if k.startswith(PREFIX)
        }
        source = (why.get("topic", "?"), why.get("partition", "?"), why.get("offset", "?"))
        seen.setdefault(
            source,
            {
                "dlq_partition": r.partition,
                "dlq_offset": r.offset,
                "timestamp_ms": r.timestamp_ms,
                "source": f"{source[0]}/{source[1]}@{source[2]}",
                "class": why.get("class", "?"),
                "message": why.get("message", ""),
                "bytes": None if r.value is None else len(r.value),
            },
        )
    return list(seen.values())


def _cmd_dlq(args: argparse.Namespace) -> int:
    from snf.kafka.dead_letter_reader import read_dead_letters, republish
    from snf.ops import deployment_dir as dp
    from snf.pipeline.loader import load_pipeline

    ref = args.pipeline
    path = (
        pipeline_file(ref)
        if ref.endswith((".yaml", ".yml"))
        else dp.directory(ref) / "pipeline.yaml"
    )
    pipeline = load_pipeline(path)
    if args.function not in {f.name for f in pipeline.functions}:
        known = ", ".join(f.name for f in pipeline.functions)
        raise SnfError(f"{pipeline.name} has no function {args.function!r} (it has {known})")
    fn = pipeline.function(args.function)
    brokers = require_brokers(args.brokers)
    records = read_dead_letters(brokers, fn.dlq_topic)
    rows = summaries(records)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        _table(fn.dlq_topic, rows)
    if args.replay and records:
        firsts = {(r["dlq_partition"], r["dlq_offset"]) for r in rows}
        again = [
            type(r)(
                r.partition,
                r.offset,
                r.timestamp_ms,
                r.value,
                [h for h in r.headers if not h[0].startswith(PREFIX)],
            )
            for r in records
            if (r.partition, r.offset) in firsts
        ]
        n = republish(brokers, fn.input_topic, again)
        console.print(f"replayed {n} dead letters into {fn.input_topic}")
    return 0


def _table(topic: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print(f"{topic}: no dead letters")
        return
    table = Table(title=f"{topic}: {len(rows)} dead letters", title_justify="left")
    for col in ("source", "class", "message", "bytes"):
        table.add_column(col, overflow="fold", justify="right" if col == "bytes" else "left")
    for r in rows:
        table.add_row(r["source"], r["class"], r["message"][:160], str(r["bytes"]))
    console.print(table)


COMMANDS = {"dlq": _cmd_dlq}
