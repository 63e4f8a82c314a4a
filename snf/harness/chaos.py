"""`snf chaos`: run a pipeline like `snf run`, inject faults mid-stream, judge the output.

Faults fire once a share of the capture is published (RunOptions.on_published), on the
worker pid the run's supervisor.json names then: `kill` is SIGKILL (the supervisor
restarts it), `stop` SIGSTOP, then SIGCONT a while later (a zombie that wakes up). The
sink's output is judged against the --local reference of the same input (snf.harness.verdict).
"""

from __future__ import annotations

import math
import os
import random
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from snf.errors import ConfigError
from snf.harness.oneshot import RunError, RunOptions, run_pipeline
from snf.harness.verdict import SinkRecorder, Verdict, compare
from snf.ingress.replay import check_captures, replay
from snf.kafka import admin, cluster
from snf.ops import deployment_dir as dp
from snf.ops.deployed_chaos import duration_seconds
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import Pipeline
from snf.runtime.local import LocalPipeline

__all__ = ["DEFAULT_PPS", "ChaosReport", "Fault", "parse_faults", "run_chaos"]

DEFAULT_PPS = 5000.0  # not top speed: a fault must land while packets still flow


@dataclass
class Fault:
    kind: str  # kill | stop | kill-broker
    function: str  # kill-broker: "" for a node id, else whose input's leader to kill
    instance: int | None  # None: chosen with the seed; kill-broker: the node id
    at: float | None = None  # fraction of the capture's packets published
    duration: float = 0.0  # stop: seconds until SIGCONT; kill-broker: until its restart
    due: int = 0  # packets published when it is due (from `at` and the capture)
    sent: int | None = None  # packets published when it fired
    pid: int | None = None
    fired_at: float | None = None  # wall clock
    continued_at: float | None = None  # stop: SIGCONT sent
    observed: str = ""  # the process state seen after the signal: killed | stopped
    error: str = ""


_SHARE = re.compile(r"(\d+(?:\.\d*)?)(%?)")


def _value(flag: str, text: str) -> float:
    """--at "40%" or "0.4" -> 0.4; --for "15s", "500ms", "2m" or "15" -> seconds."""
    if flag == "at":
        m = _SHARE.fullmatch(text.strip())
        value = float(m[1]) * (0.01 if m[2] else 1.0) if m else -1.0
    else:
        found = duration_seconds(text)
        value = -1.0 if found is None else found
    if not (0 <= value <= 1 if flag == "at" else value > 0):
        want = "a share of the capture, 0% to 100%" if flag == "at" else "a duration such as 15s"
        raise ConfigError(f"--{flag} {text}: expected {want}")
    return value


def parse_faults(items: Sequence[tuple[str, str]]) -> list[Fault]:
    """(flag, value) in command-line order: --kill/--stop open a fault, and the
    --at/--for that follow belong to it."""
    faults: list[Fault] = []
    for flag, value in items:
        if flag == "kill-broker":
            what, _, fn = value.partition(":")
            if not (value.isdigit() or (what == "leader" and fn)):
                raise ConfigError(f"--kill-broker {value}: expected a node id or leader:FUNCTION")
            faults.append(Fault(flag, fn, int(value) if value.isdigit() else None))
        elif flag in ("kill", "stop"):
            function, _, inst = value.partition(":")
            if not function or (inst and not inst.isdigit()):
                raise ConfigError(f"--{flag} {value}: expected FUNCTION or FUNCTION:INSTANCE")
            faults.append(Fault(flag, function, int(inst) if inst else None))
        elif not faults or (flag == "for" and faults[-1].kind == "kill"):
            raise ConfigError(f"--{flag} {value} must follow a --{'stop' if faults else 'kill'}")
        elif flag == "at":
            faults[-1].at = _value(flag, value)
        else:
            faults[-1].duration = _value(flag, value)
    for f in faults:
        if f.at is None or (f.kind == "stop" and not f.duration):
            raise ConfigError(f"--{f.kind} {f.function}: say when (--at 40%), a stop how long too")
    if not faults:
        raise ConfigError("no fault to inject: give --kill FUNCTION --at 40% (or --stop)")
    return faults


def _proc_state(pid: int) -> str:  # the kernel's letter: R, S, T (stopped), Z...; "" when gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""


