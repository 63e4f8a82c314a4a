"""snf.ops.deploy without a broker: the plan's diff, config hashes, readiness from files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from snf.ops import deploy as dep
from snf.ops import deployment_dir as dp
from snf.ops.deployment_dir import Deployment
from snf.pipeline.loader import load_pipeline, parse_pipeline
from snf.runtime.worker.files import Assignment

REPO = Path(__file__).resolve().parents[2]
TAP = REPO / "pipelines" / "tap.yaml"


def _fake_cluster(
    monkeypatch: pytest.MonkeyPatch, existing: dict[str, dict[str, Any]], brokers: int = 1
) -> None:
    fake = lambda brokers, topics: (existing, {"snf.tap.ids": {}})  # noqa: E731
    monkeypatch.setattr(dep.admin, "describe_cluster", fake)
    monkeypatch.setattr(dep.admin, "cluster_replication", lambda _: min(3, brokers))


@pytest.mark.parametrize(("brokers", "expected"), [(1, 1), (2, 2), (5, 3)])
def test_replication_left_to_the_cluster_is_min_3_brokers(
    monkeypatch: pytest.MonkeyPatch, brokers: int, expected: int
) -> None:
    _fake_cluster(monkeypatch, {}, brokers)
    text = TAP.read_text()
    assert "replication" not in text
    p = dep.plan(parse_pipeline(text), "b:9092")
    assert p.cluster_replication and p.pipeline.spec.replication == expected
    assert {t.want.replication for t in p.topics} == {expected}
    assert p.to_json()["replication"] == expected
    assert parse_pipeline(text).topic_specs()["snf.tap.ingress"].replication == 1  # no cluster


def test_an_explicit_replication_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cluster(monkeypatch, {}, brokers=5)
    text = TAP.read_text().replace("name: tap\n", "name: tap\nreplication: 2\n", 1)
    p = dep.plan(parse_pipeline(text), "b:9092")
    assert not p.cluster_replication and p.pipeline.spec.replication == 2
    assert {t.want.replication for t in p.topics} == {2}


def test_plan_on_an_empty_cluster_creates_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cluster(monkeypatch, {})
    p = dep.plan(load_pipeline(TAP), "b:9092")
    assert {t.action for t in p.topics} == {"create"}
    kinds = {t.topic: t.kind for t in p.topics}
    assert kinds["snf.tap.ingress"] == "ingress" and kinds["snf.tap.fw.in"] == "input"
    assert kinds["snf.tap.fw-state-changelog"] == "changelog"
    assert kinds["tap-alerts"] == kinds["snf.tap.egress"] == "terminal"
    assert [g.exists for g in p.groups] == [True, False, False, False, False]  # ids exists
    assert p.to_json()["topics"][0]["configs"]["min.insync.replicas"] == "1"


def test_plan_diff_and_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = load_pipeline(TAP)
    specs = pipeline.topic_specs()
    existing = {
        t: {"partitions": s.partitions, "replication": 1, "configs": dict(s.configs)}
        for t, s in specs.items()
    }
    existing["snf.tap.fw.in"]["partitions"] = 8
    existing["snf.tap.fw-state-changelog"]["configs"].pop("cleanup.policy")  # not compacted
    _fake_cluster(monkeypatch, existing)
    p = dep.plan(pipeline, "b:9092")
    by = {t.topic: t for t in p.topics}
    assert by["snf.tap.ingress"].action == "ok"
    assert by["snf.tap.fw.in"].differences == ("partitions 8 -> 4",) and by["snf.tap.fw.in"].refused
    assert by["snf.tap.fw-state-changelog"].differences == ("cleanup.policy delete -> compact",)
    assert not by["snf.tap.fw-state-changelog"].refused  # reported, not refused
    with pytest.raises(dep.DeployError, match=r"(?s)refusing.*snf.tap.fw.in: partitions 8 -> 4"):
        dep.apply_topics(p)


def test_config_hash_follows_config_and_wiring_not_instances() -> None:
    text = TAP.read_text()
    base = {f.name: dep.config_hash(f) for f in parse_pipeline(text).functions}
    scaled = parse_pipeline(text.replace("{min: 1, max: 4, lag_threshold: 20, cooldown: 30}", "2"))
    assert {f.name: dep.config_hash(f) for f in scaled.functions} == base
    changed = parse_pipeline(text.replace('rate: "500pps"', 'rate: "400pps"'))
    assert {f.name for f in changed.functions if dep.config_hash(f) != base[f.name]} == {"police"}
    rewired = parse_pipeline(
        text.replace("{from: flows.pass, to: discard}", "{from: flows.pass, to: egress}")
    )
    assert {f.name for f in rewired.functions if dep.config_hash(f) != base[f.name]} == {"flows"}


def _state(d: Path, instances: list[dict[str, Any]], desired: int, want: str = "h1") -> None:
    d.mkdir(parents=True, exist_ok=True)
    target = dp.FunctionTarget("fw", desired, config_hash=want)
    dp.save(d, Deployment("p", d / "pipeline.yaml", "b", functions={"fw": target}))
    dp.write_json(
        d / dp.STATE_FILE, {"functions": {"fw": {"desired": desired, "instances": instances}}}
    )


def _assigned(d: Path, i: int, parts: list[int], at: float) -> None:
    files = dp.worker_files(d, "fw", i)
    files.datadir.mkdir(parents=True, exist_ok=True)
    files.write_assignment(Assignment(parts, at))


def test_readiness_needs_fresh_disjoint_assignments_of_the_current_config(tmp_path: Path) -> None:
    now = time.time()
    run = {"state": "running", "config_hash": "h1"}
    _state(
        tmp_path,
        [{"instance": 0, "started": now - 10, **run}, {"instance": 1, "started": now - 5, **run}],
        2,
    )
    _assigned(tmp_path, 0, [0, 1, 2, 3], now - 8)  # from before instance 1 joined
    _assigned(tmp_path, 1, [2, 3], now - 1)
    assert dep.assignment(tmp_path, "fw") == (set(), 2, 2)
    _assigned(tmp_path, 0, [0, 1, 2, 3], now)  # fresh but overlapping: a stale view
    assert dep.assignment(tmp_path, "fw")[0] == set()
    _assigned(tmp_path, 0, [0, 1], now)
    assert dep.assignment(tmp_path, "fw") == ({0, 1, 2, 3}, 2, 2)
    # A redeploy changed the config: old-config instances do not count until replaced.
    _state(
        tmp_path,
        [{"instance": 0, "started": now - 10, **run}, {"instance": 1, "started": now - 5, **run}],
        2,
        want="h2",
    )
    assert dep.assignment(tmp_path, "fw")[1] == 0
