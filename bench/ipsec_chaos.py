"""Benchmark: the long ipsec chaos run. kill -9 of the encrypting worker, many times.

The case of tests/integration/test_ipsec_chaos.py (gateway A `encrypt` seals
into two SAs, gateway B `decrypt` opens), run --runs times with --kills kills
each of A's worker at seeded shares of the replay. Each run is `snf chaos` in
a subprocess with --keep; then every ESP packet A sent, a redo's copies
included, is read back from the topic between the two gateways
(snf.harness.esp_audit). A run passes when the verdict is clean (B's output
equals --local: nothing lost, doubled, reordered) and the audit finds no
(SPI, sequence number) twice and no number going back.

Usage: python bench/ipsec_chaos.py [--brokers B] [--runs 6] [--kills 2] [--seed 1]
                                   [--packets 24000] [--pps 2000]
                                   [--out bench/results/ipsec_chaos.json]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from provenance import code_state  # noqa: E402

from snf.harness.esp_audit import audit_topic  # noqa: E402
from snf.kafka import cluster  # noqa: E402
from snf.kafka.admin import delete_topics, topic_partitions  # noqa: E402
from tests import ipsec_chaos  # noqa: E402

SNF = str(Path(sys.executable).parent / "snf")


def one_run(n: int, args: argparse.Namespace, brokers: str, rng: random.Random) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"ipsec-chaos-{n}-"))
    pipeline, capture, packets = ipsec_chaos.write_case(workdir, args.packets)
    shares = sorted(rng.uniform(0.1, 0.9) for _ in range(args.kills))
    argv = [SNF, "chaos", str(pipeline), str(capture), "-p", str(args.pps)]
    for share in shares:
        argv += ["--kill", "encrypt", "--at", f"{share:.0%}"]
    argv += ["--seed", str(rng.randrange(1 << 30)), "--keep", "--rundir", str(workdir / "run")]
    argv += ["--brokers", brokers, "--json", str(workdir / "chaos.json"), "--no-progress"]
    before = set(topic_partitions(brokers))
    started = time.monotonic()
    try:
        code = subprocess.run(argv, capture_output=True, text=True, check=False).returncode
        report = json.loads((workdir / "chaos.json").read_text())
        new = sorted(set(topic_partitions(brokers)) - before)
        wire = [t for t in new if ipsec_chaos.NAME in t and t.endswith(".decrypt.in")]
        audit = audit_topic(brokers, wire[0]).to_json() if len(wire) == 1 else {"error": new}
    finally:
        delete_topics(
            brokers, [t for t in set(topic_partitions(brokers)) - before if ipsec_chaos.NAME in t]
        )
    fired = [f for f in report["faults"] if f["observed"] == "killed"]
    return {
        "run": n,
        "workdir": str(workdir),
        "packets": packets,
        "kills_asked": len(shares),
        "kills_fired": len(fired),
        "kills_at_packet": [f["sent"] for f in fired],
        "exit_code": code,
        "verdict_clean": report["verdict"]["clean"],
        "verdict_totals": report["verdict"]["totals"],
        "restarts": report["restarts"],
        "audit": audit,
        "passed": code == 0 and report["verdict"]["clean"] and audit.get("clean") is True,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--brokers", default=None)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument(
        "--kills", type=int, default=2, help="kills per run (a run fails at 3 restarts)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--packets", type=int, default=24000)
    ap.add_argument("--pps", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ipsec_chaos.json")
    args = ap.parse_args()
    brokers = cluster.resolve_brokers(args.brokers) or cluster.up().bootstrap
    rng, runs, started = random.Random(args.seed), [], time.monotonic()
    for n in range(args.runs):
        runs.append(one_run(n, args, brokers, rng))
        r = runs[-1]
        print(
            f"run {n}: {r['kills_fired']}/{r['kills_asked']} kills at {r['kills_at_packet']}, "
            f"verdict clean {r['verdict_clean']}, audit {r['audit']}",
            flush=True,
        )
    fired = sum(r["kills_fired"] for r in runs)
    result = {
        "benchmark": "ipsec chaos: kill -9 of the encrypting worker; sequence numbers audited",
        "code": code_state(),
        "settings": {
            "packets_per_run": args.packets,
            "pps": args.pps,
            "seq_block": ipsec_chaos.BLOCK,
            "kills_per_run": args.kills,
            "seed": args.seed,
        },
        "runs": runs,
        "summary": {
            "runs": len(runs),
            "passed": sum(r["passed"] for r in runs),
            "kills_fired": fired,
            "repeats": sum(r["audit"].get("repeats", 0) for r in runs),
            "steps_back": sum(r["audit"].get("steps_back", 0) for r in runs),
            "esp_packets_audited": sum(r["audit"].get("packets", 0) for r in runs),
            "largest_gap": max((r["audit"].get("largest_gap", 0) for r in runs), default=0),
        },
        "seconds": round(time.monotonic() - started),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
