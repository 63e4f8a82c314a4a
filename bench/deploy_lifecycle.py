"""Benchmark: how long a deployed pipeline's lifecycle steps take.

Deploys pipelines/tap.yaml (five functions) under a private name and times,
through the same code as the `snf` commands:

deploy      topics + supervisor + every function owning its partitions
scale_out   fw 1 -> 3, until the three instances own all partitions
scale_in    fw 3 -> 1
roll        a changed config redeployed: every fw instance replaced, ready
kill        kill -9 of a worker -> restarted and owning its partitions again
throughput  the monitoring capture looped, replayed at top speed into the
            deployed pipeline, first publish to the flush out of every terminal

Usage: python bench/deploy_lifecycle.py [--brokers B] [--out bench/results/deploy.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from pathlib import Path

from snf.egress.collector import Collector
from snf.egress.sink import KafkaSink
from snf.ingress.publisher import BatchPublisher
from snf.ingress.replay import ReplayOptions, replay
from snf.kafka import cluster
from snf.ops import deployment_dir as dp
from snf.ops.deploy import deploy, scale, undeploy, wait_assigned
from snf.pipeline.loader import load_pipeline
from snf.pipeline.routing import plan_pipeline
from snf.wire import EndMarker

ROOT = Path(__file__).resolve().parents[1]


def _timed(action) -> float:
    t0 = time.perf_counter()
    action()
    return round(time.perf_counter() - t0, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", default=None)
    ap.add_argument("--loop", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "deploy.json")
    args = ap.parse_args()
    brokers = cluster.resolve_brokers(args.brokers) or cluster.up().bootstrap
    tmp = Path(tempfile.mkdtemp(prefix="snf-bench-deploy-"))
    os.environ["SNF_HOME"] = str(tmp / "home")  # deployments of its own
    name = f"tapbench{os.getpid() % 10000}"
    text = (ROOT / "pipelines" / "tap.yaml").read_text()
    text = text.replace("name: tap\n", f"name: {name}\n").replace("topic:tap-", f"topic:{name}-")
    path = tmp / "tap.yaml"
    path.write_text(text)
    pipeline = load_pipeline(path)
    d = dp.directory(name)
    out: dict = {"pipeline": "tap (5 functions, 4 partitions)", "brokers": brokers}
    try:
        out["deploy_s"] = _timed(lambda: deploy(path, brokers))
        out["scale_out_1_to_3_s"] = _timed(lambda: scale(d, "fw", 3))
        out["scale_in_3_to_1_s"] = _timed(lambda: scale(d, "fw", 1))
        changed = text.replace(
            "      default: drop\n", "      default: drop\n      non_ip: allow\n", 1
        )
        assert changed != text
        path.write_text(changed)

        def roll() -> None:
            deploy(path, brokers)  # returns once the new config runs everywhere

        out["rolling_update_fw_s"] = _timed(roll)
        victim = next(
            i["pid"]
            for i in (dp.read_state(d) or {})["functions"]["police"]["instances"]
            if i.get("pid")
        )

        def kill() -> None:
            os.kill(victim, signal.SIGKILL)
            time.sleep(0.6)  # the supervisor notices the exit
            wait_assigned(d, pipeline, 120)

        out["kill9_to_reassigned_s"] = _timed(kill)
        publisher = BatchPublisher(brokers, pipeline.ingress_topic)
        keyers = plan_pipeline(pipeline).ingress_hop.keyers
        opts = ReplayOptions(progress=False, loop=args.loop)
        capture = ROOT / "pipelines" / "captures" / "monitoring.pcapng"
        sink = KafkaSink.of(brokers, pipeline)
        t0 = time.perf_counter()
        s = replay([capture], pipeline.partitions, publisher, opts, keyers=keyers)
        publisher.send_end_markers(EndMarker("bench", s.last_ts_ns), pipeline.partitions)
        publisher.close()
        assert sink.collect(Collector(), 120, end_id="bench"), sink.unended("bench")
        seconds = time.perf_counter() - t0
        sink.close()
        out["throughput"] = {
            "packets": s.packets,
            "seconds": round(seconds, 2),
            "pps": round(s.packets / seconds),
        }
    finally:
        undeploy(d, delete_topics=True)
    print(json.dumps(out, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
