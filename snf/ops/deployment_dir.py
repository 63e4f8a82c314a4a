"""The deployment directory: what a deployed pipeline should run, and what runs.

One directory per deployed pipeline, `<snf_home>/deployments/<pipeline>/`:

    deployment.json    the target (Deployment); written by deploy/scale/redeploy,
                       read by the supervisor, which reloads it when it changes
    pipeline.yaml      the copy of the pipeline file the workers load (by convention)
    supervisor.json    what the supervisor runs, rewritten every step (a heartbeat)
    supervisor.pid     the supervisor's pid while it runs
    supervisor.log     its log (the deploy command redirects stderr there)
    workers/<fn>-<i>/ and .log: an instance's datadir and log, kept across restarts

JSON files are written to a temporary file renamed over the old one: never half read.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from snf.errors import SnfError
from snf.guarantee.control_auth import new_key
from snf.kafka.settings import snf_home
from snf.ops.worker_process import WorkerProcess
from snf.runtime.worker.files import WorkerFiles

__all__ = [
    "CONTROL_KEY_FILE",
    "Deployment",
    "DeploymentError",
    "FunctionTarget",
    "Instance",
    "control_key",
    "deployments_root",
    "directory",
    "kill_orphans",
    "load",
    "read_pid",
    "read_state",
    "save",
    "stamp",
    "supervisor_alive",
    "worker_files",
    "workers_dir",
    "write_json",
    "write_state",
]

DEPLOYMENT_FILE = "deployment.json"
STATE_FILE = "supervisor.json"
PID_FILE = "supervisor.pid"
LOG_FILE = "supervisor.log"
CONTROL_KEY_FILE = "control.key"  # the key that signs lineage (snf.guarantee.control_auth)
FORMAT_VERSION = 1


class DeploymentError(SnfError):
    """A deployment directory that is missing or cannot be read."""


@dataclass
class FunctionTarget:
    """What should run for one function of the pipeline."""

    name: str
    instances: int  # the wanted count; autoscaling starts from it and moves it
    min_instances: int = 1
    max_instances: int = 1
    lag_threshold: int = 1000  # input messages of lag one instance is expected to absorb
    cooldown: float = 300.0  # seconds without new input before scaling to zero (min 0)
    config_hash: str = ""  # a change triggers a rolling restart
    group_id: str = ""
    input_topic: str = ""


@dataclass
class Deployment:
    pipeline: str
    pipeline_file: Path
    brokers: str
    autoscale: bool = False
    functions: dict[str, FunctionTarget] = field(default_factory=dict)
    generation: int = 1  # bumped by every redeploy
    base_dir: str = ""  # where the original file was: its relative paths (rules_file) resolve here
    private: bool = False  # a one-shot run: topic:NAME gets a name of the run's own


@dataclass
class Instance:
    """One instance slot of the supervisor; to_json() is its record in supervisor.json."""

    index: int
    state: str = "stopped"  # running | backoff | stopping | stopped
    worker: WorkerProcess | None = None
    config_hash: str = ""
    started: float = 0.0  # wall clock, for readers of supervisor.json
    started_at: float = 0.0  # supervisor clock
    restarts: int = 0
    failures: int = 0  # consecutive crashes: the backoff exponent
    last_exit: int | None = None
    retry_at: float = 0.0
    kill_at: float = math.inf
    replacing: bool = False  # being stopped by a rolling restart
    awaiting_ready: bool = False  # a rolling restart's replacement, not yet assigned

    def to_json(self) -> dict[str, Any]:
        pid = self.worker.pid if self.worker else None
        keys = ("instance", "pid", "state", "started", "restarts", "last_exit", "config_hash")
        values = (self.index, pid, self.state, self.started, self.restarts, self.last_exit)
        return dict(zip(keys, (*values, self.config_hash), strict=True))


def deployments_root() -> Path:
    return snf_home() / "deployments"


def directory(pipeline_name: str) -> Path:
    return deployments_root() / pipeline_name


def workers_dir(dep_dir: Path) -> Path:
    """The `rundir` handed to snf.ops.worker_process.start_worker."""
    return dep_dir / "workers"


def worker_files(dep_dir: Path, function: str, instance: int) -> WorkerFiles:
    """The datadir of instance `instance` of `function`: its assignment.json, stats.json."""
    return WorkerFiles(workers_dir(dep_dir) / f"{function}-{instance}")


def control_key(dep_dir: Path, *, create: bool = False, value: str | None = None) -> str:
    """The deployment's control key (hex): `value` if given (stored), else the
    stored one, else a new one if `create` (stored with mode 0600), else ""."""
    path = dep_dir / CONTROL_KEY_FILE
    stored = ""
    with contextlib.suppress(FileNotFoundError):
        stored = path.read_text().strip()
    key = value or stored or (new_key() if create else "")
    if key and key != stored:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
    return key


def write_json(path: Path, obj: Any) -> None:
    """Write atomically: a reader sees the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save(dep_dir: Path, dep: Deployment) -> None:
    data = asdict(dep)
    # Relative inside the directory, so the directory can be moved as a whole.
    pf = dep.pipeline_file
    with contextlib.suppress(ValueError):
        pf = pf.resolve().relative_to(dep_dir.resolve())
    data["pipeline_file"] = str(pf)
    write_json(dep_dir / DEPLOYMENT_FILE, {"version": FORMAT_VERSION, **data})


