"""Keep a deployed pipeline's workers running as its deployment.json says.

`supervise(dir)` runs `Supervisor.reconcile()` every 0.5 s until SIGTERM/SIGINT:
reload deployment.json if it changed, reap exits, stop surplus instances, start
missing ones, restart crashed ones after a backoff, replace instances with a stale
config one at a time, follow the autoscaler, rewrite supervisor.json (formats:
snf.ops.deployment_dir). Instance i always runs in datadir workers/<fn>-<i>, reusing the
RocksDB state of its predecessor, so an index never has two live processes.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from snf.kafka import admin
from snf.ops import deployment_dir as dp
from snf.ops.autoscale import Autoscaler, GroupLagSource, LagSource
from snf.ops.deployment_dir import Deployment, DeploymentError, FunctionTarget, Instance
from snf.ops.worker_process import WorkerProcess, start_worker, wait_all_stopped

__all__ = ["Instance", "LagSource", "Starter", "Supervisor", "Timings", "supervise"]

log = logging.getLogger("snf.ops.supervisor")
# (deployment, function, instance, rundir) -> a started worker
Starter = Callable[[Deployment, FunctionTarget, int, Path], WorkerProcess]


@dataclass(frozen=True)
class Timings:
    interval: float = 0.5  # between reconcile steps
    grace: float = 20.0  # SIGTERM -> SIGKILL: a Faust worker commits and leaves its group
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    healthy_after: float = 60.0  # running this long (or being assigned) forgives earlier crashes
    ready_timeout: float = 60.0  # for a replacement that never reports an assignment
    lag_interval: float = 1.0


def default_starter(dep: Deployment, target: FunctionTarget, i: int, rundir: Path) -> WorkerProcess:
    return start_worker(
        dep.pipeline_file,
        target.name,
        i,
        dep.brokers,
        rundir,
        name=dep.pipeline,
        private=dep.private,
        base_dir=Path(dep.base_dir) if dep.base_dir else None,
    )


Evictor = Callable[[str, str, str], None]  # (brokers, group, member id)


def evict_member(brokers: str, group: str, member: str) -> None:
    try:
        ok = admin.evict_member(brokers, group, member, reason="worker died")
    except Exception as exc:  # the session timeout still removes it
        log.warning("could not evict %s from %s: %s", member, group, exc)
    else:
        log.warning("evicted %s from %s" if ok else "%s was no longer in %s", member, group)


class Supervisor:
    def __init__(
        self,
        directory: Path,
        *,
        starter: Starter = default_starter,
        lag_source: LagSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        timings: Timings = Timings(),
        evict: Evictor | None = None,
    ) -> None:
        self.dir, self.timings = directory, timings
        self._evict = evict
        self._starter, self._clock, self._wall = starter, clock, wall
        self._lag_source = lag_source or GroupLagSource()
        self.dep = dp.load(directory)
        self._stamp = dp.stamp(directory)
        self.instances: dict[str, dict[int, Instance]] = {}
        self.autoscaler = Autoscaler(wall)
        self.autoscaler.sync({}, self.dep.functions)
        self._next_lag, self._last_error = -math.inf, ""

    def reconcile(self) -> None:
        self._reload()
        now = self._clock()
        if self.dep.autoscale and now >= self._next_lag:
            self._next_lag = now + self.timings.lag_interval
            self.autoscaler.observe(self.dep, self._lag_source, now)
        gone = [n for n in self.instances if n not in self.dep.functions]
        for name in [*self.dep.functions, *gone]:
            self._reconcile_function(name, now)
        self.write_state()

    def desired(self, name: str) -> int:
        target = self.dep.functions.get(name)  # None: removed by a redeploy
        current = self.autoscaler.current(name) if self.dep.autoscale else None
        return 0 if target is None else target.instances if current is None else current

    def _reconcile_function(self, name: str, now: float) -> None:
        slots = self.instances.setdefault(name, {})
        want, target = self.desired(name), self.dep.functions.get(name)
        for inst in slots.values():
            self._watch(name, inst, now)
        for i in sorted(slots, reverse=True):  # surplus: highest index first
            if i >= want and slots[i].state == "running":
                self._stop(name, slots[i], now, "surplus")
            elif i >= want and slots[i].state in ("backoff", "stopped"):
                del slots[i]
        for i in range(want):  # missing: lowest index first (want > 0: target exists)
            inst = slots.setdefault(i, Instance(i))
            if inst.state == "stopped" or (inst.state == "backoff" and now >= inst.retry_at):
                self._start(name, target, inst, now)  # type: ignore[arg-type]
        if target is not None:
            self._roll(name, slots, target.config_hash, now)
        elif not slots:
            del self.instances[name]

    def _watch(self, name: str, inst: Instance, now: float) -> None:
        """Reap an exited worker; SIGKILL one that ignored SIGTERM for the grace period."""
        worker = inst.worker
        if worker is None or inst.state not in ("running", "stopping"):
            return
        if worker.alive():
            if inst.state == "stopping" and now >= inst.kill_at:
                log.warning("%s/%d still running after SIGTERM: SIGKILL", name, inst.index)
                worker.kill(signal.SIGKILL)
                inst.kill_at = math.inf
            return
        inst.worker, inst.last_exit = None, worker.proc.returncode
        if inst.state == "stopping":
            inst.state = "stopped"
            log.info("%s/%d stopped (exit %s)", name, inst.index, inst.last_exit)
            return
        # A worker that took its partitions was healthy: a kill -9 of it is no crash
        # loop, so its replacement starts after the base delay, not a grown one.
        ready = dp.worker_files(self.dir, name, inst.index).assignment() is not None
        if ready or now - inst.started_at >= self.timings.healthy_after:
            inst.failures = 0
        self._evict_dead(name, inst)
        self._backoff(name, inst, now, f"exited with {inst.last_exit}")

    def _evict_dead(self, name: str, inst: Instance) -> None:
        """Tell the group a crashed worker is gone (LeaveGroup on its behalf), so its
        partitions move now, not when its session expires (10 s): the main part of
        a takeover's time. In a thread: a slow broker must not stall supervision."""
        record = dp.worker_files(self.dir, name, inst.index).assignment()
        if record is None:
            return
        group, member = record.group, record.member_id
        if not group or not member or self._evict is None:
            return
        log.warning("%s/%d: evicting its dead group member %s", name, inst.index, member)
        threading.Thread(
            target=self._evict, args=(self.dep.brokers, group, member), daemon=True
        ).start()

    def _backoff(self, name: str, inst: Instance, now: float, why: str) -> None:
        t = self.timings
        delay = min(t.backoff_base * 2 ** min(inst.failures, 30), t.backoff_cap)
        inst.failures += 1
        inst.state, inst.retry_at = "backoff", now + delay
        log.warning("%s/%d %s; restarting in %.1fs", name, inst.index, why, delay)

    def _start(self, name: str, target: FunctionTarget, inst: Instance, now: float) -> None:
        # Readiness is "assignment.json exists": the previous process's file must go.
        dp.worker_files(self.dir, name, inst.index).clear_assignment()
        inst.restarts += inst.state == "backoff"
        inst.awaiting_ready, inst.replacing = inst.replacing or inst.awaiting_ready, False
        inst.started, inst.started_at = self._wall(), now
        try:
            inst.worker = self._starter(self.dep, target, inst.index, dp.workers_dir(self.dir))
        except Exception as exc:  # could not even spawn: retry like after a crash
            self._backoff(name, inst, now, f"failed to start: {exc}")
            return
        inst.state, inst.config_hash = "running", target.config_hash
        log.info("%s/%d started, pid %d", name, inst.index, inst.worker.pid)

    def _stop(self, name: str, inst: Instance, now: float, why: str) -> None:
        log.info("%s/%d stopping (%s)", name, inst.index, why)
        if inst.worker is not None:
            inst.worker.kill(signal.SIGTERM)
        inst.state, inst.kill_at = "stopping", now + self.timings.grace

    def _roll(self, name: str, slots: dict[int, Instance], want_hash: str, now: float) -> None:
        """Replace one stale instance at a time, each once the previous one is assigned."""
        for inst in slots.values():
            if inst.replacing:
                return  # its successor starts once it has exited
            if inst.awaiting_ready:
                if not self._ready(name, inst, now):
                    return
                inst.awaiting_ready = False
                log.info("%s/%d replacement is assigned", name, inst.index)
        for i in sorted(slots):
            if slots[i].state == "running" and slots[i].config_hash != want_hash:
                slots[i].replacing = True
                return self._stop(name, slots[i], now, "config changed, rolling restart")

    def _ready(self, name: str, inst: Instance, now: float) -> bool:
        if inst.state != "running":
            return False  # a crashing replacement halts the rollout
        if now - inst.started_at >= self.timings.ready_timeout:
            return True
        return dp.worker_files(self.dir, name, inst.index).assignment_path.exists()

    def _reload(self) -> None:
        stamp = dp.stamp(self.dir)
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            dep = dp.load(self.dir)
        except DeploymentError as exc:
            log.error("%s; keeping generation %d", exc, self.dep.generation)
            return
        self.autoscaler.sync(self.dep.functions, dep.functions)
        log.info("deployment generation %d loaded", dep.generation)
        self.dep = dep

    def write_state(self) -> None:
        desired = {name: self.desired(name) for name in self.instances}
        events = [e.to_json() for e in self.autoscaler.events]
        dp.write_state(self.dir, self.dep, desired, self.instances, self.autoscaler.lags, events)

    def run(self, stop: threading.Event) -> None:
        """Reconcile until `stop` is set, then stop every worker."""
        try:
            while not stop.is_set():
                try:
                    self.reconcile()
                except Exception as exc:  # one bad step must not orphan the workers
                    if repr(exc) != self._last_error:
                        log.exception("reconcile failed")
                    self._last_error = repr(exc)
                stop.wait(self.timings.interval)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """SIGTERM every worker at once, SIGKILL those left after the grace period."""
        insts = [i for slots in self.instances.values() for i in slots.values()]
        wait_all_stopped([i.worker for i in insts if i.worker], timeout=self.timings.grace)
        for inst in insts:
            if inst.worker is not None:
                inst.last_exit, inst.worker = inst.worker.proc.returncode, None
            inst.state = "stopped"
        if close := getattr(self._lag_source, "close", None):
            close()
        self.write_state()
        log.info("all workers stopped")


def supervise(directory: Path) -> int:
    """Supervise deployment `directory` in the foreground until SIGTERM or SIGINT."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=fmt)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if dp.supervisor_alive(directory) and dp.read_pid(directory) != os.getpid():
        log.error("a supervisor already runs for %s (pid %s)", directory, dp.read_pid(directory))
        return 1
    try:
        sup = Supervisor(directory, evict=evict_member)
    except DeploymentError as exc:
        log.error("%s", exc)
        return 1
    if killed := dp.kill_orphans(directory):
        log.warning("killed workers a previous supervisor left running: %s", killed)
    (directory / dp.PID_FILE).write_text(f"{os.getpid()}\n")
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    log.info("supervising %s, generation %d", sup.dep.pipeline, sup.dep.generation)
    try:
        sup.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if dp.read_pid(directory) == os.getpid():
            (directory / dp.PID_FILE).unlink(missing_ok=True)
    return 0
