"""Benchmark: the long ipsec chaos runs. kill -9 of an ipsec worker, many times.

--case encrypt (bench/results/ipsec_chaos.json): the two-gateway case of
    tests/integration/test_ipsec_chaos.py (gateway A `encrypt` seals into two
    SAs, gateway B `decrypt` opens); A's worker is killed. After each run every
    ESP packet A sent, a redo's copies included, is read back from the topic
    between the two gateways (snf.harness.esp_audit). A run passes when the
    verdict is clean (B's output equals --local: nothing lost, doubled,
    reordered) and the audit finds no (SPI, sequence number) twice and no
    number going back.
--case decrypt (bench/results/ipsec_chaos_decrypt.json): the replay case
    (tests.ipsec_chaos.write_replay_case, a capture of its own per run): peer
    A's ESP with replayed copies and late originals; B's worker is killed. A
    run passes when the verdict is clean (every packet's port and reason as
    --local) and every original leaves once and every copy is dropped.

Each run is `snf chaos` in a subprocess with --kills kills at seeded shares of
the replay, --runs times.

Usage: python bench/ipsec_chaos.py [--case encrypt|decrypt] [--brokers B] [--runs 6]
                                   [--kills 2] [--seed 1] [--packets 24000] [--pps 2000]
                                   [--out bench/results/ipsec_chaos[_decrypt].json]
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
# --case (the function killed) -> the pipeline name its topics carry
NAMES = {"encrypt": ipsec_chaos.NAME, "decrypt": ipsec_chaos.REPLAY_NAME}


def one_run(n: int, args: argparse.Namespace, brokers: str, rng: random.Random) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"ipsec-chaos-{args.case}-{n}-"))
    if args.case == "encrypt":
        pipeline, capture, packets = ipsec_chaos.write_case(workdir, args.packets)
        case = None
    else:
        case = ipsec_chaos.write_replay_case(workdir, args.packets, rng.randrange(1 << 30))
        pipeline, capture, packets = case.pipeline, case.capture, case.frames
    shares = sorted(rng.uniform(0.1, 0.9) for _ in range(args.kills))
    argv = [SNF, "chaos", str(pipeline), str(capture), "-p", str(args.pps)]
    for share in shares:
        argv += ["--kill", args.case, "--at", f"{share:.0%}"]
    argv += ["--seed", str(rng.randrange(1 << 30)), "--keep", "--rundir", str(workdir / "run")]
    argv += ["--brokers", brokers, "--json", str(workdir / "chaos.json"), "--no-progress"]
    name, before, started = NAMES[args.case], set(topic_partitions(brokers)), time.monotonic()
    try:
        code = subprocess.run(argv, capture_output=True, text=True, check=False).returncode
        report = json.loads((workdir / "chaos.json").read_text())
        new = sorted(set(topic_partitions(brokers)) - before)
        wire = [t for t in new if name in t and t.endswith(".decrypt.in")]
        if case is not None:
            audit = {}
        else:
            audit = audit_topic(brokers, wire[0]).to_json() if len(wire) == 1 else {"error": new}
    finally:
        delete_topics(brokers, [t for t in set(topic_partitions(brokers)) - before if name in t])
    fired = [f for f in report["faults"] if f["observed"] == "killed"]
    run = {
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
    }
    clean = code == 0 and report["verdict"]["clean"]
    if case is None:
        run |= {"audit": audit, "passed": clean and audit.get("clean") is True}
    else:
        counts = replay_counts(case, report["verdict"]["terminals"])
        run |= {"replay": counts, "passed": clean and counts["exact"]}
    return run | {"seconds": round(time.monotonic() - started, 1)}


def replay_counts(case: ipsec_chaos.ReplayCase, terminals: dict[str, Any]) -> dict[str, Any]:
    """What the capture holds beside what left B: every original once, every copy dropped."""
    passed, dropped = terminals["egress"]["output"], terminals["decrypt.drop"]["output"]
    out = {"originals": case.originals, "late": case.late, "replays": case.replays}
    out |= {"out": passed, "dropped": dropped}
    return out | {"exact": passed == case.originals and dropped == case.replays}


def summary(case: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {"runs": len(runs), "passed": sum(r["passed"] for r in runs)}
    out["kills_fired"] = sum(r["kills_fired"] for r in runs)
    if case == "decrypt":
        for key in ("originals", "late", "replays", "out", "dropped"):
            out[key] = sum(r["replay"][key] for r in runs)
        return out
    audits = [r["audit"] for r in runs]
    out["repeats"] = sum(a.get("repeats", 0) for a in audits)
    out["steps_back"] = sum(a.get("steps_back", 0) for a in audits)
    out["esp_packets_audited"] = sum(a.get("packets", 0) for a in audits)
    out["largest_gap"] = max((a.get("largest_gap", 0) for a in audits), default=0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", choices=sorted(NAMES), default="encrypt")
    ap.add_argument("--brokers", default=None)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument(
        "--kills", type=int, default=2, help="kills per run (a run fails at 3 restarts)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--packets", type=int, default=24000)
    ap.add_argument("--pps", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    suffix = "" if args.case == "encrypt" else "_decrypt"
    out = args.out or ROOT / "bench" / "results" / f"ipsec_chaos{suffix}.json"
    brokers = cluster.resolve_brokers(args.brokers) or cluster.up().bootstrap
    rng, runs, started = random.Random(args.seed), [], time.monotonic()
    for n in range(args.runs):
        runs.append(one_run(n, args, brokers, rng))
        r = runs[-1]
        detail = r["audit"] if args.case == "encrypt" else r["replay"]
        print(
            f"run {n}: {r['kills_fired']}/{r['kills_asked']} kills at {r['kills_at_packet']}, "
            f"verdict clean {r['verdict_clean']}, {detail}",
            flush=True,
        )
    what = "sequence numbers audited" if args.case == "encrypt" else "replays counted"
    result = {
        "benchmark": f"ipsec chaos: kill -9 of the {args.case}ing worker; {what}",
        "code": code_state(),
        "settings": {
            "case": args.case,
            "packets_per_run": args.packets,
            "pps": args.pps,
            "seq_block": ipsec_chaos.BLOCK,
            "kills_per_run": args.kills,
            "seed": args.seed,
        },
        "runs": runs,
        "summary": summary(args.case, runs),
        "seconds": round(time.monotonic() - started),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
