"""deploy/grafana/snf-dashboard.json: a loadable dashboard whose every query names only
metrics the worker exports (snf.runtime.worker.metrics.FAMILIES)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snf.runtime.worker.metrics import FAMILIES, sample_names

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "snf-dashboard.json"
METRIC = re.compile(r"\bsnf_[a-z0-9_]+")  # snf names no label with this prefix
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and template variable."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            yield f"variable {var['name']}", var["query"]["query"]


def test_it_is_a_current_dashboard_with_its_variables(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"pipeline", "function"} <= variables.keys()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_query_names_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = sample_names()
    seen = set()
    for where, expr in queries(dashboard):
        names = set(METRIC.findall(expr))
        assert names, f"{where}: no snf metric in {expr!r}"
        assert names <= exported, f"{where}: {sorted(names - exported)} not exported"
        seen |= names
    # The panels the dashboard promises: rates in and out, drops, stage times, lag, state.
    wanted = {
        "snf_packets_in_total",
        "snf_packets_out_total",
        "snf_stage_seconds_bucket",
        "snf_consumer_lag_messages",
        "snf_state_writes_total",
    }
    assert wanted <= seen, wanted - seen


def test_the_name_check_is_not_vacuous() -> None:
    assert "snf_packets_in_total" in sample_names()
    assert "snf_stage_seconds_bucket" in sample_names() and "snf_stage_seconds" in FAMILIES
    assert "snf_packets_in" not in sample_names()  # a family name without its suffix


def test_panels_query_the_chosen_datasource_and_pipeline(dashboard: dict[str, Any]) -> None:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert 'pipeline=~"$pipeline"' in target["expr"], panel["title"]
            assert 'function=~"$function"' in target["expr"], panel["title"]
