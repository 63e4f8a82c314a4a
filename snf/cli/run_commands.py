"""The pipeline commands of `snf`: kafka, validate, replay, run and worker."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from snf.cli import acls_command
from snf.cli.common import (
    add_brokers,
    add_timing,
    console,
    keyed_pipeline,
    replay_options,
    require_brokers,
)

if TYPE_CHECKING:
    from snf.ingress.replay import ReplaySummary

__all__ = ["COMMANDS", "add_parsers", "result_json"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    for add in (_add_kafka, _add_validate, _add_replay, _add_run, _add_worker):
        add(sub)


def _add_kafka(sub: argparse._SubParsersAction) -> None:
    kafka = sub.add_parser("kafka", help="run a local Apache Kafka (KRaft) cluster")
    ksub = kafka.add_subparsers(dest="kafka_command", required=True)
    up = ksub.add_parser("up", help="fetch, format and start a local cluster")
    up.add_argument("--nodes", type=int, default=1, choices=(1, 3))
    up.add_argument("--name", default="default")
    up.add_argument(
        "--secure",
        action="store_true",
        help="clients must use SASL_SSL (SCRAM-SHA-512 over TLS); writes the cluster's "
        "client config (CA, user, password; mode 0600) and prints its path",
    )
    down = ksub.add_parser("down", help="stop the cluster this tool started")
    down.add_argument("--name", default="default")
    st = ksub.add_parser("status", help="show the recorded cluster")
    st.add_argument("--name", default="default")
    st.add_argument("--json", action="store_true")
    acls_command.add_parser(ksub)


def _add_validate(sub: argparse._SubParsersAction) -> None:
    val = sub.add_parser("validate", help="check a pipeline file")
    val.add_argument("pipeline", type=Path)


def _add_replay(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("replay", help="publish a capture to a pipeline's ingress topic")
    rp.add_argument("captures", type=Path, nargs="+")
    rp.add_argument(
        "--pipeline",
        required=True,
        help="pipeline file, a deployed pipeline's name, or a name in ./pipelines/",
    )
    rp.add_argument(
        "--flush",
        action="store_true",
        help="after the capture, send an end-of-input marker (flow monitors export open "
        "flows); only once the whole capture is sent: never by a killed agent, so after a "
        "kill at the end of --resume",
    )
    rp.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed replay from its checkpoint: skip every packet Kafka "
        "acknowledged, send the rest with the same packet ids. Packets published but not "
        "acknowledged at the kill are sent again (at-least-once; same ids, so the sink's "
        "dedup by packet id removes them). Timing (-x/-p) restarts at the first packet sent",
    )
    rp.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="FILE",
        help="record acknowledged progress here (default: "
        "$SNF_HOME/replay/<pipeline>-<source id>.json)",
    )
    add_brokers(rp)
    add_timing(rp, default_top=False)


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="one-shot: run a pipeline over captures, write the result")
    run.add_argument("pipeline", type=Path)
    run.add_argument("captures", type=Path, nargs="+")
    run.add_argument("-o", "--out", type=Path, help="write passed packets to this pcapng")
    run.add_argument("--events", type=Path, help="write side ports (drops...) as JSON Lines here")
    run.add_argument(
        "--local",
        action="store_true",
        help="reference mode: one process, in-memory state, no Kafka",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="fail after this many seconds without progress at the sink",
    )
    run.add_argument("--keep", action="store_true", help="keep topics, broker and run directory")
    run.add_argument("--rundir", type=Path, help="worker logs and state (default: a temp dir)")
    run.add_argument("--json", type=Path, help="also write the run summary as JSON here")
    add_brokers(run)
    add_timing(run, default_top=True)


def _add_worker(sub: argparse._SubParsersAction) -> None:
    wk = sub.add_parser("worker", help="run one function instance (used by run/deploy)")
    wk.add_argument("pipeline", type=Path)
    wk.add_argument("function")
    wk.add_argument("--datadir", type=Path, required=True)
    wk.add_argument("--name", help="pipeline instance name (default: the file's)")
    wk.add_argument(
        "--base-dir", type=Path, help="resolve relative paths in configs here (default: the file's)"
    )
    wk.add_argument(
        "--private-topics",
        action="store_true",
        help="external topics (topic:NAME) get instance names too (one-shot runs)",
    )
    wk.add_argument("--loglevel", default="info")
    wk.add_argument(
        "--health-port",
        type=int,
        help="serve GET /livez, /readyz and /metrics on this port (probes, Prometheus)",
    )
    wk.add_argument(
        "--health-host",
        default="0.0.0.0",
        help="address of that server (default: every interface, as a pod's probes need)",
    )
    add_brokers(wk)


def _cmd_kafka(args: argparse.Namespace) -> int:
    from snf.kafka import cluster

    if args.kafka_command == "up":
        info = cluster.up(nodes=args.nodes, name=args.name, secure=args.secure)
        console.print(
            f"Kafka {cluster.KAFKA_VERSION} up: [bold]{info.bootstrap}[/] "
            f"({len(info.nodes)} node(s), data in {info.data_dir})"
        )
        if info.client_config:
            console.print(
                f"SASL_SSL only; clients: [bold]snf --kafka-config {info.client_config}[/] ..."
            )
        print(info.bootstrap)
        if info.client_config:
            print(info.client_config)
        return 0
    if args.kafka_command == "acls":
        return acls_command.run(args)
    if args.kafka_command == "down":
        stopped = cluster.down(name=args.name)
        console.print("stopped" if stopped else "nothing was running")
        return 0
    status = cluster.status(name=args.name)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    if not status.get("recorded"):
        console.print(f"no cluster {args.name!r} recorded (start one with `snf kafka up`)")
        return 0
    state = "[green]serving[/]" if status["reachable"] else "[red]not reachable[/]"
    table = Table(title=f"cluster {status['name']}: {status['bootstrap']} {state}")
    for column in ("node", "port", "controller", "pid", "alive"):
        table.add_column(column)
    table.add_column("log", overflow="fold")
    for node in status["nodes"]:
        table.add_row(
            str(node["node_id"]),
            str(node["port"]),
            str(node["controller_port"]),
            str(node["pid"]),
            "yes" if node["alive"] else "[red]no[/]",
            str(node["log_file"]),
        )
    console.print(table)
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from snf.ingress.checkpoint import (
        CheckpointSession,
        ReplayIdentity,
        default_path,
        sigterm_as_interrupt,
    )
    from snf.ingress.publisher import BatchPublisher
    from snf.ingress.replay import check_captures, replay, source_id_for
    from snf.pipeline.routing import plan_pipeline
    from snf.wire import EndMarker

    opts = replay_options(args)  # bad timing flags fail before anything is looked up
    pipeline = keyed_pipeline(args.pipeline)
    brokers = require_brokers(args.brokers)
    check_captures(args.captures)
    opts.source_id = source_id_for(args.captures)
    plan = plan_pipeline(pipeline)
    identity = ReplayIdentity.of(
        args.captures,
        source_id=opts.source_id,
        loop=opts.loop,
        limit=opts.limit,
        pipeline=pipeline.name,
        topic=pipeline.ingress_topic,
        partitions=pipeline.partitions,
        # --unique-ip changes the packets, hence where they go: a resume must agree.
        routing=plan.describe(pipeline.graph.entry) + (", --unique-ip" if opts.unique_ip else ""),
    )
    path = args.checkpoint or default_path(pipeline.name, opts.source_id)
    with sigterm_as_interrupt(), CheckpointSession(path, identity, resume=args.resume) as session:
        for note in session.notes:
            console.print(note, highlight=False)
        done = session.checkpoint
        if done.complete and (done.ended or not args.flush):
            console.print(
                f"replay already complete ({done.acked_seq + 1} packets): nothing to send"
            )
            return 0
        opts.skip = session.resume_at
        publisher = BatchPublisher(
            brokers,
            pipeline.ingress_topic,
            on_delivered=session.tracker.acked,
            session=session.end_id,  # kept by --resume: resent packets are recognised
        )
        try:
            s = replay(
                args.captures,
                pipeline.partitions,
                publisher,
                opts,
                console,
                keyers=plan.ingress_hop.keyers,
            )
            if args.flush and not s.duration_reached:
                # Named after the checkpoint's run: sent again after a kill, it counts once.
                marker = EndMarker(session.end_id, s.last_ts_ns)
                publisher.send_end_markers(marker, pipeline.partitions)
        finally:
            publisher.close()  # raises if a batch failed; the checkpoint keeps the acked prefix
        if not s.duration_reached:  # else, like a kill: the checkpoint keeps the acked prefix
            session.finish(ended=args.flush)
    resumed = f", resumed after {s.skipped} acknowledged packets" if s.skipped else ""
    console.print(
        f"sent {s.packets} packets, {s.bytes} bytes in {s.batches} batches to "
        f"{pipeline.ingress_topic} in {s.seconds:.2f}s ({_rates(s)}{resumed})"
    )
    if s.duration_reached:
        flush = "; no end-of-input marker sent" if args.flush else ""
        console.print(f"stopped by --duration{flush}: --resume sends the rest")
    return 0


def _rates(s: ReplaySummary) -> str:
    """Achieved rates, and for a timed replay its worst lateness (ReplaySummary)."""
    late = "" if s.worst_late_ms is None else f", worst lateness {s.worst_late_ms:,.1f} ms"
    return f"{s.pps:,.0f} pkt/s, {s.mbps:,.2f} Mbit/s{late}"


def _cmd_run(args: argparse.Namespace) -> int:
    from snf.harness.oneshot import RunOptions, run_pipeline, summary_table

    opts = RunOptions(
        out=args.out,
        events=args.events,
        local=args.local,
        brokers=args.brokers,
        replay=replay_options(args),
        timeout=args.timeout,
        keep=args.keep,
        rundir=args.rundir,
        loglevel="debug" if args.verbose else "info",
    )
    result = run_pipeline(args.pipeline, args.captures, opts, console)
    console.print(summary_table(result))
    s = result.replay
    if s.worst_late_ms is not None or s.duration_reached:  # timed, or cut short
        cut = ", stopped by --duration" if s.duration_reached else ""
        console.print(f"replay: {s.packets} packets in {s.seconds:.2f}s ({_rates(s)}{cut})")
    if result.collector.duplicates:
        console.print(
            f"[yellow]{result.collector.duplicates} duplicate deliveries removed by packet id[/]"
        )
    if args.json:
        args.json.write_text(json.dumps(result_json(result), indent=2) + "\n")
    return 0


def result_json(result) -> dict:
    from snf.harness.oneshot import port_counts
    from snf.pipeline.model import EGRESS

    col = result.collector
    s = result.replay
    functions = {}
    counts = port_counts(result)
    for pf in result.pipeline.functions:
        entry: dict = {"in": counts[pf.name][0], "out": counts[pf.name][1]}
        for port in pf.cls.ports:
            key = pf.terminal_key(port, pf.routes[port][0].dest)
            if port != "pass" and key is not None:
                entry[port] = dict(col.reasons(key))
        for port in pf.cls.record_ports:
            key = pf.terminal_key(port, pf.routes[port][0].dest)
            entry[port] = {"records": len(col.records.get(key, {})) if key else 0}
        functions[pf.name] = entry
    return {
        "mode": result.mode,
        "packets": result.replay.packets,
        "bytes": result.replay.bytes,
        "batches": result.replay.batches,
        "seconds": round(result.seconds, 3),
        "replay": {
            "seconds": round(s.seconds, 3),
            "pps": round(s.pps, 1),
            "mbps": round(s.mbps, 3),
            "worst_late_ms": None if s.worst_late_ms is None else round(s.worst_late_ms, 3),
            "duration_reached": s.duration_reached,
        },
        "egress": col.count(EGRESS),
        "duplicates": col.duplicates,
        "functions": functions,
    }


def _cmd_worker(args: argparse.Namespace) -> int:
    from snf.pipeline.loader import load_pipeline
    from snf.runtime.worker.app import run_worker

    pipeline = load_pipeline(args.pipeline, base_dir=args.base_dir)
    if args.name or args.private_topics:
        pipeline = pipeline.renamed(args.name or pipeline.name, private=args.private_topics)
    brokers = require_brokers(args.brokers, "pass --brokers or set SNF_BROKERS")
    run_worker(
        pipeline,
        args.function,
        brokers,
        args.datadir,
        loglevel=args.loglevel,
        health_port=args.health_port,
        health_host=args.health_host,
    )
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from snf.pipeline.loader import load_pipeline
    from snf.pipeline.routing import plan_pipeline

    p = load_pipeline(args.pipeline)
    plan = plan_pipeline(p)
    steps = " -> ".join(f"{f.name}({f.kind})" for f in p.ordered())
    console.print(f"{args.pipeline}: ok: pipeline {p.name}, {p.partitions} partitions: {steps}")
    for f in p.ordered():
        console.print(f"  {f.name}: input {plan.describe(f.name)}", highlight=False)
        for port, routes in f.routes.items():
            dests = ", ".join(f"{r.dest} ({r.topic})" if r.topic else str(r.dest) for r in routes)
            console.print(f"    {port} -> {dests}", highlight=False)
    return 0


COMMANDS = {
    "kafka": _cmd_kafka,
    "replay": _cmd_replay,
    "run": _cmd_run,
    "worker": _cmd_worker,
    "validate": _cmd_validate,
}
