"""Lag-driven instance counts, KEDA-style: a pure decision plus a little memory.

`decide()` is pure: policy, the memory of the previous calls (ScaleState), the
group's lag and the input topic's end offsets in, a count and a new state out.

- lag > 0: clamp(ceil(lag / lag_threshold), min, max) instances. Scaling up is
  immediate: lag only grows while we wait.
- Scaling down waits until the lag-derived count has stayed below the current one
  for `stabilization` seconds, then goes to the highest count wanted during that
  window (as the Kubernetes HPA does), so a lag that dips between batches does
  not cause a rebalance storm: every membership change stops the whole group.
- Idle: with min 0, lag 0 and end offsets unchanged for `cooldown` seconds, 0.
- Cold start from 0 as soon as there is lag or the end offsets move: to
  max(1, min), or more if the lag already asks for more.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from snf.kafka.errors import BrokerError
from snf.kafka.lag import LagProbe

if TYPE_CHECKING:
    from snf.ops.deployment_dir import Deployment, FunctionTarget

# (deployment, function) -> (lag, end offsets total), or None when unknown
LagSource = Callable[["Deployment", "FunctionTarget"], tuple[int, int] | None]

__all__ = [
    "Autoscaler",
    "Decision",
    "GroupLagSource",
    "LagSource",
    "Policy",
    "ScaleEvent",
    "ScaleState",
    "decide",
    "policy_of",
]

log = logging.getLogger("snf.ops.autoscale")


@dataclass(frozen=True)
class Policy:
    min_instances: int
    max_instances: int
    lag_threshold: int
    cooldown: float
    stabilization: float = 10.0


@dataclass(frozen=True)
class ScaleState:
    current: int
    last_end: int | None = None  # end offsets total at the previous call
    end_moved_at: float | None = None  # when new input last arrived (or first seen)
    low_since: float | None = None  # since when the lag asks for fewer instances
    low_peak: int = 0  # the most instances asked for since low_since


@dataclass(frozen=True)
class Decision:
    count: int
    reason: str
    state: ScaleState


def policy_of(target: FunctionTarget, stabilization: float = 10.0) -> Policy:
    t = target
    return Policy(t.min_instances, t.max_instances, t.lag_threshold, t.cooldown, stabilization)


def _lag_count(policy: Policy, lag: int) -> int:
    threshold = max(policy.lag_threshold, 1)
    floor = max(policy.min_instances, 1)  # instances exist: keep one until idle says 0
    return max(floor, min(math.ceil(lag / threshold), policy.max_instances))


def decide(policy: Policy, state: ScaleState, lag: int, end_total: int, now: float) -> Decision:
    moved = state.last_end is not None and end_total != state.last_end
    end_moved_at = now if moved or state.end_moved_at is None else state.end_moved_at
    st = replace(state, last_end=end_total, end_moved_at=end_moved_at)
    cur = st.current
    top = max(policy.max_instances, policy.min_instances)

    def to(count: int, reason: str) -> Decision:
        return Decision(count, reason, replace(st, current=count, low_since=None, low_peak=0))

    if cur > top:
        return to(top, f"above max {top}")
    if cur < policy.min_instances:
        return to(policy.min_instances, f"below min {policy.min_instances}")
    if cur == 0:
        if lag > 0 or moved:
            return to(min(_lag_count(policy, lag), top), f"cold start (lag {lag})")
        return Decision(0, "idle", st)
    if policy.min_instances == 0 and lag == 0 and now - end_moved_at >= policy.cooldown:
        return to(0, f"idle for {now - end_moved_at:.0f}s")
    want = min(_lag_count(policy, lag), top)
    if want > cur:
        return to(want, f"lag {lag} > {policy.lag_threshold} x {cur}")
    if want == cur:
        return Decision(cur, "steady", replace(st, low_since=None, low_peak=0))
    low_since = st.low_since if st.low_since is not None else now
    peak = max(st.low_peak, want)
    if now - low_since >= policy.stabilization:
        return to(peak, f"lag {lag} low for {now - low_since:.0f}s")
    return Decision(cur, "stabilizing", replace(st, low_since=low_since, low_peak=peak))


@dataclass(frozen=True)
class ScaleEvent:
    time: float  # wall clock, for people reading supervisor.json
    function: str
    from_count: int
    to_count: int
    reason: str

    def to_json(self) -> dict[str, object]:
        return {
            "time": self.time,
            "function": self.function,
            "from": self.from_count,
            "to": self.to_count,
            "reason": self.reason,
        }


class Autoscaler:
    """Per function ScaleState, the last lag seen, and the recent scale events."""

    def __init__(self, wall: Callable[[], float] = time.time, keep_events: int = 100) -> None:
        self.states: dict[str, ScaleState] = {}
        self.lags: dict[str, tuple[int, int]] = {}  # function -> (lag, end offsets total)
        self.events: deque[ScaleEvent] = deque(maxlen=keep_events)
        self._wall = wall

    def current(self, function: str) -> int | None:
        state = self.states.get(function)
        return None if state is None else state.current

    def set(self, function: str, count: int) -> None:
        """Take a count from outside (first sight, `snf scale`) as the current one."""
        old = self.states.get(function)
        self.states[function] = replace(old, current=count) if old else ScaleState(count)

    def sync(self, old: Mapping[str, FunctionTarget], new: Mapping[str, FunctionTarget]) -> None:
        """Follow a reloaded deployment: a new or rescaled (`snf scale`) count wins."""
        for name, t in new.items():
            if name not in old or old[name].instances != t.instances:
                # Clamped now: the next decision would undo the excess after workers started.
                top = max(t.max_instances, t.min_instances)
                self.set(name, max(t.min_instances, min(t.instances, top)))
        for name in set(old) - set(new):
            self.states.pop(name, None)
            self.lags.pop(name, None)

    def step(self, function: str, policy: Policy, lag: int, end_total: int, now: float) -> int:
        state = self.states.setdefault(function, ScaleState(policy.min_instances))
        decision = decide(policy, state, lag, end_total, now)
        self.states[function] = decision.state
        if decision.count != state.current:
            event = ScaleEvent(
                self._wall(), function, state.current, decision.count, decision.reason
            )
            self.events.append(event)
            log.info("%s: %d -> %d (%s)", function, state.current, decision.count, event.reason)
        return decision.count

    def observe(self, dep: Deployment, source: LagSource, now: float) -> None:
        """Ask `source` for every function's lag and step those it could answer for."""
        for name, target in dep.functions.items():
            if (got := source(dep, target)) is not None:
                self.lags[name] = got
                self.step(name, policy_of(target), got[0], got[1], now)


class GroupLagSource:
    """The supervisor's lag source: a function's group lag on its input topic.

    Keeps one LagProbe open; answers None (logged once per distinct error) when the
    broker cannot say, so that no decision is taken on a guess.
    """

    def __init__(self) -> None:
        self._probe: LagProbe | None = None
        self._said: dict[str, str] = {}

    def __call__(self, dep: Deployment, target: FunctionTarget) -> tuple[int, int] | None:
        if self._probe is None or self._probe.bootstrap != dep.brokers:
            self.close()
            self._probe = LagProbe(dep.brokers, timeout=2.0)
        try:
            info = self._probe.group_lag(target.group_id, target.input_topic)
        except BrokerError as exc:
            if self._said.get(target.name) != str(exc):
                log.warning("no lag for %s: %s", target.name, exc)
            self._said[target.name] = str(exc)
            return None
        self._said.pop(target.name, None)
        return info.lag, info.end_total

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
