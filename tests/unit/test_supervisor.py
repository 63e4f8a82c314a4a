"""The supervisor with dummy worker processes: no broker, no Faust.

A dummy worker is a small Python script: it sleeps, crashes at once, or ignores
SIGTERM, and like a real worker writes <datadir>/assignment.json once "assigned".
Backoff and grace periods run on a fake clock, so those tests never wait for them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snf.ops import deployment_dir as dp
from snf.ops.deployment_dir import Deployment, FunctionTarget
from snf.ops.supervisor import Supervisor, Timings, supervise
from snf.ops.worker_process import WorkerProcess

DUMMY = """\
import json, pathlib, signal, sys, time
datadir, mode, delay = pathlib.Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
if mode == "crash":
    sys.exit(3)
if mode.startswith("member-"):  # assigned as a real worker records it
    member = "m-" + datadir.name
    record = {"partitions": [0], "time": time.time(), "group": "g", "member_id": member}
    (datadir / "assignment.json").write_text(json.dumps(record))
    time.sleep(delay if mode == "member-crash" else 60)
    sys.exit(3)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(delay)
(datadir / "assignment.json").write_text(json.dumps({"partitions": [0], "time": time.time()}))
time.sleep(60)
"""


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Dummies:
    """The injected starter: mode and assignment delay per function, every start logged."""

    def __init__(self, script: Path) -> None:
        self.script = script
        self.mode: dict[str, str] = {}
        self.delay = 0.0
        self.started: list[tuple[str, int, str]] = []  # (function, instance, config_hash)
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(
        self, dep: Deployment, target: FunctionTarget, instance: int, rundir: Path
    ) -> WorkerProcess:
        datadir = rundir / f"{target.name}-{instance}"
        datadir.mkdir(parents=True, exist_ok=True)
        mode = self.mode.get(target.name, "sleep")
        args = [sys.executable, "-S", str(self.script), str(datadir), mode, str(self.delay)]
        proc = subprocess.Popen(args)
        self.procs.append(proc)
        self.started.append((target.name, instance, target.config_hash))
        return WorkerProcess(target.name, instance, proc, rundir / "dummy.log", datadir)


@pytest.fixture
def dummies(tmp_path: Path) -> Iterator[Dummies]:
    script = tmp_path / "dummy_worker.py"
    script.write_text(DUMMY)
    made = Dummies(script)
    yield made
    for proc in made.procs:  # whatever a failed test left running
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def write_deployment(dep_dir: Path, autoscale: bool = False, **functions: int | dict) -> None:
    targets = {}
    for name, spec in functions.items():
        spec = {"instances": spec} if isinstance(spec, int) else spec
        targets[name] = FunctionTarget(name, **{"config_hash": "v1", **spec})
    dep = Deployment("demo", dep_dir / "pipeline.yaml", "127.0.0.1:1", autoscale, targets)
    dp.save(dep_dir, dep)


FAST = Timings(interval=0.02, grace=5.0, ready_timeout=10.0, lag_interval=0.0)


@pytest.fixture
def make(tmp_path: Path, dummies: Dummies) -> Iterator[Callable[..., Supervisor]]:
    made: list[Supervisor] = []

    def factory(**kwargs: object) -> Supervisor:
        kwargs = {"starter": dummies, "timings": FAST, **kwargs}
        sup = Supervisor(tmp_path, **kwargs)  # type: ignore[arg-type]
        made.append(sup)
        return sup

    yield factory
    for sup in made:
        sup.shutdown()


def pump(sup: Supervisor, done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the supervisor did not get there in time"
        sup.reconcile()
        time.sleep(0.02)


def states(sup: Supervisor, fn: str) -> dict[int, str]:
    return {i: inst.state for i, inst in sup.instances.get(fn, {}).items()}


def pids(sup: Supervisor, fn: str) -> dict[int, int]:
    return {i: inst.worker.pid for i, inst in sup.instances[fn].items() if inst.worker}


def test_scale_up_then_down_highest_index_first(tmp_path: Path, make: Callable) -> None:
    write_deployment(tmp_path, fw=2)
    sup = make()
    sup.reconcile()
    assert states(sup, "fw") == {0: "running", 1: "running"}
    before = pids(sup, "fw")
    write_deployment(tmp_path, fw=4)  # what `snf scale fw 4` does
    sup.reconcile()
    assert states(sup, "fw") == dict.fromkeys(range(4), "running")
    assert {i: pids(sup, "fw")[i] for i in (0, 1)} == before  # untouched
    victims = {i: sup.instances["fw"][i].worker for i in (1, 2, 3)}
    write_deployment(tmp_path, fw=1)
    sup.reconcile()
    assert states(sup, "fw") == {0: "running", 1: "stopping", 2: "stopping", 3: "stopping"}
    pump(sup, lambda: list(sup.instances["fw"]) == [0])
    assert all(w is not None and w.proc.returncode == -signal.SIGTERM for w in victims.values())
    state = dp.read_state(tmp_path)
    assert state is not None and state["functions"]["fw"]["desired"] == 1
    (record,) = state["functions"]["fw"]["instances"]
    assert record["instance"] == 0 and record["pid"] == before[0] and record["state"] == "running"


def test_surplus_is_stopped_from_the_highest_index(tmp_path: Path, make: Callable) -> None:
    write_deployment(tmp_path, fw=3)
    sup = make()
    sup.reconcile()
    write_deployment(tmp_path, fw=2)
    sup.reconcile()
    assert states(sup, "fw") == {0: "running", 1: "running", 2: "stopping"}


def test_crash_restarts_with_exponential_backoff(
    tmp_path: Path, make: Callable, dummies: Dummies
) -> None:
    write_deployment(tmp_path, fw=1)
    dummies.mode["fw"] = "crash"
    clock = FakeClock()
    sup = make(clock=clock)
    sup.reconcile()
    inst = sup.instances["fw"][0]
    for n, delay in enumerate([0.5, 1.0, 2.0, 4.0]):
        assert inst.state == "running" and inst.restarts == n
        assert inst.worker is not None
        inst.worker.proc.wait(5)
        sup.reconcile()
        assert inst.state == "backoff" and inst.last_exit == 3
        clock.t += delay - 0.01
        sup.reconcile()
        assert inst.state == "backoff", f"restarted before {delay}s"
        clock.t += 0.01
        sup.reconcile()
    assert inst.state == "running" and inst.restarts == 4
    assert len(dummies.started) == 5
    record = dp.read_state(tmp_path)["functions"]["fw"]["instances"][0]  # type: ignore[index]
    assert record["restarts"] == 4 and record["last_exit"] == 3


def test_a_crashed_worker_is_evicted_from_its_group_a_stopped_one_is_not(
    tmp_path: Path, make: Callable, dummies: Dummies
) -> None:
    # The group would otherwise hold its partitions until its session expires.
    write_deployment(tmp_path, fw=1, nat=1)
    dummies.mode.update(fw="member-crash", nat="member-sleep")
    dummies.delay = 0.2
    evicted: list[tuple[str, str, str]] = []
    sup = make(evict=lambda *args: evicted.append(args))
    sup.reconcile()
    pump(sup, lambda: sup.instances["fw"][0].state == "backoff")
    pump(sup, lambda: bool(evicted))
    assert evicted[0] == ("127.0.0.1:1", "g", "m-fw-0")
    write_deployment(tmp_path, fw=1, nat=0)  # a planned stop: it leaves the group itself
    pump(sup, lambda: not sup.instances.get("nat"))
    time.sleep(0.1)
    assert {e[2] for e in evicted} == {"m-fw-0"}


def test_backoff_is_capped_and_reset_after_healthy_running(
    tmp_path: Path, make: Callable, dummies: Dummies
) -> None:
    write_deployment(tmp_path, fw=1)
    dummies.delay = 30.0  # never assigned before it is killed: a crash loop
    clock = FakeClock()
    sup = make(clock=clock)
    sup.reconcile()
    inst = sup.instances["fw"][0]
    inst.failures = 10  # a long crash loop: 0.5 * 2**10 s is far above the cap
    inst.worker.kill()  # type: ignore[union-attr]
    inst.worker.proc.wait(5)  # type: ignore[union-attr]
    sup.reconcile()
    assert inst.state == "backoff" and inst.retry_at == pytest.approx(clock.t + 30.0)
    clock.t += 30.0
    sup.reconcile()
    assert inst.state == "running" and inst.restarts == 1
    clock.t += 61.0  # healthy for more than a minute: the crash loop is forgiven
    inst.worker.kill()  # type: ignore[union-attr]
    inst.worker.proc.wait(5)  # type: ignore[union-attr]
    sup.reconcile()
    assert inst.state == "backoff" and inst.retry_at == pytest.approx(clock.t + 0.5)
    assert inst.last_exit == -signal.SIGKILL


def test_a_worker_killed_after_taking_its_partitions_is_back_at_once(
    tmp_path: Path, make: Callable, dummies: Dummies
) -> None:
    # A kill storm (snf chaos) is no crash loop: each victim had been assigned.
    write_deployment(tmp_path, fw=1)
    dummies.mode["fw"], dummies.delay = "member-crash", 0.05
    clock = FakeClock()
    sup = make(clock=clock, evict=lambda *args: None)
    sup.reconcile()
    inst = sup.instances["fw"][0]
    for n in range(4):
        assert inst.state == "running" and inst.restarts == n
        inst.worker.proc.wait(5)  # type: ignore[union-attr]
        sup.reconcile()
        assert inst.state == "backoff" and inst.retry_at == pytest.approx(clock.t + 0.5)
        clock.t += 0.5
        sup.reconcile()


def test_a_stop_escalates_to_sigkill_after_the_grace_period(
    tmp_path: Path, make: Callable, dummies: Dummies
) -> None:
    write_deployment(tmp_path, fw=1)
    dummies.mode["fw"], dummies.delay = "stubborn", 0.0
    clock = FakeClock()
    sup = make(clock=clock)
    sup.reconcile()
    worker = sup.instances["fw"][0].worker
    assert worker is not None
    pump(sup, lambda: dp.worker_files(tmp_path, "fw", 0).assignment_path.exists())  # SIG_IGN is set
    write_deployment(tmp_path, fw=0)
    sup.reconcile()
    time.sleep(0.3)
    sup.reconcile()
    assert worker.alive() and states(sup, "fw") == {0: "stopping"}  # SIGTERM ignored
    clock.t += FAST.grace
    pump(sup, lambda: not sup.instances.get("fw"))
    assert worker.proc.returncode == -signal.SIGKILL


def test_rolling_restart_replaces_one_instance_at_a_time(
    tmp_path: Path, make: Callable, dummies: Dummies
) -> None:
    write_deployment(tmp_path, fw=3)
    dummies.delay = 0.3  # time to "get assigned" after starting
    sup = make()
    pump(
        sup,
        lambda: all(dp.worker_files(tmp_path, "fw", i).assignment_path.exists() for i in range(3)),
    )
    old = pids(sup, "fw")
    write_deployment(tmp_path, fw={"instances": 3, "config_hash": "v2"})  # a redeploy

    def unavailable() -> set[int]:
        """Instances not serving: stopping, stopped, or new and not assigned yet."""
        out = set()
        for i, inst in sup.instances["fw"].items():
            if (
                inst.state != "running"
                or not dp.worker_files(tmp_path, "fw", i).assignment_path.exists()
            ):
                out.add(i)
        return out

    seen: list[set[int]] = []

    def rolled() -> bool:
        seen.append(unavailable())
        assert len(seen[-1]) <= 1, f"instances {seen[-1]} down at once"
        return not seen[-1] and all(x.config_hash == "v2" for x in sup.instances["fw"].values())

    pump(sup, rolled, timeout=10.0)
    replaced = [(i, h) for fn, i, h in dummies.started if h == "v2"]
    assert replaced == [(0, "v2"), (1, "v2"), (2, "v2")]
    assert set(pids(sup, "fw").values()).isdisjoint(old.values())
    assert {i for s in seen for i in s} == {0, 1, 2}  # each was really down for a while


def test_removed_function_is_stopped_and_new_one_started(tmp_path: Path, make: Callable) -> None:
    write_deployment(tmp_path, fw=1, nat=2)
    sup = make()
    sup.reconcile()
    write_deployment(tmp_path, fw=1, lb=1)
    pump(sup, lambda: "nat" not in sup.instances)
    assert states(sup, "lb") == {0: "running"}
    assert set(dp.read_state(tmp_path)["functions"]) == {"fw", "lb"}  # type: ignore[index]


def test_autoscale_follows_the_lag(tmp_path: Path, make: Callable) -> None:
    spec = {"instances": 1, "min_instances": 0, "max_instances": 3, "lag_threshold": 100}
    write_deployment(tmp_path, autoscale=True, fw=spec)
    lag = {"fw": (250, 1000)}
    clock = FakeClock()
    sup = make(clock=clock, lag_source=lambda dep, target: lag.get(target.name))
    sup.reconcile()
    assert states(sup, "fw") == dict.fromkeys(range(3), "running")
    lag["fw"] = (0, 1000)
    clock.t += 1.0
    sup.reconcile()
    clock.t += 9.9
    sup.reconcile()
    assert states(sup, "fw") == dict.fromkeys(range(3), "running")  # stabilizing
    clock.t += 0.1  # the lag has been low for the stabilization window (10 s)
    sup.reconcile()
    assert states(sup, "fw") == {0: "running", 1: "stopping", 2: "stopping"}
    state = dp.read_state(tmp_path)
    assert state is not None and state["functions"]["fw"]["lag"] == 0
    assert [(e["from"], e["to"]) for e in state["scale_events"]] == [(1, 3), (3, 1)]


FN_INSTANCES = [("fw", 0), ("fw", 1), ("nat", 0)]


def test_run_stops_every_worker_when_told_to(
    tmp_path: Path, make: Callable, dummies: Dummies
) -> None:
    write_deployment(tmp_path, fw=2, nat=1)
    dummies.mode["nat"] = "stubborn"  # needs the SIGKILL after the grace period
    sup = make(timings=Timings(interval=0.02, grace=0.5))
    stop = threading.Event()
    thread = threading.Thread(target=sup.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 5  # run() reconciles in its thread: only watch here
    while not all(dp.worker_files(tmp_path, *fi).assignment_path.exists() for fi in FN_INSTANCES):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert len(dummies.procs) == 3 and all(p.poll() is not None for p in dummies.procs)
    state = dp.read_state(tmp_path)
    assert state is not None
    records = [r for fn in state["functions"].values() for r in fn["instances"]]
    assert {r["state"] for r in records} == {"stopped"}
    exits = sorted(r["last_exit"] for r in records)
    assert exits == sorted([-signal.SIGKILL, -signal.SIGTERM, -signal.SIGTERM])


def test_kill_orphans_of_a_dead_supervisor(tmp_path: Path, make: Callable) -> None:
    write_deployment(tmp_path, fw=2)
    sup = make()
    pump(
        sup,
        lambda: all(dp.worker_files(tmp_path, "fw", i).assignment_path.exists() for i in range(2)),
    )
    workers = [inst.worker for inst in sup.instances["fw"].values()]
    assert sorted(dp.kill_orphans(tmp_path)) == sorted(w.pid for w in workers)  # type: ignore[union-attr]
    assert all(w.proc.wait(5) == -signal.SIGKILL for w in workers)  # type: ignore[union-attr]


def test_deployment_round_trip(tmp_path: Path) -> None:
    write_deployment(tmp_path, fw={"instances": 2, "max_instances": 4, "group_id": "snf.demo.fw"})
    dep = dp.load(tmp_path)
    assert dep.pipeline_file == tmp_path / "pipeline.yaml"
    assert dep.functions["fw"] == FunctionTarget(
        "fw", 2, max_instances=4, config_hash="v1", group_id="snf.demo.fw"
    )
    assert '"pipeline_file": "pipeline.yaml"' in (tmp_path / dp.DEPLOYMENT_FILE).read_text()
    with pytest.raises(dp.DeploymentError, match="no deployment"):
        dp.load(tmp_path / "missing")
    (tmp_path / dp.DEPLOYMENT_FILE).write_text("{")
    with pytest.raises(dp.DeploymentError, match="cannot read"):
        dp.load(tmp_path)


def test_supervise_runs_until_sigterm(tmp_path: Path) -> None:
    write_deployment(tmp_path)  # no functions: nothing to start, no broker asked
    code = "import sys, pathlib; from snf.ops.supervisor import supervise;"
    code += " sys.exit(supervise(pathlib.Path(sys.argv[1])))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    try:
        deadline = time.monotonic() + 20
        while not (dp.supervisor_alive(tmp_path) and dp.read_state(tmp_path)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert dp.read_pid(tmp_path) == proc.pid
        assert supervise(tmp_path) == 1  # a second supervisor refuses to start
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / dp.PID_FILE).exists()
    assert not dp.supervisor_alive(tmp_path)
    (tmp_path / dp.PID_FILE).write_text(f"{os.getpid()}\n")  # alive, but not a supervisor
    assert not dp.supervisor_alive(tmp_path)


def test_a_local_worker_serves_probes_and_metrics_on_loopback_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snf.ops import worker_process

    started: list[list[str]] = []

    def popen(cmd: list[str], **_: object) -> object:
        started.append(cmd)
        return object()

    monkeypatch.setattr(worker_process.subprocess, "Popen", popen)
    worker_process.start_worker(tmp_path / "p.yaml", "fw", 0, "127.0.0.1:9092", tmp_path)
    cmd = started[0]
    assert cmd[cmd.index("--health-port") + 1] == "0"
    assert cmd[cmd.index("--health-host") + 1] == "127.0.0.1"
