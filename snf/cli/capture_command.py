"""`snf capture`: the live capture agent (snf.ingress.live) on the command line."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from snf.cli.common import add_brokers, console, keyed_pipeline, require_brokers
from snf.errors import ConfigError
from snf.signals import stop_on_signals

__all__ = ["COMMANDS", "add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    cp = sub.add_parser("capture", help="capture from interfaces into a pipeline's ingress topic")
    cp.add_argument(
        "--pipeline",
        required=True,
        help="pipeline file, a deployed pipeline's name, or a name in ./pipelines/",
    )
    cp.add_argument(
        "-i",
        "--interface",
        action="append",
        metavar="IF",
        help="capture here (repeat for more); default: the pipeline's `egress.inline` arms",
    )
    cp.add_argument("--bpf", metavar="FILTER", help="a tcpdump filter expression")
    cp.add_argument("-s", "--snaplen", type=int, default=65535, help="bytes kept per packet")
    cp.add_argument("--promisc", action="store_true", help="put the interfaces in promiscuous mode")
    cp.add_argument(
        "--linger-ms",
        type=int,
        default=20,
        help="under load, partial batches go at most once per this, per interface; a"
        " quiet link's packets go at once (default 20)",
    )
    cp.add_argument("--duration", type=float, help="stop after this many seconds")
    cp.add_argument("-L", "--limit", type=int, help="stop after this many packets")
    cp.add_argument("--json", type=Path, help="also write the summary as JSON here")
    cp.add_argument("--no-progress", action="store_true")
    add_brokers(cp)


def _cmd_capture(args: argparse.Namespace) -> int:
    from snf.ingress.live import CaptureOptions, capture
    from snf.ingress.publisher import BatchPublisher
    from snf.pipeline.routing import plan_pipeline

    pipeline = keyed_pipeline(args.pipeline)
    brokers = require_brokers(args.brokers)
    egress = pipeline.spec.egress
    inline = list(egress.inline) if egress is not None and egress.inline else []
    interfaces = args.interface or inline
    if not interfaces:
        raise ConfigError(
            "snf capture: no interface: give --interface, or `egress: {inline: [A, B]}` "
            f"in {pipeline.path or pipeline.name}"
        )
    if not 1 <= args.snaplen <= 262144:
        raise ConfigError(f"--snaplen: expected 1..262144, got {args.snaplen}")
    opts = CaptureOptions(
        interfaces=list(dict.fromkeys(interfaces)),
        arms={name: i for i, name in enumerate(inline)},
        bpf=args.bpf,
        snaplen=args.snaplen,
        promisc=args.promisc,
        linger_ms=args.linger_ms,
        duration=args.duration,
        limit=args.limit,
    )
    publishers: list[BatchPublisher] = []

    def publisher(interface: str, source_id: int) -> BatchPublisher:
        session = f"live-{source_id:x}"  # its own lineage origin per interface
        # No producer linger: a live batch is cut already (--linger-ms), and any
        # wait here is latency on the wire.
        made = BatchPublisher(brokers, pipeline.ingress_topic, session=session, linger_ms=0)
        publishers.append(made)
        return made

    stop = threading.Event()
    console.print(f"capturing on {', '.join(opts.interfaces)} into {pipeline.name}; Ctrl-C to stop")
    keyers = plan_pipeline(pipeline).ingress_hop.keyers
    try:
        with stop_on_signals(stop), _progress(args.no_progress) as on_progress:
            summary = capture(pipeline.partitions, publisher, opts, keyers, stop, on_progress)
    finally:
        for p in publishers:
            p.close()  # delivers everything; raises PublishError if a batch failed
    return _report(summary, args.json)


@contextmanager
def _progress(disable: bool) -> Iterator[Callable[[Any], None]]:
    """A live line: packets captured, kernel drops so far, time elapsed."""
    bar = Progress(
        SpinnerColumn(),
        TextColumn("capture {task.fields[pkts]:,} packets, {task.fields[batches]:,} batches"),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
    )
    with bar:
        task = bar.add_task("capture", total=None, pkts=0, batches=0)
        yield lambda s: bar.update(task, pkts=s.packets, batches=s.batches)


def _report(summary: Any, out: Path | None) -> int:
    lines = {
        name: {
            "captured": c.captured,
            "bytes": c.bytes,
            "kernel_received": c.received,
            "kernel_dropped": c.kernel_dropped,
            "source_id": c.source_id,
        }
        for name, c in summary.interfaces.items()
    }
    for name, c in lines.items():
        console.print(
            f"{name}: captured {c['captured']:,} packets ({c['bytes']:,} bytes), "
            f"kernel dropped {c['kernel_dropped']:,}",
            highlight=False,
        )
    if out is not None:
        body = {"packets": summary.packets, "seconds": round(summary.seconds, 3)}
        out.write_text(json.dumps(body | {"interfaces": lines}, indent=2) + "\n")
    return 0


COMMANDS = {"capture": _cmd_capture}