class Injector:
    """Fires the faults as packets are published; called by the replay (on_published)."""

    def __init__(
        self, rundir: Path, faults: list[Fault], total: int, brokers: Brokers | None = None
    ) -> None:
        self.rundir, self.total, self.brokers = rundir, total, brokers
        self.pending = sorted(faults, key=lambda f: f.due)
        self.timers: list[tuple[threading.Timer, Fault]] = []

    def __call__(self, sent: int) -> None:
        # A fault whose instance is down (restarting after an earlier kill) waits for
        # its successor: until a later batch, or at the last one up to 30 s.
        deadline = time.monotonic() + 30.0
        while self.pending and self.pending[0].due <= sent:
            fault = self.pending[0]
            if fault.kind == "kill-broker":
                self.pending.pop(0)
                self._kill_broker(fault, sent)
                continue
            pid = self._pid(fault)
            if pid is None and sent < self.total:
                return
            if pid is None and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            self.pending.pop(0)
            if pid is None:
                fault.error = "its instance was not running when the fault was due"
            else:
                self._fire(fault, pid, sent)

    def _pid(self, fault: Fault) -> int | None:
        """The running worker of the fault's instance (its cmdline checked: pids get reused)."""
        fn = ((dp.read_state(self.rundir) or {}).get("functions") or {}).get(fault.function)
        insts = [i for i in (fn or {}).get("instances", []) if i["instance"] == fault.instance]
        pid = insts[0].get("pid") if insts and insts[0].get("state") == "running" else None
        marker = f"{dp.workers_dir(self.rundir)}/".encode()
        try:
            ours = marker in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # gone meanwhile, or no pid
            return None
        return int(pid) if ours and pid and _proc_state(pid) not in ("", "Z") else None

    def _fire(self, fault: Fault, pid: int, sent: int) -> None:
        fault.pid, fault.sent, fault.fired_at = pid, sent, time.time()
        os.kill(pid, signal.SIGKILL if fault.kind == "kill" else signal.SIGSTOP)
        if fault.kind == "stop":  # close() cancels what is left: no thread outlives the run
            self.timers.append((threading.Timer(fault.duration, self._resume, (fault,)), fault))
            self.timers[-1][0].start()
        want = ("", "Z") if fault.kind == "kill" else ("T",)
        deadline = time.monotonic() + 2.0
        while _proc_state(pid) not in want and time.monotonic() < deadline:
            time.sleep(0.01)
        if _proc_state(pid) in want:  # seen by the kernel, not just sent
            fault.observed = "killed" if fault.kind == "kill" else "stopped"

    def _kill_broker(self, fault: Fault, sent: int) -> None:
        brokers = self.brokers
        if brokers is None:
            fault.error = "broker faults need a cluster started by `snf kafka up`"
            return
        if fault.instance is None:  # leader:FUNCTION, looked up now
            run = dp.load(self.rundir)  # the run's private name names its topics
            topic = brokers.input_topic(run.pipeline, fault.function)
            fault.instance = brokers.leader(topic)
        fault.sent, fault.fired_at = sent, time.time()
        fault.pid = brokers.info.node(fault.instance).pid
        if not cluster.kill_node(brokers.info, fault.instance):
            fault.error = f"broker {fault.instance} was not running"
            return
        deadline = time.monotonic() + 2.0
        while _proc_state(fault.pid) not in ("", "Z") and time.monotonic() < deadline:
            time.sleep(0.01)
        fault.observed = "killed" if _proc_state(fault.pid) in ("", "Z") else ""
        if fault.duration:
            timer = threading.Timer(fault.duration, self._restart_broker, (fault,))
            self.timers.append((timer, fault))
            timer.start()

    def _restart_broker(self, fault: Fault) -> None:
        if fault.continued_at is None and self.brokers is not None and fault.instance is not None:
            fault.continued_at = time.time()
            try:
                cluster.start_node(self.brokers.info, fault.instance)
            except Exception as exc:  # reported in the verdict's fault list
                fault.error = f"restart failed: {exc}"

    def _resume(self, fault: Fault) -> None:
        if fault.kind == "kill-broker":
            self._restart_broker(fault)
            return
        if fault.continued_at is None and fault.pid is not None:
            fault.continued_at = time.time()
            try:
                os.kill(fault.pid, signal.SIGCONT)
            except OSError as exc:
                fault.error = f"SIGCONT failed: {exc}"

    def close(self) -> None:
        """Never leave a worker stopped: resume those whose timer has not fired yet."""
        for timer, fault in self.timers:
            timer.cancel()
            self._resume(fault)
        for fault in self.pending:
            fault.error = fault.error or "never due: the replay ended first"


@dataclass
class Brokers:
    """The cluster a broker fault hits: one `snf kafka up` started (its pids are known)."""

    info: cluster.ClusterInfo
    bootstrap: str
    pipeline: Pipeline

    def input_topic(self, run_name: str, function: str) -> str:
        return self.pipeline.renamed(run_name, private=True).function(function).input_topic

    def leader(self, topic: str) -> int:
        """The node leading partition 0 of `topic`."""
        with admin.admin_client(self.bootstrap) as client:
            (described,) = client.describe_topics([topic])
        parts = {p["partition_index"]: p["leader_id"] for p in described["partitions"]}
        return int(parts[0])