def load(dep_dir: Path) -> Deployment:
    path = dep_dir / DEPLOYMENT_FILE
    try:
        data = json.loads(path.read_text())
        if data.pop("version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError("unknown format version")
        functions = {name: FunctionTarget(**fn) for name, fn in data.pop("functions").items()}
        pf = Path(data.pop("pipeline_file"))
        return Deployment(
            pipeline_file=pf if pf.is_absolute() else dep_dir / pf, functions=functions, **data
        )
    except FileNotFoundError as exc:
        raise DeploymentError(f"no deployment at {dep_dir} ({path} is missing)") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DeploymentError(f"cannot read {path}: {exc}") from exc


def stamp(dep_dir: Path) -> tuple[int, int, int] | None:
    """Changes whenever deployment.json is rewritten (a rename changes the inode)."""
    try:
        st = (dep_dir / DEPLOYMENT_FILE).stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def write_state(
    dep_dir: Path,
    dep: Deployment,
    desired: dict[str, int],
    instances: dict[str, dict[int, Instance]],
    lags: dict[str, tuple[int, int]],
    events: list[dict[str, Any]],
) -> None:
    """supervisor.json: the supervisor's pid and heartbeat (wall clock), the generation
    it runs, per function {desired, config_hash, lag, end_offsets (null unless
    autoscaling), instances: [Instance.to_json()]}, recent scale events (autoscale)."""
    functions = {}
    for name, slots in instances.items():
        target = dep.functions.get(name)
        lag, end = lags.get(name, (None, None))
        functions[name] = {"desired": desired[name], "lag": lag, "end_offsets": end}
        functions[name] |= {"config_hash": target.config_hash if target else None}
        functions[name] |= {"instances": [slots[i].to_json() for i in sorted(slots)]}
    head = {"pid": os.getpid(), "heartbeat": time.time(), "pipeline": dep.pipeline}
    head |= {"generation": dep.generation, "autoscale": dep.autoscale}
    write_json(dep_dir / STATE_FILE, {**head, "functions": functions, "scale_events": events})


def read_state(dep_dir: Path) -> dict[str, Any] | None:
    """The supervisor's last written state (see snf.ops.supervisor), or None."""
    try:
        return json.loads((dep_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def read_pid(dep_dir: Path) -> int | None:
    try:
        return int((dep_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _cmdline(pid: Any) -> bytes:
    """A process's command line; empty once it is gone or a zombie."""
    try:
        return Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, TypeError, ValueError):
        return b""


def supervisor_alive(dep_dir: Path) -> bool:
    """Whether the recorded supervisor still runs; the cmdline check guards pid reuse."""
    pid = read_pid(dep_dir)
    return pid is not None and b"supervise" in _cmdline(pid)


def kill_orphans(dep_dir: Path, timeout: float = 5.0) -> list[int]:
    """SIGKILL the workers a dead supervisor left running (they run in their own
    sessions and hold their datadirs' RocksDB locks); wait until they are gone.
    A pid counts only if its cmdline names our workers directory (pids get reused)."""
    killed, marker = [], f"{workers_dir(dep_dir)}/".encode()
    for fn in ((read_state(dep_dir) or {}).get("functions") or {}).values():
        for pid in (inst.get("pid") for inst in fn.get("instances", [])):
            if marker in _cmdline(pid) and pid != os.getpid():
                with contextlib.suppress(OSError):  # it may have died meanwhile
                    os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    deadline = time.monotonic() + timeout
    while any(map(_cmdline, killed)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed
