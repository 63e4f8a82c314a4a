"""`snf chaos NAME --kill FN`: kills in turn, each after the previous victim is back."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

import snf.ops.deployed_chaos as chaos
from snf.errors import ConfigError


def test_kills_parse_in_order_with_their_times() -> None:
    kills = chaos.parse_deployed_kills([("kill", "fw"), ("at", "2s"), ("kill", "nat:1")])
    assert [(k.function, k.instance, k.at) for k in kills] == [("fw", None, 2.0), ("nat", 1, None)]
    for bad, message in (
        ([("kill", "fw:x")], "expected FUNCTION or FUNCTION:INSTANCE"),
        ([("stop", "fw")], "a deployed pipeline takes --kill FUNCTION [--at 10s] only"),
        ([("at", "3s")], "a deployed pipeline takes"),
        ([], "no fault to inject"),
    ):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            chaos.parse_deployed_kills(bad)


def test_each_kill_waits_for_the_replacement_before_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pids = {"fw": 100, "nat": 200}
    killed: list[tuple[int, int]] = []

    def status(dep_dir: Path, with_lag: bool = True) -> dict[str, Any]:
        return {
            "functions": {
                fn: {"instances": [{"instance": 0, "pid": pid, "state": "running"}]}
                for fn, pid in pids.items()
            }
        }

    def kill(pid: int, sig: int) -> None:
        killed.append((pid, sig))
        for fn, p in pids.items():
            if p == pid:
                pids[fn] = pid + 1  # the supervisor's replacement
        assert len(killed) == 1 or pids["fw"] == 101  # nat only after fw is back

    monkeypatch.setattr(chaos, "deployment_status", status)
    monkeypatch.setattr(chaos.os, "kill", kill)
    said: list[str] = []
    done = chaos.kill_in_turn(
        Path("x"), chaos.parse_deployed_kills([("kill", "fw"), ("kill", "nat")]), 1, said.append
    )
    assert killed == [(100, signal.SIGKILL), (200, signal.SIGKILL)]
    assert [(k.pid, k.instance) for k in done] == [(100, 0), (200, 0)]
    assert all(k.back_after is not None and k.back_after >= 0 for k in done)
    assert said[0].startswith("killed fw:0 (pid 100)")
    with pytest.raises(ConfigError, match="no such function"):
        chaos.kill_in_turn(Path("x"), chaos.parse_deployed_kills([("kill", "lb")]), 1, said.append)
