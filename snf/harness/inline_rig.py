"""InlineRig: a deployed pipeline in the path of a lab's traffic, as a user runs it.

`snf deploy` of a pipeline whose `egress: inline` names the lab's two arms,
then `snf capture` and `snf sink` as processes (their summaries as JSON
files). Used by tests/integration/test_live_inline.py and bench/live_inline.py.

    with inline_rig(lab, text, workdir) as rig:
        rig.wait_reachable(120)
        ...
    rig.capture_summary, rig.sink_summary   # after the context: both stopped
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snf.errors import SnfError

__all__ = ["InlineRig", "inline_rig"]


@dataclass
class InlineRig:
    lab: Any  # snf.live.lab.Lab
    name: str
    workdir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    capture_summary: dict[str, Any] = field(default_factory=dict)
    sink_summary: dict[str, Any] = field(default_factory=dict)
    sink_runs: int = 0

    def _start(self, what: str, *args: str) -> None:
        log = (self.workdir / f"{what}.log").open("w")
        cmd = [sys.executable, "-m", "snf", what, "--pipeline", self.name, *args]
        self.procs[what] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def _stop(self, what: str) -> dict[str, Any]:
        proc = self.procs.pop(what)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out = self.workdir / f"{what}.json"
        if proc.returncode != 0 or not out.exists():
            tail = (self.workdir / f"{what}.log").read_text()[-3000:]
            raise SnfError(f"snf {what} exited {proc.returncode}:\n{tail}")
        return json.loads(out.read_text())

    def start_capture(self, *extra: str) -> None:
        """`extra`: more `snf capture` options, e.g. "--linger-ms", "20"."""
        self._start(
            "capture", "--no-progress", "--json", str(self.workdir / "capture.json"), *extra
        )

    def stop_capture(self) -> dict[str, Any]:
        self.capture_summary = self._stop("capture")
        return self.capture_summary

    def start_sink(self, tap: bool = True) -> None:
        """A fresh sink (live sinks read from the end: it sends only what comes next)."""
        self.sink_runs += 1
        args = ["--json", str(self.workdir / "sink.json")]
        if tap:
            args += ["--out", str(self.workdir / f"tap-{self.sink_runs}.pcapng")]
        self._start("sink", *args)
        time.sleep(2.0)  # its consumer is assigned and at the end before traffic counts

    def stop_sink(self) -> dict[str, Any]:
        self.sink_summary = self._stop("sink")
        return self.sink_summary

    @property
    def tap(self) -> Path:
        return self.workdir / f"tap-{self.sink_runs}.pcapng"

    def wait_reachable(self, timeout: float) -> float:
        """Seconds until a ping from the client reaches the server through the chain."""
        start = time.monotonic()
        while True:
            ping = self.lab.run("client", ["ping", "-c", "1", "-W", "2", self.lab.server_ip], 10)
            if ping.returncode == 0:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise SnfError(f"no ping through {self.name} within {timeout:.0f}s")


@contextmanager
def inline_rig(lab: Any, pipeline_text: str, workdir: Path) -> Iterator[InlineRig]:
    """Deploy, run capture and sink; afterwards stop both (the sink after the last
    packets are in) and undeploy. SNF_BROKERS (or a `snf kafka up` cluster) says where."""
    from snf.pipeline.loader import load_pipeline

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "pipeline.yaml"
    path.write_text(pipeline_text)
    name = load_pipeline(path).name
    _snf("deploy", str(path))
    rig = InlineRig(lab, name, workdir)
    try:
        rig.start_sink()
        rig.start_capture()
        yield rig
        if "capture" in rig.procs:  # the caller may have stopped either already
            rig.stop_capture()
        if "sink" in rig.procs:
            time.sleep(3.0)  # what was captured last reaches the sink
            rig.stop_sink()
    finally:
        for what in list(rig.procs):
            rig.procs.pop(what).kill()
        _snf("undeploy", name, "--delete-topics")


def _snf(*args: str) -> None:
    """An `snf` command as the user runs it; its output on failure."""
    done = subprocess.run([sys.executable, "-m", "snf", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SnfError(f"snf {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
