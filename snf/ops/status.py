"""`snf status`: what a deployed pipeline runs, from its deployment directory and Kafka.

Per function: desired and running instances, and per instance its pid, state,
restarts, partitions (assignment.json), packets in/out per second and the URL
of its Prometheus metrics (stats.json, written by the worker), plus the group's
consumer lag.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.table import Table

from snf.errors import SnfError
from snf.ops import deployment_dir as dp

__all__ = ["deployment_status", "list_deployments", "metrics_url", "status_tables"]

STALE = 10.0  # seconds: an older stats.json or heartbeat means "not reporting"
METRICS_HOST = "127.0.0.1"  # local workers listen on every interface; status runs beside them


def list_deployments() -> list[str]:
    root = dp.deployments_root()
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / dp.DEPLOYMENT_FILE).exists())


def _assigned(dep_dir: Path, function: str, instance: int) -> list[int] | None:
    found = dp.worker_files(dep_dir, function, instance).assignment()
    return None if found is None else found.partitions


def metrics_url(stats: dict[str, Any] | None, pid: int | None) -> str | None:
    """Where the worker of process `pid` serves /metrics (None: unknown, or an older
    process's stats.json)."""
    if stats is None or pid is None or stats.get("pid") != pid:
        return None
    port = stats.get("health_port")
    return f"http://{METRICS_HOST}:{port}/metrics" if isinstance(port, int) else None


def _lag(brokers: str, group: str, topic: str) -> int | None:
    from snf.kafka.lag import group_lag

    try:
        return group_lag(brokers, group, topic, retries=1).lag
    except (SnfError, OSError):
        return None
    except Exception:  # a broker mid-restart may answer with anything: status must not die
        return None


def deployment_status(dep_dir: Path, with_lag: bool = True) -> dict[str, Any]:
    dep = dp.load(dep_dir)
    state = dp.read_state(dep_dir) or {}
    now = time.time()
    alive = dp.supervisor_alive(dep_dir)
    functions = {}
    for name, target in dep.functions.items():
        fs = (state.get("functions") or {}).get(name) or {}
        instances = []
        in_pps = out_pps = 0.0
        for inst in fs.get("instances", []):
            i = inst["instance"]
            stats = dp.worker_files(dep_dir, name, i).stats()
            fresh = stats is not None and now - stats.get("time", 0) < STALE
            if fresh and inst.get("state") == "running" and stats.get("pid") == inst.get("pid"):
                in_pps += stats["in_pps"]
                out_pps += stats["out_pps"]
            instances.append(
                {
                    **inst,
                    "partitions": _assigned(dep_dir, name, i),
                    "in_pps": stats["in_pps"] if fresh else None,
                    "out_pps": stats["out_pps"] if fresh else None,
                    "metrics_url": metrics_url(stats, inst.get("pid")),
                }
            )
        lag = _lag(dep.brokers, target.group_id, target.input_topic) if with_lag else None
        functions[name] = {
            "desired": fs.get("desired", target.instances),
            "running": sum(i.get("state") == "running" for i in instances),
            "min": target.min_instances,
            "max": target.max_instances,
            "lag": lag,
            "in_pps": round(in_pps, 1),
            "out_pps": round(out_pps, 1),
            "restarts": sum(i.get("restarts", 0) for i in instances),
            "instances": instances,
        }
    return {
        "pipeline": dep.pipeline,
        "brokers": dep.brokers,
        "generation": dep.generation,
        "autoscale": dep.autoscale,
        "supervisor": {
            "pid": dp.read_pid(dep_dir),
            "alive": alive,
            "heartbeat_age": round(now - state["heartbeat"], 1) if "heartbeat" in state else None,
        },
        "directory": str(dep_dir),
        "functions": functions,
        "scale_events": state.get("scale_events", [])[-10:],
    }


def status_tables(status: dict[str, Any]) -> list[Table]:
    sup = status["supervisor"]
    health = "[green]supervised[/]" if sup["alive"] else "[red]supervisor not running[/]"
    scaling = ", autoscaled on lag" if status["autoscale"] else ""
    title = (
        f"{status['pipeline']} on {status['brokers']}: generation {status['generation']}, "
        f"{health}{scaling}"
    )
    table = Table(title=title)
    for col in ("function", "instances", "lag", "in pkt/s", "out pkt/s", "restarts"):
        table.add_column(col, justify="left" if col == "function" else "right")
    detail = Table(title="instances")
    for col in ("function", "#", "pid", "state", "partitions", "in pkt/s", "restarts"):
        detail.add_column(col, justify="left" if col in ("function", "state") else "right")
    for name, fn in status["functions"].items():
        bounds = f" ({fn['min']}..{fn['max']})" if status["autoscale"] else ""
        table.add_row(
            name,
            f"{fn['running']}/{fn['desired']}{bounds}",
            "?" if fn["lag"] is None else str(fn["lag"]),
            f"{fn['in_pps']:,.0f}",
            f"{fn['out_pps']:,.0f}",
            str(fn["restarts"]),
        )
        for inst in fn["instances"]:
            parts = inst["partitions"]
            detail.add_row(
                name,
                str(inst["instance"]),
                str(inst.get("pid") or "-"),
                inst.get("state", "?"),
                "-" if parts is None else ",".join(map(str, parts)) or "none",
                "-" if inst["in_pps"] is None else f"{inst['in_pps']:,.0f}",
                str(inst.get("restarts", 0)),
            )
    return [table, detail]
