"""Worker processes: one OS process per function instance, started and stopped here.

Each worker serves probes and /metrics on a free port it picks itself (its
stats.json says which) and labels its metrics with its instance number."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from snf.errors import SnfError
from snf.runtime.worker.files import WorkerFiles
from snf.runtime.worker.metrics import INSTANCE_ENV

__all__ = ["WorkerError", "WorkerProcess", "log_tail", "start_worker", "wait_all_stopped"]


class WorkerError(SnfError):
    """A worker process that died or never got its partitions."""


@dataclass
class WorkerProcess:
    function: str
    instance: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    datadir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def assignment(self) -> list[int] | None:
        """Input partitions this worker owns, once its first rebalance completed."""
        found = WorkerFiles(self.datadir).assignment()
        return None if found is None else found.partitions

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def check(self) -> None:
        """Raise WorkerError, with the tail of its log, if the process has exited."""
        if not self.alive():
            raise WorkerError(
                f"worker {self.function}/{self.instance} exited with "
                f"{self.proc.returncode}:\n{log_tail(self.log_path)}"
            )


def start_worker(
    pipeline_path: Path,
    function: str,
    instance: int,
    brokers: str,
    rundir: Path,
    *,
    name: str | None = None,
    loglevel: str = "info",
    private: bool = False,
    base_dir: Path | None = None,
) -> WorkerProcess:
    """Start `snf worker` for one instance; its RocksDB lives in its own datadir."""
    datadir = rundir / f"{function}-{instance}"
    datadir.mkdir(parents=True, exist_ok=True)
    log_path = rundir / f"{function}-{instance}.log"
    cmd = [
        sys.executable,
        "-m",
        "snf",
        "worker",
        str(pipeline_path),
        function,
        "--brokers",
        brokers,
        "--datadir",
        str(datadir),
        "--loglevel",
        loglevel,
        "--health-port",
        "0",
        "--health-host",
        "127.0.0.1",  # a local deployment's metrics are for this host only
    ]
    if name:
        cmd += ["--name", name]
    if private:
        cmd.append("--private-topics")
    if base_dir is not None:
        cmd += ["--base-dir", str(base_dir)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, INSTANCE_ENV: str(instance)},
        )
    return WorkerProcess(function, instance, proc, log_path, datadir)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def wait_all_stopped(workers: list[WorkerProcess], timeout: float = 20.0) -> None:
    for w in workers:
        if w.alive():
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for w in workers:
        try:
            w.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(5)