@dataclass
class ChaosReport:
    pipeline: str
    packets: int
    seed: int
    faults: list[Fault]
    restarts: dict[str, int]  # per function, from the run's supervisor.json
    verdict: Verdict
    run_error: str | None = None  # e.g. packets not accounted for; the verdict says which

    def to_json(self) -> dict[str, Any]:
        faults = [{k: v for k, v in asdict(f).items() if k != "due"} for f in self.faults]
        head = {"pipeline": self.pipeline, "packets": self.packets, "seed": self.seed}
        body = {"faults": faults, "restarts": self.restarts, "run_error": self.run_error}
        return head | body | {"verdict": self.verdict.to_json()}

    def lines(self) -> list[str]:
        """Per fault what was done and whether the kernel saw it; seed and restarts."""
        out = []
        for f in self.faults:
            sent = f" ({f.sent}/{self.packets} packets published)" if f.sent else ""
            who = (
                f"broker {f.instance}" if f.kind == "kill-broker" else f"{f.function}:{f.instance}"
            )
            what = f"{f.kind} {who} pid {f.pid}"
            line = f"{what} at {f.at:.0%}{sent}: {f.observed or '-'}"
            if f.continued_at and f.fired_at:
                line += f", resumed {f.continued_at - f.fired_at:.1f}s later"
            out.append(line + (f" [red]{f.error}[/]" if f.error else ""))
        restarts = ", ".join(f"{k} {n}" for k, n in self.restarts.items() if n) or "none"
        return [*out, f"seed {self.seed}; restarts by the supervisor: {restarts}"]


def run_chaos(
    pipeline_path: Path,
    captures: Sequence[Path],
    faults: list[Fault],
    opts: RunOptions,
    console: Console,
    seed: int | None = None,
    cluster_name: str = "default",
) -> ChaosReport:
    """`opts` as for `snf run` (brokers, replay timing, timeout, keep, rundir)."""
    pipeline = load_pipeline(pipeline_path)
    captures = [Path(c) for c in captures]
    check_captures(captures)
    seed = seed if seed is not None else secrets.randbelow(2**31)  # reported: reproducible
    rng, known = random.Random(seed), {pf.name: pf.instances for pf in pipeline.functions}
    for f in faults:  # check the targets; the seed picks the instances left open
        if f.kind == "kill-broker" and (f.instance is not None or not f.function):
            continue  # a node id: checked when the cluster is known
        if f.function not in known:
            raise ConfigError(f"{pipeline.name} has no function {f.function!r}: {', '.join(known)}")
        if f.kind == "kill-broker":
            continue
        if f.instance is None:
            f.instance = rng.randrange(max(1, known[f.function]))
        elif f.instance >= known[f.function]:
            raise ConfigError(f"{f.function} runs {known[f.function]} instance(s): no {f.instance}")
        if f.duration >= opts.timeout:
            raise ConfigError(f"--for must be shorter than the sink's --timeout {opts.timeout}s")
    # The reference first: it also says how many packets the replay will publish.
    local = LocalPipeline(pipeline)
    quiet = replace(opts.replay, speed=None, pps=None, progress=False)
    keyers = local.ingress_hop.keyers
    summary = replay(captures, pipeline.partitions, local, quiet, console, keyers=keyers)
    local.end_of_input(pipeline.name, summary.last_ts_ns)  # the end of input of a run
    for f in faults:
        f.due = max(1, math.ceil((f.at or 0) * summary.packets))
    rundir = opts.rundir or Path(tempfile.mkdtemp(prefix=f"snf-chaos-{pipeline.name}-"))
    brokers = _brokers(pipeline, faults, opts, cluster_name)
    injector = Injector(rundir, faults, summary.packets, brokers)
    recorder = SinkRecorder()
    run_opts = replace(opts, local=False, rundir=rundir, collector=recorder, on_published=injector)
    error = None
    try:
        run_pipeline(pipeline_path, captures, run_opts, console)
    except RunError as exc:  # lost or extra packets: the verdict explains them
        error = str(exc)
    finally:
        injector.close()
    state = (dp.read_state(rundir) or {}).get("functions") or {}
    restarts = {n: sum(i.get("restarts", 0) for i in fn["instances"]) for n, fn in state.items()}
    if opts.rundir is None and not opts.keep and error is None:
        shutil.rmtree(rundir, ignore_errors=True)  # as `snf run`: logs stay when it failed
    sinks, records = pipeline.sink_topics(), pipeline.record_topics()
    packet_ports = [k for t, k in sinks.items() if t not in records]
    record_ports = [k for t, k in sinks.items() if t in records]
    verdict = compare(local.collector, recorder, packet_ports, record_ports)
    return ChaosReport(pipeline.name, summary.packets, seed, faults, restarts, verdict, error)


def _brokers(
    pipeline: Pipeline, faults: list[Fault], opts: RunOptions, name: str
) -> Brokers | None:
    """The cluster `name` for broker faults, checked against the run's bootstrap."""
    if not any(f.kind == "kill-broker" for f in faults):
        return None
    info = cluster.recorded(name)
    if info is None:
        raise ConfigError(f"--kill-broker: no cluster {name!r} started by `snf kafka up` here")
    ids = {n.node_id for n in info.nodes}
    for f in faults:
        if f.kind == "kill-broker" and f.instance is not None and f.instance not in ids:
            raise ConfigError(
                f"--kill-broker {f.instance}: cluster {name!r} has nodes {sorted(ids)}"
            )
    for f in faults:
        if (
            f.kind == "kill-broker"
            and f.instance is None
            and f.function not in {pf.name for pf in pipeline.functions}
        ):
            raise ConfigError(f"--kill-broker leader:{f.function}: no such function")
    return Brokers(info, opts.brokers or info.bootstrap, pipeline)
