"""The deployment commands of `snf`: plan, deploy, scale, status, undeploy, logs,
supervise, chaos and render (sink: snf.cli.sink_command). snf.cli.main registers
them; the work is in snf.ops.deploy."""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import time
from pathlib import Path

from rich.table import Table

from snf.cli.common import (
    add_brokers,
    add_timing,
    console,
    replay_options,
    require_brokers,
)
from snf.errors import SnfError

__all__ = ["COMMANDS", "add_parsers"]


def _deployment_dir(ref: str) -> Path:
    from snf.ops import deployment_dir as dp
    from snf.pipeline.loader import load_pipeline

    d = dp.directory(ref)
    if not (d / dp.DEPLOYMENT_FILE).exists() and Path(ref).exists():
        d = dp.directory(load_pipeline(ref).name)  # a file: its pipeline's name
    if not (d / dp.DEPLOYMENT_FILE).exists():
        from snf.ops.status import list_deployments

        known = ", ".join(list_deployments()) or "none"
        raise SnfError(f"no deployed pipeline {ref!r} (deployed: {known})")
    return d


def add_parsers(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser("plan", help="show what deploying a pipeline would change (read-only)")
    pl.add_argument("pipeline", type=Path)
    pl.add_argument("--json", action="store_true")
    pl.add_argument("--apply-topics", action="store_true", help="create the missing topics only")
    add_brokers(pl)

    dp_ = sub.add_parser("deploy", help="create topics and run the functions under a supervisor")
    dp_.add_argument("pipeline", type=Path)
    dp_.add_argument("--autoscale", action="store_true", help="scale on consumer lag (min..max)")
    dp_.add_argument("--timeout", type=float, default=120.0, help="wait this long for readiness")
    add_brokers(dp_)

    sc = sub.add_parser("scale", help="change a deployed function's instance count")
    sc.add_argument("pipeline")
    sc.add_argument("function")
    sc.add_argument("instances", type=int)
    sc.add_argument("--no-wait", action="store_true")

    st = sub.add_parser("status", help="instances, partitions, lag and rates of deployments")
    st.add_argument("pipeline", nargs="?")
    st.add_argument("--json", action="store_true")

    ud = sub.add_parser("undeploy", help="stop a deployed pipeline's workers")
    ud.add_argument("pipeline")
    ud.add_argument("--delete-topics", action="store_true", help="also delete its topics")

    lg = sub.add_parser("logs", help="show a deployed function's logs")
    lg.add_argument("pipeline")
    lg.add_argument("function", nargs="?", help="default: the supervisor's log")
    lg.add_argument("-n", "--lines", type=int, default=40)
    lg.add_argument("-f", "--follow", action="store_true")

    sv = sub.add_parser("supervise", help="(internal) run a deployment's supervisor")
    sv.add_argument("directory", type=Path)

    sm = sub.add_parser("schema", help="print the JSON Schema of pipeline files")
    sm.add_argument("--out", type=Path, help="write it here instead")
    sm.add_argument(
        "--builtin", action="store_true", help="built-in function types only (the shipped file)"
    )

    _add_chaos_parser(sub)

    rd = sub.add_parser("render", help="write manifests for other platforms")
    rsub = rd.add_subparsers(dest="render_target", required=True)
    k8s = rsub.add_parser("k8s", help="Kubernetes: Deployments, ConfigMap, Job, KEDA")
    k8s.add_argument("pipeline", type=Path)
    k8s.add_argument("--out", type=Path, help="one file per object here (default: stdout)")
    k8s.add_argument("--image", default=None)
    k8s.add_argument("--namespace", default=None)
    k8s.add_argument("--brokers", default="kafka:9092", help="as the pods reach Kafka")


def _add_chaos_parser(sub: argparse._SubParsersAction) -> None:
    ch = sub.add_parser(
        "chaos",
        help="run a pipeline over Kafka, inject faults mid-stream, compare with --local",
        description="Runs like `snf run`, kills or stops workers (or kills a broker) once a "
        "share of the capture is published, then compares every terminal with the --local "
        "reference. Exit 0 only "
        "when nothing is lost, extra, duplicated (at the sink, before dedup), reordered or "
        "divergent; 1 otherwise. Replays at -p 5000 unless -t, -x or -p says otherwise.",
    )
    ch.add_argument("pipeline", type=Path, help="a pipeline file, or a deployed pipeline's name")
    ch.add_argument(
        "captures",
        type=Path,
        nargs="*",
        help="replayed and compared with --local; none: kill the deployed pipeline's "
        "workers in turn (--kill FN [--at 10s], live traffic: docs/LIVE.md)",
    )
    g = ch.add_argument_group("faults (--at and --for apply to the --kill or --stop before them)")
    for flag, meta, what in (
        ("kill", "FUNCTION[:INSTANCE]", "SIGKILL the instance's worker (default: seeded pick)"),
        ("stop", "FUNCTION[:INSTANCE]", "SIGSTOP the worker, SIGCONT it --for later"),
        (
            "kill-broker",
            "NODE|leader:FUNCTION",
            "SIGKILL a broker of the cluster `snf kafka up` started (--cluster), or the "
            "leader of partition 0 of the function's input; restarted --for later if given",
        ),
        ("at", "SHARE", "when that share of the capture is published, e.g. 40%%"),
        ("for", "DURATION", "how long a --stop (or a broker's outage) lasts, e.g. 15s"),
    ):
        tag = functools.partial(lambda t, v: (t, v), flag)  # keeps the flags' order
        g.add_argument(
            f"--{flag}", dest="faults", action="append", type=tag, metavar=meta, help=what
        )
    ch.add_argument("--seed", type=int, help="picks instances left open (default: random, shown)")
    ch.add_argument(
        "--cluster", default="default", help="for --kill-broker: the `snf kafka up --name`"
    )
    ch.add_argument("--json", type=Path, help="also write the report (JSON) here")
    ch.add_argument("--timeout", type=float, default=60.0, help="sink: fail after this long idle")
    ch.add_argument("--keep", action="store_true", help="keep topics and the run directory")
    ch.add_argument("--rundir", type=Path, help="worker logs and state (default: a temp dir)")
    add_brokers(ch)
    add_timing(ch, default_top=False)  # default -p 5000 (_cmd_chaos): faults land mid-stream


def _plan_table(p) -> Table:
    rf = f"replication {p.pipeline.spec.replication}" + (
        " (the cluster's default)" if p.cluster_replication else ""
    )
    table = Table(title=f"plan: {p.pipeline.name} on {p.brokers}, {rf}")
    table.add_column("topic", overflow="fold")
    for col in ("kind", "parts", "rf", "cleanup", "min isr"):
        table.add_column(col, justify="right" if col in ("parts", "rf", "min isr") else "left")
    table.add_column("action", overflow="fold")
    colors = {"create": "green", "ok": "dim", "differs": "yellow"}
    order = {"ingress": 0, "input": 1, "terminal": 2, "changelog": 3}
    for t in sorted(p.topics, key=lambda t: (order[t.kind], t.topic)):
        action = t.action if not t.differences else f"{t.action}: {', '.join(t.differences)}"
        if t.refused:
            action += " [red](refused)[/]"
        table.add_row(
            t.topic,
            t.kind,
            str(t.want.partitions),
            str(t.want.replication),
            t.want.configs.get("cleanup.policy", "delete"),
            t.want.configs.get("min.insync.replicas", "1"),
            f"[{colors[t.action]}]{action}[/]",
        )
    return table


def _cmd_plan(args: argparse.Namespace) -> int:
    from snf.ops.deploy import apply_topics, plan
    from snf.pipeline.loader import load_pipeline

    p = plan(load_pipeline(args.pipeline), require_brokers(args.brokers))
    if args.json:
        print(json.dumps(p.to_json(), indent=2))
    else:
        console.print(_plan_table(p))
        groups = Table(title="consumer groups")
        for col in ("group", "function", "state"):
            groups.add_column(col)
        for g in p.groups:
            groups.add_row(g.group, g.function, g.state or ("exists" if g.exists else "new"))
        console.print(groups)
    if args.apply_topics:
        created = apply_topics(p)
        console.print(f"created {len(created)} topic(s)")
    return 1 if p.refused and not args.json else 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from snf.ops.deploy import deploy

    brokers = require_brokers(args.brokers)
    started = time.monotonic()
    with console.status(f"deploying {args.pipeline} to {brokers}"):
        dep, _, created = deploy(
            args.pipeline, brokers, autoscale=args.autoscale, wait=args.timeout
        )
    n = sum(f.instances for f in dep.functions.values())
    console.print(
        f"deployed [bold]{dep.pipeline}[/] (generation {dep.generation}) on {brokers}: "
        f"{len(created)} topic(s) created, {n} instance(s) ready in "
        f"{time.monotonic() - started:.1f}s; `snf status {dep.pipeline}`"
    )
    return 0


def _cmd_scale(args: argparse.Namespace) -> int:
    from snf.ops.deploy import scale

    d = _deployment_dir(args.pipeline)
    with console.status(f"scaling {args.function} to {args.instances}"):
        scale(d, args.function, args.instances, wait=None if args.no_wait else 120.0)
    console.print(f"{args.function}: {args.instances} instance(s)")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from snf.ops.status import deployment_status, list_deployments, status_tables

    refs = [args.pipeline] if args.pipeline else list_deployments()
    statuses = [deployment_status(_deployment_dir(r)) for r in refs]
    if args.json:
        print(json.dumps(statuses[0] if args.pipeline else statuses, indent=2))
        return 0
    if not statuses:
        console.print("no deployed pipelines (snf deploy PIPELINE)")
    for s in statuses:
        for table in status_tables(s):
            console.print(table)
    return 0


def _cmd_undeploy(args: argparse.Namespace) -> int:
    from snf.ops.deploy import undeploy

    d = _deployment_dir(args.pipeline)
    deleted = undeploy(d, delete_topics=args.delete_topics)
    extra = f", deleted {len(deleted)} topic(s)" if args.delete_topics else " (topics kept)"
    console.print(f"undeployed {args.pipeline}{extra}")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from snf.ops import deployment_dir as dp

    d = _deployment_dir(args.pipeline)
    if args.function:
        logs = sorted(dp.workers_dir(d).glob(f"{args.function}-*.log"))
        if not logs:
            raise SnfError(f"no logs for {args.function!r} in {dp.workers_dir(d)}")
    else:
        logs = [d / dp.LOG_FILE]
    cmd = ["tail", "-n", str(args.lines), *(["-F"] if args.follow else []), *map(str, logs)]
    return subprocess.call(cmd)


def _cmd_chaos(args: argparse.Namespace) -> int:
    from snf.harness.chaos import DEFAULT_PPS, parse_faults, run_chaos
    from snf.harness.oneshot import RunOptions

    if not args.captures:
        return _chaos_deployed(args)
    faults = parse_faults(args.faults or [])
    if args.pps is None and args.speed is None and args.mbps is None and not args.topspeed:
        args.pps = DEFAULT_PPS
    opts = RunOptions(brokers=args.brokers, replay=replay_options(args), timeout=args.timeout)
    opts.keep, opts.rundir = args.keep, args.rundir
    report = run_chaos(
        args.pipeline, args.captures, faults, opts, console, args.seed, cluster_name=args.cluster
    )
    for line in report.lines():
        console.print(line, highlight=False)
    if report.run_error:
        console.print(f"[red]run: {report.run_error}[/]", highlight=False)
    console.print(report.verdict.table(f"{report.pipeline} under chaos vs --local"))
    text = json.dumps(report.to_json(), indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if report.verdict.clean and report.run_error is None else 1


def _chaos_deployed(args: argparse.Namespace) -> int:
    import random

    from snf.ops.deployed_chaos import kill_in_turn, parse_deployed_kills

    kills = parse_deployed_kills(args.faults or [])
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    console.print(f"chaos on deployed {args.pipeline} (seed {seed})")
    done = kill_in_turn(_deployment_dir(str(args.pipeline)), kills, seed, console.print)
    text = json.dumps({"seed": seed, "kills": [k.to_json() for k in done]}, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


def _cmd_supervise(args: argparse.Namespace) -> int:
    from snf.ops.supervisor import supervise

    return supervise(args.directory)


def _cmd_schema(args: argparse.Namespace) -> int:
    from snf.pipeline.schema import builtin_types, pipeline_schema, schema_json, write_schema

    types = builtin_types() if args.builtin else None  # None: plugins too
    if args.out:
        write_schema(args.out, types)
        console.print(f"wrote {args.out}")
    else:
        print(schema_json(pipeline_schema(types)), end="")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from snf.kafka.security import current
    from snf.ops import k8s
    from snf.pipeline.loader import load_pipeline

    pipeline = load_pipeline(args.pipeline)
    objs = k8s.render_k8s(
        pipeline,
        image=args.image or k8s.DEFAULT_IMAGE,
        namespace=args.namespace or k8s.DEFAULT_NAMESPACE,
        brokers=args.brokers,
        pipeline_text=args.pipeline.read_text(),
        kafka=current(),  # --kafka-config: the pods read theirs from a Secret
    )
    written = k8s.write_manifests(objs, args.out)
    if isinstance(written, str):
        print(written, end="")
    else:
        console.print(f"wrote {len(written)} manifest(s) to {args.out}")
    return 0


COMMANDS = {
    "plan": _cmd_plan,
    "deploy": _cmd_deploy,
    "scale": _cmd_scale,
    "status": _cmd_status,
    "undeploy": _cmd_undeploy,
    "logs": _cmd_logs,
    "supervise": _cmd_supervise,
    "chaos": _cmd_chaos,
    "render": _cmd_render,
    "schema": _cmd_schema,
}
