"""`snf chaos NAME --kill FN [--at 10s] ...`: kill a deployed pipeline's workers in turn.

For live traffic (docs/LIVE.md): there is no capture to replay and compare,
the check is the traffic itself (a download completes, a connection lives).
Each --kill SIGKILLs one running instance of the function (seeded pick when
no instance is given) `--at` seconds after the command started, or else as
soon as the previous victim's replacement runs; the supervisor restarts it.
Reported per kill: the pid, and the seconds until a new worker was running.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from snf.errors import ConfigError, SnfError
from snf.ops.status import deployment_status

__all__ = ["DeployedKill", "duration_seconds", "kill_in_turn", "parse_deployed_kills"]


@dataclass
class DeployedKill:
    function: str
    instance: int | None
    at: float | None = None  # seconds after start; None: once the previous one is back
    pid: int | None = None
    fired_after: float | None = None  # seconds after start
    back_after: float | None = None  # seconds from the kill to a new running worker

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ms|s|m)?")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0}


def duration_seconds(text: str) -> float | None:
    """ "15s", "500ms", "2m" or "15" -> seconds; None when it is not a duration."""
    m = _DURATION.fullmatch(text.strip())
    return None if m is None else float(m[1]) * _UNITS[m[2]]


def _seconds(text: str) -> float:
    seconds = duration_seconds(text)
    if seconds is None:
        raise ConfigError(f"--at {text}: expected seconds since the start, such as 10s")
    return seconds


def parse_deployed_kills(items: Sequence[tuple[str, str]]) -> list[DeployedKill]:
    kills: list[DeployedKill] = []
    for flag, value in items:
        if flag == "kill":
            function, _, inst = value.partition(":")
            if not function or (inst and not inst.isdigit()):
                raise ConfigError(f"--kill {value}: expected FUNCTION or FUNCTION:INSTANCE")
            kills.append(DeployedKill(function, int(inst) if inst else None))
        elif flag == "at" and kills:
            kills[-1].at = _seconds(value)
        else:
            raise ConfigError(
                f"--{flag} {value}: a deployed pipeline takes --kill FUNCTION [--at 10s] only"
            )
    if not kills:
        raise ConfigError("no fault to inject: give --kill FUNCTION")
    return kills


def _running(dep_dir: Path, function: str) -> list[dict[str, Any]]:
    functions = deployment_status(dep_dir, with_lag=False)["functions"]
    if function not in functions:
        raise ConfigError(f"--kill {function}: no such function (have {', '.join(functions)})")
    return [i for i in functions[function]["instances"] if i.get("state") == "running"]


def kill_in_turn(
    dep_dir: Path,
    kills: list[DeployedKill],
    seed: int,
    say: Callable[[str], None],
    timeout: float = 120.0,
) -> list[DeployedKill]:
    rng = random.Random(seed)
    start = time.monotonic()
    for kill in kills:
        if kill.at is not None:
            time.sleep(max(0.0, start + kill.at - time.monotonic()))
        victims = _wait_for(lambda k=kill: _running(dep_dir, k.function), timeout)
        if kill.instance is None:
            kill.instance = rng.choice(victims)["instance"]
        victim = next((i for i in victims if i["instance"] == kill.instance), None)
        if victim is None or not victim.get("pid"):
            raise SnfError(f"--kill {kill.function}:{kill.instance}: not running")
        kill.pid = victim["pid"]
        os.kill(victim["pid"], signal.SIGKILL)
        fired = time.monotonic()
        kill.fired_after = round(fired - start, 2)
        say(f"killed {kill.function}:{kill.instance} (pid {kill.pid}) at {kill.fired_after}s")

        def replaced(k: DeployedKill = kill) -> list[dict[str, Any]]:
            return [
                i
                for i in _running(dep_dir, k.function)
                if i["instance"] == k.instance and i.get("pid") not in (None, k.pid)
            ]

        _wait_for(replaced, timeout)
        kill.back_after = round(time.monotonic() - fired, 2)
        say(f"{kill.function}:{kill.instance} running again after {kill.back_after}s")
    return kills


def _wait_for(found: Callable[[], list[dict[str, Any]]], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while not (got := found()):
        if time.monotonic() > deadline:
            raise SnfError(f"no running worker after {timeout:.0f}s (see `snf status`)")
        time.sleep(0.2)
    return got
