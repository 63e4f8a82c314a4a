"""Benchmark: the long chaos suite, and how long a killed function takes to recover.

Runs `snf chaos` (a subprocess each: a run's workers, supervisor and sink never
share a process with the next run) on pipelines/edge.yaml over its bundled
capture looped ten times, N times, each with ONE fault:

kill          `--kill FN --at X%`, FN cycling over the pipeline's functions (fw, nat,
              lb, flows), X seeded-random in 15%..85%
kill-broker   with --broker-kills M: M more runs with `--kill-broker leader:FN --at X%
              --for 8s`, on a cluster started by `snf kafka up --nodes 3 --name NAME`
              (--cluster NAME); the pipeline then gets `replication: 3`

Recovery of a kill: the worker logs "FN: first output of partition P at T" (T is
time.time()) on the first output of each partition after an assignment. Recovery =
the earliest such T of FN logged by a pid other than the killed one, after the
kill, minus the kill's time (the chaos report's faults[0].fired_at). Every
instance's log of FN is read: with more than one instance a survivor may take the
partitions over before the restarted worker does.

Each run's directory (worker logs, supervisor state, the chaos report and output)
stays under --workdir; the RocksDB datadirs are removed once a run is parsed.

Usage: python bench/chaos_suite.py [--brokers B] [--kills 20] [--seed 1]
                                   [--cluster NAME --broker-kills M [--replication 3]]
                                   [--workdir DIR] [--quick] [--out bench/results/chaos.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from snf.kafka import cluster

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "edge.yaml"
CAPTURE = ROOT / "pipelines" / "captures" / "edge.pcapng"
LOOP = 10  # 11,100 packets at chaos's default 5,000 pkt/s: faults land mid-stream
AT_RANGE = (0.15, 0.85)  # not at the very start (still starting) nor the end
SINK_TIMEOUT = 40.0  # chaos --timeout: longer than a session timeout plus a restore
BROKER_OUTAGE = "8s"
RUN_TIMEOUT = 600.0  # a hung run is interrupted (SIGINT: it undeploys) after this long
FIRST_OUTPUT = re.compile(
    r"^\[[^\]]*\] \[(\d+)\] \[\w+\] (\S+): first output of partition (\d+) at ([\d.]+)", re.M
)


def pipeline_copy(replication: int | None, tmp: Path, warm: bool = False) -> Path:
    """edge.yaml, with `replication: N` after `partitions:` when asked, and with
    --warm two instances and one standby replica per function (comments kept)."""
    if replication is None and not warm:
        return PIPELINE
    text = PIPELINE.read_text()
    if replication is not None:
        line = re.compile(r"^(partitions: \d+\n)", re.M)
        text, n = line.subn(rf"\1replication: {replication}\n", text, count=1)
        assert n == 1, "no top-level `partitions:` line to put replication after"
    if warm:  # a survivor with a caught-up copy takes over: no restart, no restore
        fn = re.compile(r"^(    function: \w+\n)", re.M)
        text = fn.sub(r"\1    instances: 2\n    standby_replicas: 1\n", text)
    path = tmp / f"edge-r{replication}{'-warm' if warm else ''}.yaml"
    path.write_text(text)
    return path


def plan(functions: list[str], kills: int, broker_kills: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    runs = []
    for i in range(kills + broker_kills):
        kind = "kill" if i < kills else "kill-broker"
        fn = functions[i % len(functions)]
        at = round(rng.uniform(*AT_RANGE) * 100, 1)
        runs.append({"kind": kind, "function": fn, "at_pct": at, "seed": rng.randrange(2**31)})
    return runs


def chaos_args(
    run: dict[str, Any], pipeline: Path, brokers: str, cluster_name: str | None
) -> list[str]:
    fault = ["--kill", f"{run['function']}:0"]
    if run["kind"] == "kill-broker":
        fault = ["--kill-broker", f"leader:{run['function']}"]
    fault += ["--at", f"{run['at_pct']}%"]
    fault += ["--for", BROKER_OUTAGE] if run["kind"] == "kill-broker" else []
    where = ["--cluster", cluster_name] if cluster_name else []
    args = [str(pipeline), str(CAPTURE), "-l", str(LOOP), *fault, "--seed", str(run["seed"])]
    return [*args, "--brokers", brokers, *where, "--no-progress", "--timeout", str(SINK_TIMEOUT)]


def run_chaos(args: list[str], rundir: Path) -> tuple[dict[str, Any] | None, int, float]:
    """(report or None, exit code, seconds). Output and errors go to RUNDIR.out."""
    report = rundir.with_suffix(".json")
    cmd = [sys.executable, "-m", "snf", "chaos", *args, "--json", str(report)]
    cmd += ["--rundir", str(rundir)]
    t0 = time.perf_counter()
    with rundir.with_suffix(".out").open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # KeyboardInterrupt: the run undeploys
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    seconds = time.perf_counter() - t0
    return (json.loads(report.read_text()) if report.exists() else None), code, seconds


ASSIGNED = re.compile(
    r"^\[[^\]]*\] \[(\d+)\] \[\w+\] (\S+) assigned partitions \[([\d, ]*)\]", re.M
)


def killed_partitions(rundir: Path, function: str, pid: int | None) -> set[int]:
    """The partitions the killed worker owned: its last 'assigned partitions' line."""
    owned: set[int] = set()
    for log in sorted((rundir / "workers").glob(f"{function}-*.log")):
        for m in ASSIGNED.finditer(log.read_text(errors="replace")):
            if int(m[1]) == pid:
                owned = {int(p) for p in m[3].split(",") if p.strip()}
    return owned


def first_outputs(rundir: Path) -> list[tuple[str, int, int, float]]:
    """(function, pid, partition, time) of every 'first output' line of the run."""
    events = []
    for log in sorted((rundir / "workers").glob("*.log")):
        for m in FIRST_OUTPUT.finditer(log.read_text(errors="replace")):
            events.append((m[2], int(m[1]), int(m[3]), float(m[4])))
    return events


def record(run: dict[str, Any], report: dict[str, Any] | None, rundir: Path) -> dict[str, Any]:
    out: dict[str, Any] = dict(run)
    if report is None:
        return out | {"error": f"no chaos report; see {rundir.with_suffix('.out')}"}
    verdict = report["verdict"]
    fault = report["faults"][0]
    out |= {
        "packets": report["packets"],
        "clean": verdict["clean"] and report["run_error"] is None,
        "verdict_clean": verdict["clean"],
        "totals": verdict["totals"],
        "redelivered": verdict.get("redelivered"),
        "fault": fault,
        "restarts": report["restarts"],
        "run_error": report["run_error"],
    }
    fired = fault.get("fired_at")
    after = [e for e in first_outputs(rundir) if fired is not None and e[3] > fired]
    if run["kind"] == "kill":  # the killed function's takeover by another process
        after = [e for e in after if e[0] == run["function"] and e[1] != fault.get("pid")]
    firsts: dict[str, dict[int, float]] = {}
    for fn, _pid, part, t in sorted(after, key=lambda e: e[3]):
        firsts.setdefault(fn, {}).setdefault(part, round(t - fired, 3))
    out["first_output_after_fault_s"] = firsts  # function -> partition -> seconds
    mine = firsts.get(run["function"], {})
    if run["kind"] == "kill":
        # The killed worker's partitions only: with several instances, a survivor
        # also logs first outputs of partitions it never lost (after any rebalance).
        owned = killed_partitions(rundir, run["function"], fault.get("pid"))
        mine = {p: t for p, t in mine.items() if p in owned} if owned else mine
        out["killed_partitions"] = sorted(owned)
    # recovery: every partition of the killed worker producing again; first: the earliest
    out["recovery_s"] = max(mine.values()) if run["kind"] == "kill" and mine else None
    out["recovery_first_s"] = min(mine.values()) if run["kind"] == "kill" and mine else None
    return out


def summarize(records: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    runs = [r for r in records if r["kind"] == kind]
    totals: dict[str, int] = {}
    for r in runs:
        for k, v in (r.get("totals") or {}).items():
            totals[k] = totals.get(k, 0) + v
    out: dict[str, Any] = {
        "runs": len(runs),
        "clean": sum(bool(r.get("clean")) for r in runs),
        "fault_not_fired": sum(not (r.get("fault") or {}).get("fired_at") for r in runs),
        "totals": totals,
        "redelivered": sum(r.get("redelivered") or 0 for r in runs),
    }
    timed = [r for r in runs if r.get("recovery_s") is not None]
    rec = [r["recovery_s"] for r in timed]
    if kind == "kill" and rec:
        firsts = [r["recovery_first_s"] for r in timed]
        out["recovery_first_s"] = {
            k: round(float(v), 3)
            for k, v in zip(("p50", "p90", "p99"), np.percentile(firsts, [50, 90, 99]), strict=True)
        } | {"min": min(firsts), "max": max(firsts)}
        p50, p90, p99 = np.percentile(rec, [50, 90, 99])
        out["recovery_s"] = {
            "samples": len(rec),
            "min": min(rec),
            "p50": round(float(p50), 3),
            "p90": round(float(p90), 3),
            "p99": round(float(p99), 3),
            "max": max(rec),
            "by_function_p50": {
                fn: round(
                    float(np.median([r["recovery_s"] for r in timed if r["function"] == fn])), 3
                )
                for fn in sorted({r["function"] for r in timed})
            },
            "note": f"numpy linear-interpolated percentiles of {len(rec)} samples: below "
            "~100 samples p99 lies between the two largest, i.e. it is about the max",
        }
    return out


def settings() -> dict[str, Any]:
    """What shapes recovery, read from the code the workers run."""
    from snf.ops.supervisor import Timings
    from snf.pipeline.loader import load_pipeline
    from snf.runtime.worker.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="snf-bench-chaos-conf-"))
    try:
        conf = create_app(load_pipeline(PIPELINE), "fw", "127.0.0.1:9", tmp).conf
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t = Timings()
    return {
        "session_timeout_s": conf.broker_session_timeout,  # faust_app.create_app
        "heartbeat_interval_s": conf.broker_heartbeat_interval,
        "commit_interval_s": conf.broker_commit_interval,
        "rebalance_timeout_s": conf.broker_rebalance_timeout,
        "supervisor_interval_s": t.interval,  # snf.ops.supervisor.Timings
        "restart_backoff_first_s": t.backoff_base,
        "capture": f"{CAPTURE.relative_to(ROOT)} x{LOOP}",
        "replay": "snf chaos default: 5000 pkt/s",
        "sink_timeout_s": SINK_TIMEOUT,
        "broker_outage": BROKER_OUTAGE,
    }


def machine() -> dict[str, Any]:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "repo_head": head,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def show(console: Console, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    table = Table(title="chaos suite: one fault per run")
    for name in ("#", "fault", "at", "clean", "lost", "dup", "reord", "diverg", "recovery"):
        table.add_column(name, justify="left" if name == "fault" else "right")
    for i, r in enumerate(records, 1):
        t = r.get("totals") or {}
        rec = r.get("recovery_s")
        table.add_row(
            str(i),
            f"{r['kind']} {r['function']}",
            f"{r['at_pct']}%",
            "[green]yes[/]" if r.get("clean") else "[red]no[/]",
            *(str(t.get(k, "-")) for k in ("lost", "duplicated", "reordered", "divergent")),
            f"{rec:.2f}s" if rec is not None else "-",
        )
    console.print(table)
    for kind, s in summary.items():
        console.print(f"{kind}: {s['clean']}/{s['runs']} clean; totals {s['totals']}")
        if "recovery_s" in s:
            r = s["recovery_s"]
            console.print(
                f"recovery after kill -9 (s): min {r['min']:.2f}  p50 {r['p50']:.2f}  "
                f"p90 {r['p90']:.2f}  p99 {r['p99']:.2f}  max {r['max']:.2f}  "
                f"(n={r['samples']}; p99 ~ max at this n)"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default=None)
    ap.add_argument("--kills", type=int, default=20, help="runs with one kill -9 each")
    ap.add_argument("--broker-kills", type=int, default=0, help="runs with one broker kill")
    ap.add_argument("--cluster", default=None, help="`snf kafka up --name` (broker kills)")
    ap.add_argument("--replication", type=int, default=None, help="default 3 with broker kills")
    ap.add_argument(
        "--warm", action="store_true", help="2 instances + 1 standby per function; kill :0"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None, help="run dirs (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 kills")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chaos.json")
    ap.add_argument(
        "--reparse", action="store_true", help="recompute --out from its run logs (no runs)"
    )
    args = ap.parse_args()
    if args.reparse:
        reparse(args.out)
        return
    if args.quick:
        args.kills, args.broker_kills = 2, min(args.broker_kills, 1)
    if args.broker_kills and not args.cluster:
        ap.error("--broker-kills needs --cluster NAME (`snf kafka up --nodes 3 --name NAME`)")
    replication = args.replication or (3 if args.broker_kills else None)
    if args.cluster:
        info = cluster.recorded(args.cluster)
        if info is None:
            ap.error(f"no cluster {args.cluster!r} recorded by `snf kafka up`")
        brokers = args.brokers or info.bootstrap
    else:
        brokers = cluster.resolve_brokers(args.brokers) or cluster.up().bootstrap
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="snf-bench-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    pipeline = pipeline_copy(replication, workdir, args.warm)
    functions = [f["name"] for f in yaml.safe_load(PIPELINE.read_text())["functions"]]
    runs = plan(functions, args.kills, args.broker_kills, args.seed)
    report: dict[str, Any] = {
        "benchmark": "snf chaos, one fault per run: verdicts and recovery time",
        "machine": machine(),
        "brokers": brokers,
        "cluster": args.cluster,
        "replication": replication,
        "warm": args.warm,
        "seed": args.seed,
        "workdir": str(workdir),
        "settings": settings(),
        "runs": [],
    }
    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    started = time.perf_counter()
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("chaos", total=len(runs))
        for i, run in enumerate(runs, 1):
            progress.update(task, description=f"{run['kind']} {run['function']} {run['at_pct']}%")
            rundir = workdir / f"run-{i:02d}"
            got, code, seconds = run_chaos(chaos_args(run, pipeline, brokers, args.cluster), rundir)
            row = record(run, got, rundir) | {"exit_code": code, "seconds": round(seconds, 1)}
            report["runs"].append(row)
            for d in (rundir / "workers").glob("*"):  # RocksDB datadirs: logs are enough
                if d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)
            rec = row.get("recovery_s")
            progress.console.print(
                f"{i:>2} {run['kind']} {run['function']} at {run['at_pct']}%: "
                f"{'clean' if row.get('clean') else 'NOT CLEAN'}"
                + (f", recovered in {rec:.2f}s" if rec is not None else "")
                + (f" [red]{row['error']}[/]" if "error" in row else ""),
                highlight=False,
            )
            progress.advance(task)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive
    kinds = [k for k in ("kill", "kill-broker") if any(r["kind"] == k for r in runs)]
    report["summary"] = {k: summarize(report["runs"], k) for k in kinds}
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round(time.perf_counter() - started)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    show(console, report["runs"], report["summary"])
    console.print(f"wrote {args.out}; run logs in {workdir}")


def reparse(out: Path) -> None:
    """Recompute the records and summary of a finished run from its kept logs."""
    report = json.loads(out.read_text())
    workdir = Path(report["workdir"])
    for i, row in enumerate(report["runs"], 1):
        rundir = workdir / f"run-{i:02d}"
        got = json.loads(rundir.with_suffix(".json").read_text())
        keep = {k: row[k] for k in ("exit_code", "seconds") if k in row}
        run = {k: row[k] for k in ("kind", "function", "at_pct", "seed")}
        report["runs"][i - 1] = record(run, got, rundir) | keep
    kinds = [k for k in ("kill", "kill-broker") if any(r["kind"] == k for r in report["runs"])]
    report["summary"] = {k: summarize(report["runs"], k) for k in kinds}
    out.write_text(json.dumps(report, indent=2) + "\n")
    show(Console(stderr=True), report["runs"], report["summary"])


if __name__ == "__main__":
    main()
