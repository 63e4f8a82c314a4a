"""`snf sink`: a pipeline's outputs into files, or (live) out of interfaces.

Without `--follow`, everything up to now, sorted by packet id (snf.egress.collector).
With it, written as it comes in bounded memory (snf.egress.stream), and with
`--interface` or the pipeline's `egress:` section also transmitted
(snf.egress.transmit), until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from snf.cli.common import add_brokers, console, keyed_pipeline, require_brokers

__all__ = ["COMMANDS", "add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sk = sub.add_parser("sink", help="read a pipeline's outputs into files or out of interfaces")
    sk.add_argument("--pipeline", required=True, help="deployed name, or a pipeline file")
    sk.add_argument("-o", "--out", type=Path, help="egress packets as pcapng")
    sk.add_argument("--events", type=Path, help="side ports and records as JSON Lines")
    sk.add_argument("--follow", action="store_true", help="stream until Ctrl-C")
    sk.add_argument(
        "-i",
        "--interface",
        metavar="IF",
        help="send egress packets out of this interface (implies --follow; default: the "
        "pipeline's `egress:` section, which implies --follow too)",
    )
    sk.add_argument("--idle", type=float, default=5.0, help="stop after this long without news")
    sk.add_argument(
        "--json", type=Path, help="also write the summary (counts, foreign messages) as JSON here"
    )
    add_brokers(sk)


def _cmd_sink(args: argparse.Namespace) -> int:
    from snf.egress.collector import Collector
    from snf.egress.sink import KafkaSink, follow

    pipeline = keyed_pipeline(args.pipeline)  # trust only what its workers signed
    brokers = require_brokers(args.brokers)
    # A pipeline with an `egress:` section is live: its sink follows and sends.
    live = args.interface is not None or pipeline.spec.egress is not None
    follow_on = args.follow or live
    # Live: from the end of the topics; a restarted sink must not replay the past
    # onto the wire (packets in flight while it was down are lost, as in a router).
    sink = KafkaSink.of(brokers, pipeline, from_end=live)
    try:
        if follow_on:
            summary = _follow(args, sink, pipeline)
        else:
            collector = Collector()
            follow(sink, collector, idle=args.idle)
            if args.out:
                collector.write_pcapng(args.out)
            if args.events:
                collector.write_events(args.events)
            summary = _sink_summary(collector)
    finally:
        sink.close()
    summary["foreign"] = dict(sink.foreign)
    foreign = sum(sink.foreign.values())
    console.print(
        f"{summary['egress']} packets at egress, {summary['distinct']} distinct in all, "
        f"{summary['records']} records"
        + (f"; wrote {args.out}" if args.out else "")
        + (f"; skipped {foreign} foreign messages" if foreign else "")
    )
    for name, counts in summary.get("transmit", {}).items():
        if name in ("unrouted", "latency"):
            console.print(f"{name}: {counts}", highlight=False)
        else:
            console.print(_sent_line(name, counts), highlight=False)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _follow(args: argparse.Namespace, sink: Any, pipeline: Any) -> dict[str, Any]:
    """Written (and sent) as it comes, until Ctrl-C or SIGTERM."""
    from snf.egress.sink import follow
    from snf.egress.stream import Stream
    from snf.egress.transmit import Interfaces

    # A missing interface or permission is an snf error already (snf.live.afpacket).
    interfaces = Interfaces.of(pipeline.spec.egress, args.interface)
    where = f", sending on {', '.join(interfaces.transmitters)}" if interfaces else ""
    console.print(f"following {pipeline.name}{where}; Ctrl-C to stop")
    stream = Stream(args.out, args.events, transmit=interfaces.send if interfaces else None)
    try:
        follow(sink, stream, after_poll=stream.flush)
    finally:
        stream.close()
        if interfaces is not None:
            interfaces.close()
    summary = stream.summary()
    if interfaces is not None:
        summary["transmit"] = interfaces.counts()
    return summary


def _sent_line(name: str, counts: dict[str, int]) -> str:
    return (
        f"{name}: sent {counts['sent']:,}, failed {counts['failed']:,}, "
        f"dropped for size {counts['too_big']:,}"
    )


def _sink_summary(collector: Any) -> dict[str, Any]:
    from snf.pipeline.model import EGRESS

    return {
        "egress": collector.count(EGRESS),
        "distinct": collector.total,
        "records": sum(len(r) for r in collector.records.values()),
        "duplicates": collector.duplicates,
        "duplicate_records": collector.duplicate_records,
        "redelivered": collector.redelivered,
        "conflicts": collector.conflicts,
    }


COMMANDS = {"sink": _cmd_sink}
