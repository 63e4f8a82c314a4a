"""Autoscaling decisions on made-up lag and end offsets: no Kafka, no processes."""

from __future__ import annotations

from snf.ops.autoscale import Autoscaler, Policy, ScaleState, decide, policy_of
from snf.ops.deployment_dir import FunctionTarget

POLICY = Policy(min_instances=1, max_instances=4, lag_threshold=100, cooldown=30.0)
ELASTIC = Policy(min_instances=0, max_instances=4, lag_threshold=100, cooldown=30.0)


def run(policy: Policy, current: int, samples: list[tuple[float, int, int]]) -> list[int]:
    """Feed (now, lag, end_total) samples through decide(); the count after each."""
    state, counts = ScaleState(current), []
    for now, lag, end in samples:
        decision = decide(policy, state, lag, end, now)
        state = decision.state
        assert state.current == decision.count
        counts.append(decision.count)
    return counts


def test_lag_sets_the_count_within_min_and_max() -> None:
    assert decide(POLICY, ScaleState(1), 250, 0, 0.0).count == 3  # ceil(250 / 100)
    assert decide(POLICY, ScaleState(1), 100, 0, 0.0).count == 1
    assert decide(POLICY, ScaleState(1), 101, 0, 0.0).count == 2
    assert decide(POLICY, ScaleState(1), 1_000_000, 0, 0.0).count == 4  # never above max
    assert decide(POLICY, ScaleState(1), 0, 0, 0.0).count == 1  # never below min


def test_scaling_up_is_immediate_scaling_down_waits_for_the_window() -> None:
    samples = [(0.0, 400, 0), (1.0, 50, 0), (5.0, 50, 0), (9.9, 50, 0), (10.0, 50, 0)]
    assert run(POLICY, 1, samples) == [4, 4, 4, 4, 4]  # low since 1.0: not yet 10 s
    assert run(POLICY, 1, [*samples, (11.0, 50, 0)]) == [4, 4, 4, 4, 4, 1]


def test_scale_down_goes_to_the_highest_count_wanted_in_the_window() -> None:
    samples = [(0.0, 10, 0), (3.0, 250, 0), (6.0, 10, 0), (10.0, 10, 0)]
    assert run(POLICY, 4, samples) == [4, 4, 4, 3]  # 3 was wanted at t=3, not 1


def test_a_dip_back_to_the_current_count_restarts_the_window() -> None:
    samples = [(0.0, 10, 0), (5.0, 400, 0), (6.0, 10, 0), (14.0, 10, 0), (16.0, 10, 0)]
    assert run(POLICY, 4, samples) == [4, 4, 4, 4, 1]


def test_idle_scales_to_zero_only_with_min_zero_after_the_cooldown() -> None:
    idle = [(t, 0, 500) for t in (0.0, 10.0, 29.0, 30.0)]
    assert run(ELASTIC, 1, idle) == [1, 1, 1, 0]
    assert run(POLICY, 1, idle) == [1, 1, 1, 1]  # min 1: never zero


def test_new_input_or_lag_postpones_idling() -> None:
    moving = [(0.0, 0, 500), (20.0, 0, 600), (45.0, 0, 600), (50.0, 0, 600)]
    assert run(ELASTIC, 1, moving) == [1, 1, 1, 0]  # cooldown counts from t=20
    lagging = [(0.0, 5, 500), (40.0, 5, 500), (41.0, 0, 500)]
    assert run(ELASTIC, 1, lagging) == [1, 1, 0]


def test_cold_start_from_zero() -> None:
    assert run(ELASTIC, 0, [(0.0, 0, 500), (100.0, 0, 500)]) == [0, 0]
    assert run(ELASTIC, 0, [(0.0, 0, 500), (1.0, 0, 501)]) == [0, 1]  # input arrived
    assert run(ELASTIC, 0, [(0.0, 3, 500)]) == [1]  # a backlog from before
    assert run(ELASTIC, 0, [(0.0, 350, 500)]) == [4]  # the lag already asks for 4
    assert run(Policy(2, 4, 100, 30.0), 0, [(0.0, 0, 0)]) == [2]  # min 2: never at 0


def test_min_and_max_changes_apply_at_once() -> None:
    assert decide(Policy(1, 2, 100, 30.0), ScaleState(4), 1000, 0, 0.0).count == 2
    assert decide(Policy(3, 4, 100, 30.0), ScaleState(1), 0, 0, 0.0).count == 3


def test_autoscaler_records_events_and_follows_manual_scaling() -> None:
    scaler = Autoscaler(wall=lambda: 1234.5)
    target = FunctionTarget("fw", instances=1, min_instances=0, max_instances=3, lag_threshold=10)
    scaler.sync({}, {"fw": target})
    assert scaler.current("fw") == 1
    assert scaler.step("fw", policy_of(target), 25, 100, 0.0) == 3
    assert scaler.step("fw", policy_of(target), 25, 100, 1.0) == 3  # no event: unchanged
    (event,) = scaler.events
    assert event.to_json() == {
        "time": 1234.5,
        "function": "fw",
        "from": 1,
        "to": 3,
        "reason": "lag 25 > 10 x 1",
    }
    rescaled = FunctionTarget("fw", instances=2, min_instances=0, max_instances=3)
    scaler.sync({"fw": target}, {"fw": rescaled})  # `snf scale fw 2`
    assert scaler.current("fw") == 2
    too_many = FunctionTarget("fw", instances=9, min_instances=0, max_instances=3)
    scaler.sync({"fw": rescaled}, {"fw": too_many})
    assert scaler.current("fw") == 3  # never above max, not even for a moment
    scaler.sync({"fw": too_many}, {})
    assert scaler.current("fw") is None
